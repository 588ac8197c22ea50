/// The GUIDed table OVMF keeps at the end of its flash image, and the SEV metadata it points to.
///
/// ```
///  flash image (mapped so that it ends at 4 GiB)
///  ... | entry n | ... | entry 1 | footer entry | 32 bytes (reset vector) |
///                                 ^ size-50: u16 table length (all entries + this 18-byte footer)
///                                   size-48: footer GUID 96b582de-1fb2-45f7-baea-a366c55a082d
///  entry = data | u16 length (data + 18) | GUID      (walked backwards from the footer)
///
///  SEV metadata (entry dc886566-...: u32 offset from the end of the file to this header)
///  "ASEV" | u32 length | u32 version (1) | u32 section count | sections: u32 gpa | u32 size | u32 type
/// ```
/// All integers are little-endian, GUIDs in EFI byte order. The parser reads every field by offset and
/// bounds-checks it first: any input gives either a table or a `FirmwareError`, never a trap.
public struct OVMFTable: Sendable, Equatable {
    /// One entry as found, nearest the footer first.
    public struct Entry: Sendable, Equatable {
        public var guid: GUID
        /// Offset of the entry's data in the file.
        public var offset: Int
        public var data: [UInt8]
        /// A short name for the known GUIDs, nil for others.
        public var name: String? { OVMFTable.names[guid] }
    }

    /// A (guest physical address, size) pair: the secret area and the kernel hash table.
    public struct Area: Sendable, Equatable, Codable {
        public var base: UInt32
        public var size: UInt32
        public init(base: UInt32, size: UInt32) { self.base = base; self.size = size }
        /// Both non-zero: Debian's non-AmdSev builds carry the entries with zeros.
        public var isUsable: Bool { base != 0 && size != 0 }
    }

    /// The table's total length, footer included.
    public var length: Int
    public var entries: [Entry]
    /// SEV secret block (`4c2eb361-...`).
    public var secretArea: Area?
    /// SEV hash table for measured direct kernel boot (`7255371f-...`).
    public var hashTable: Area?
    /// SEV-ES reset block (`00f771de-...`): where the APs start.
    public var resetAddress: UInt32?
    /// The SEV metadata (`dc886566-...`) with its offset from the end of the file.
    public var metadataOffset: UInt32?
    public var metadata: SEVMetadata?
    /// TDX metadata (`e47a6535-...`): present or not, and its offset from the end.
    public var tdxMetadataOffset: UInt32?

    static let names: [GUID: String] = [
        KnownGUID.sevSecretBlock: "sev-secret-block",
        KnownGUID.sevHashTable: "sev-hash-table",
        KnownGUID.sevESResetBlock: "sev-es-reset-block",
        KnownGUID.sevMetadata: "sev-metadata",
        KnownGUID.tdxMetadata: "tdx-metadata",
    ]

    static let footerLength = 18
    /// The footer entry ends this many bytes before the end of the image.
    static let footerGap = 32

    /// Parses the table at the end of `bytes`. `path` only names the file in errors.
    public static func parse(_ bytes: [UInt8], path: String) throws -> OVMFTable {
        let size = bytes.count
        guard size >= footerGap + footerLength else { throw FirmwareError.tooSmall(path: path, size: size) }
        let footerEnd = size - footerGap
        guard GUID(efiBytes: bytes[(footerEnd - 16)..<footerEnd]) == KnownGUID.ovmfTableFooter else {
            throw FirmwareError.noFooter(path: path)
        }
        let length = Int(bytes.le16(at: footerEnd - footerLength))
        guard length >= footerLength, length <= footerEnd else {
            throw FirmwareError.tableLengthOutOfRange(path: path, length: length, room: footerEnd)
        }
        let start = footerEnd - length
        var table = OVMFTable(length: length, entries: [])
        var end = footerEnd - footerLength
        while end - start >= footerLength {
            let guid = GUID(efiBytes: bytes[(end - 16)..<end])
            let entryLength = Int(bytes.le16(at: end - footerLength))
            guard entryLength >= footerLength, entryLength <= end - start else {
                throw FirmwareError.entryLengthOutOfRange(path: path, guid: guid, offset: end, length: entryLength, room: end - start)
            }
            let dataStart = end - entryLength
            table.entries.append(Entry(guid: guid, offset: dataStart, data: Array(bytes[dataStart..<(end - footerLength)])))
            end = dataStart
        }
        guard end == start else { throw FirmwareError.strayTableBytes(path: path, count: end - start) }
        try table.decodeKnownEntries(path: path)
        if let offset = table.metadataOffset {
            table.metadata = try SEVMetadata.parse(bytes, offsetFromEnd: offset, path: path)
        }
        return table
    }

