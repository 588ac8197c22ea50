/// What can be wrong with a firmware image or with the parameters of a launch digest.
///
/// Every case is one lowercase line that names the file (as the user gave it) and the exact problem.
public enum FirmwareError: SEVImageError, Equatable {
    case tooSmall(path: String, size: Int)
    case tooLarge(path: String, size: Int)
    case notWholePages(path: String, size: Int)
    case noFooter(path: String)
    case tableLengthOutOfRange(path: String, length: Int, room: Int)
    case entryLengthOutOfRange(path: String, guid: GUID, offset: Int, length: Int, room: Int)
    case strayTableBytes(path: String, count: Int)
    case entryTooShort(path: String, entry: String, length: Int, needed: Int)
    case duplicateEntry(path: String, entry: String)
    case metadataOffsetOutside(path: String, offset: UInt32, size: Int)
    case metadataSignature(path: String, found: [UInt8])
    case metadataVersion(path: String, version: UInt32)
    case metadataLengthOutOfRange(path: String, length: UInt32, sections: UInt32, room: Int)
    case unknownSectionType(path: String, index: Int, type: UInt32)
    case sectionNotPageAligned(path: String, index: Int, gpa: UInt32, size: UInt32)
    case sectionOutside4GiB(path: String, index: Int, gpa: UInt32, size: UInt32)
    case noResetBlock(path: String, mode: String)
    case noSEVMetadata(path: String)
    case unknownVCPUType(String)
    case vcpuCount(Int)
    case noSecretArea(path: String)
    case secretTableTooLarge(size: Int, capacity: Int)
    case badNonce(String)
    case badTIK(path: String, size: Int)
    case optionNotForMode(option: String, mode: String, why: String)
    case policy(String)
    case unknownMode(String)
    case missingVCPUType(mode: String)

    public var exitStatus: ExitStatus { .invalidInput }

    public var description: String {
        switch self {
        case .tooSmall(let path, let size):
            return "\(path) is \(size) bytes, too small to hold the OVMF table footer (50 bytes at the end of the flash image)"
        case .tooLarge(let path, let size):
            return "\(path) is \(size) bytes; an OVMF flash image is at most \(OVMFImage.maximumSize / (1 << 20)) MiB"
        case .notWholePages(let path, let size):
            return "\(path) is \(size) bytes, not a whole number of 4096-byte pages: the flash image looks truncated"
        case .noFooter(let path):
            return "\(path) has no OVMF GUIDed table (footer GUID \(KnownGUID.ovmfTableFooter) not found 48 bytes before the end): not an OVMF build with SEV support"
        case .tableLengthOutOfRange(let path, let length, let room):
            return "\(path): the OVMF table claims \(length) bytes, outside 18...\(room)"
        case .entryLengthOutOfRange(let path, let guid, let offset, let length, let room):
            return "\(path): OVMF table entry \(guid) ending at offset \(offset) claims \(length) bytes, outside 18...\(room)"
        case .strayTableBytes(let path, let count):
            return "\(path): the OVMF table starts with \(count) bytes that are too short for an entry"
        case .entryTooShort(let path, let entry, let length, let needed):
            return "\(path): the \(entry) entry carries \(length) bytes of data, it needs \(needed)"
        case .duplicateEntry(let path, let entry):
            return "\(path): the OVMF table holds the \(entry) entry twice"
        case .metadataOffsetOutside(let path, let offset, let size):
            return "\(path): the SEV metadata offset \(offset) (from the end) points outside the \(size)-byte file"
        case .metadataSignature(let path, let found):
            return "\(path): the SEV metadata header starts with \(hex(found)), not \"ASEV\""
        case .metadataVersion(let path, let version):
            return "\(path): SEV metadata version \(version) is not supported (only 1)"
        case .metadataLengthOutOfRange(let path, let length, let sections, let room):
            return "\(path): the SEV metadata is \(length) bytes for \(sections) sections, it needs 16 + 12 per section and at most \(room) bytes remain in the file"
        case .unknownSectionType(let path, let index, let type):
            return "\(path): SEV metadata section \(index) has unknown type \(type) (known: 1 snp-sec-mem, 2 snp-secrets, 3 cpuid, 4 svsm-caa, 16 snp-kernel-hashes)"
        case .sectionNotPageAligned(let path, let index, let gpa, let size):
            return "\(path): SEV metadata section \(index) (gpa \(hex32(gpa)), size \(hex32(size))) is not page aligned"
        case .sectionOutside4GiB(let path, let index, let gpa, let size):
            return "\(path): SEV metadata section \(index) (gpa \(hex32(gpa)), size \(hex32(size))) runs past 4 GiB"
        case .noResetBlock(let path, let mode):
            return "\(path) has no usable SEV-ES reset block (GUID \(KnownGUID.sevESResetBlock)), which \(mode) needs for the AP reset address"
        case .noSEVMetadata(let path):
            return "\(path) has no SEV metadata (GUID \(KnownGUID.sevMetadata)): it cannot launch under SEV-SNP"
        case .unknownVCPUType(let name):
            return "unknown vCPU type \(name); known types: \(VCPUType.all.map(\.name).joined(separator: ", "))"
        case .vcpuCount(let count):
            return "vCPU count \(count) is outside 1...\(SEVLaunchDigest.maximumVCPUs)"
        case .noSecretArea(let path):
            return "\(path) has no SEV secret area (not an OVMF AmdSev build), so the disk passphrase cannot be injected at launch; pass --standard-boot-only to link it for the password boot path only"
        case .secretTableTooLarge(let size, let capacity):
            return "the secret table is \(size) bytes, larger than the \(capacity) bytes the firmware's secret area holds"
        case .badNonce(let text):
            return "nonce \(text) is neither 16 bytes of base64 nor 32 hex digits"
        case .badTIK(let path, let size):
            return "\(path) is \(size) bytes; a TIK file is 16 bytes (or 32: TEK then TIK)"
        case .optionNotForMode(let option, let mode, let why):
            return "\(option) does not apply to --mode \(mode): \(why)"
        case .policy(let message):
            return message
        case .unknownMode(let mode):
            return "unknown launch mode \(mode); known modes: sev, sev-es, sev-snp"
        case .missingVCPUType(let mode):
            return "--mode \(mode) needs --vcpu-type (the QEMU -cpu model; its CPUID signature is part of every VMSA page)"
        }
    }
}

/// `0x` and eight lowercase hex digits.
func hex32(_ value: UInt32) -> String {
    let digits = String(value, radix: 16)
    return "0x" + String(repeating: "0", count: max(0, 8 - digits.count)) + digits
}