    private mutating func decodeKnownEntries(path: String) throws {
        var seen = Set<GUID>()
        for entry in entries {
            guard let name = entry.name else { continue }
            guard seen.insert(entry.guid).inserted else { throw FirmwareError.duplicateEntry(path: path, entry: name) }
            let data = entry.data
            func need(_ count: Int) throws {
                guard data.count >= count else {
                    throw FirmwareError.entryTooShort(path: path, entry: name, length: data.count, needed: count)
                }
            }
            switch entry.guid {
            case KnownGUID.sevSecretBlock:
                try need(8)
                secretArea = Area(base: data.le32(at: 0), size: data.le32(at: 4))
            case KnownGUID.sevHashTable:
                try need(8)
                hashTable = Area(base: data.le32(at: 0), size: data.le32(at: 4))
            case KnownGUID.sevESResetBlock:
                try need(4)
                resetAddress = data.le32(at: 0)
            case KnownGUID.sevMetadata:
                try need(4)
                metadataOffset = data.le32(at: 0)
            case KnownGUID.tdxMetadata:
                try need(4)
                tdxMetadataOffset = data.le32(at: 0)
            default:
                break
            }
        }
    }
}

/// OVMF's SEV metadata: the memory ranges that QEMU pre-validates or fills for an SEV-SNP launch.
public struct SEVMetadata: Sendable, Equatable {
    /// What QEMU does with a section before launch (edk2 `OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm`).
    public enum SectionType: UInt32, Sendable, Codable, CaseIterable {
        /// Memory the firmware expects pre-validated (measured as zero pages).
        case snpSecMem = 1
        /// The SNP secrets page.
        case snpSecrets = 2
        /// The CPUID page.
        case cpuid = 3
        /// The SVSM calling area (measured as zero pages).
        case svsmCAA = 4
        /// Hashes of kernel, initrd and command line for measured direct boot.
        case snpKernelHashes = 0x10

        public var name: String {
            switch self {
            case .snpSecMem: "snp-sec-mem"
            case .snpSecrets: "snp-secrets"
            case .cpuid: "cpuid"
            case .svsmCAA: "svsm-caa"
            case .snpKernelHashes: "snp-kernel-hashes"
            }
        }
    }

    /// One section: a page-aligned guest physical range and its type.
    public struct Section: Sendable, Equatable {
        public var gpa: UInt32
        public var size: UInt32
        public var type: SectionType
    }

    /// Offset of the "ASEV" header in the file.
    public var headerOffset: Int
    public var version: UInt32
    public var sections: [Section]

    static let headerLength = 16
    static let sectionLength = 12

    static func parse(_ bytes: [UInt8], offsetFromEnd: UInt32, path: String) throws -> SEVMetadata {
        let size = bytes.count
        let offset = Int(offsetFromEnd)
        guard offset >= headerLength, offset <= size else {
            throw FirmwareError.metadataOffsetOutside(path: path, offset: offsetFromEnd, size: size)
        }
        let start = size - offset
        let signature = Array(bytes[start..<(start + 4)])
        guard signature == Array("ASEV".utf8) else { throw FirmwareError.metadataSignature(path: path, found: signature) }
        let length = bytes.le32(at: start + 4)
        let version = bytes.le32(at: start + 8)
        let count = bytes.le32(at: start + 12)
        guard version == 1 else { throw FirmwareError.metadataVersion(path: path, version: version) }
        guard Int(length) <= offset, headerLength + sectionLength * Int(count) <= Int(length) else {
            throw FirmwareError.metadataLengthOutOfRange(path: path, length: length, sections: count, room: offset)
        }
        var sections: [Section] = []
        for index in 0..<Int(count) {
            let at = start + headerLength + sectionLength * index
            let gpa = bytes.le32(at: at), sectionSize = bytes.le32(at: at + 4), rawType = bytes.le32(at: at + 8)
            guard let type = SectionType(rawValue: rawType) else {
                throw FirmwareError.unknownSectionType(path: path, index: index, type: rawType)
            }
            guard gpa % 4096 == 0, sectionSize % 4096 == 0 else {
                throw FirmwareError.sectionNotPageAligned(path: path, index: index, gpa: gpa, size: sectionSize)
            }
            guard UInt64(gpa) + UInt64(sectionSize) <= 1 << 32 else {
                throw FirmwareError.sectionOutside4GiB(path: path, index: index, gpa: gpa, size: sectionSize)
            }
            sections.append(Section(gpa: gpa, size: sectionSize, type: type))
        }
        return SEVMetadata(headerOffset: start, version: version, sections: sections)
    }
}
