/// How QEMU launches the guest: plain SEV, SEV-ES (encrypted register state) or SEV-SNP.
public enum LaunchMode: String, Sendable, CaseIterable, Codable {
    case sev
    case sevES = "sev-es"
    case sevSNP = "sev-snp"

    public init(parsing text: String) throws {
        guard let mode = LaunchMode(rawValue: text.lowercased()) else { throw FirmwareError.unknownMode(text) }
        self = mode
    }

    /// The SEV_FEATURES a VMSA carries unless the user says otherwise: none for SEV-ES (QEMU's
    /// KVM_SEV_INIT2 default), SNPActive (bit 0) for SEV-SNP. The same defaults as `sev-snp-measure`.
    public var defaultGuestFeatures: UInt64 { self == .sevSNP ? 0x1 : 0 }
}

/// The launch digest the AMD secure processor computes while QEMU loads the firmware, the value
/// a verifier compares a launch measurement (SEV, SEV-ES) or an attestation report (SEV-SNP) with.
///
/// - SEV: SHA-256 of the whole flash image (no measured direct kernel boot in this design).
/// - SEV-ES: SHA-256 of the flash image followed by one VMSA page per vCPU: the BSP starts at the
///   reset vector, every AP at the address of the SEV-ES reset block.
/// - SEV-SNP: SHA-384 chained over one PAGE_INFO per page (SNP firmware ABI, LAUNCH_UPDATE):
///   the firmware pages, the metadata sections (zero, secrets and CPUID pages), then the VMSAs.
public enum SEVLaunchDigest {
    public static let maximumVCPUs = 4096

    public static func compute(_ image: OVMFImage, mode: LaunchMode, vcpus: Int = 1, vcpuType: VCPUType? = nil,
                               guestFeatures: UInt64? = nil) throws -> [UInt8] {
        switch mode {
        case .sev:
            return image.sha256
        case .sevES:
            let pages = try vmsaPages(image, mode: mode, vcpus: vcpus, vcpuType: vcpuType, guestFeatures: guestFeatures)
            return Crypto.sha256(pages.reduce(into: image.bytes) { $0 += $1 })
        case .sevSNP:
            guard let metadata = image.table.metadata else { throw FirmwareError.noSEVMetadata(path: image.path) }
            let pages = try vmsaPages(image, mode: mode, vcpus: vcpus, vcpuType: vcpuType, guestFeatures: guestFeatures)
            var context = SNPLaunchContext()
            context.addNormalPages(gpa: image.gpa, image.bytes)
            for section in metadata.sections {
                switch section.type {
                case .snpSecMem, .svsmCAA, .snpKernelHashes:
                    // Without a kernel to hash, QEMU fills the kernel hash pages with zeros as well.
                    context.addZeroPages(gpa: UInt64(section.gpa), size: Int(section.size))
                case .snpSecrets:
                    context.add(.secrets, gpa: UInt64(section.gpa), contentsDigest: SNPLaunchContext.zeros)
                case .cpuid:
                    context.add(.cpuid, gpa: UInt64(section.gpa), contentsDigest: SNPLaunchContext.zeros)
                }
            }
            for page in pages { context.add(.vmsa, gpa: SNPLaunchContext.vmsaGPA, contentsDigest: Crypto.sha384(page)) }
            return context.digest
        }
    }

    /// One VMSA page per vCPU, the BSP first.
    static func vmsaPages(_ image: OVMFImage, mode: LaunchMode, vcpus: Int, vcpuType: VCPUType?, guestFeatures: UInt64?) throws -> [[UInt8]] {
        guard (1...maximumVCPUs).contains(vcpus) else { throw FirmwareError.vcpuCount(vcpus) }
        guard let vcpuType else { throw FirmwareError.missingVCPUType(mode: mode.rawValue) }
        guard let apAddress = image.table.resetAddress, apAddress != 0 else {
            throw FirmwareError.noResetBlock(path: image.path, mode: mode.rawValue)
        }
        let features = guestFeatures ?? mode.defaultGuestFeatures
        let bsp = VMSA.page(resetAddress: VMSA.bspResetAddress, sevFeatures: features, cpuSignature: vcpuType.signature)
        let ap = VMSA.page(resetAddress: apAddress, sevFeatures: features, cpuSignature: vcpuType.signature)
        return [bsp] + Array(repeating: ap, count: vcpus - 1)
    }
}

/// The SEV-SNP launch digest as the secure processor extends it (SNP firmware ABI, PAGE_INFO).
///
/// ```
/// PAGE_INFO (0x70 bytes): digest so far (48) | contents digest (48) | u16 length 0x70 | u8 page type
///                         | u8 is_imi | u8 vmpl3, vmpl2, vmpl1 perms | u8 reserved | u64 gpa
/// digest' = SHA-384(PAGE_INFO)
/// ```
struct SNPLaunchContext {
    enum PageType: UInt8 {
        case normal = 1, vmsa = 2, zero = 3, unmeasured = 4, secrets = 5, cpuid = 6
    }

    static let zeros = [UInt8](repeating: 0, count: 48)
    /// A VMSA page is recorded at GPA -1, page aligned, bits above 51 clear.
    static let vmsaGPA: UInt64 = 0xFFFF_FFFF_F000

    private(set) var digest = zeros

    mutating func add(_ type: PageType, gpa: UInt64, contentsDigest: [UInt8]) {
        var info = digest
        info.reserveCapacity(0x70)
        info += contentsDigest
        info += [0x70, 0x00, type.rawValue, 0, 0, 0, 0, 0]
        for i in 0..<8 { info.append(UInt8(truncatingIfNeeded: gpa >> (8 * UInt64(i)))) }
        digest = Crypto.sha384(info)
    }

    mutating func addNormalPages(gpa: UInt64, _ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            add(.normal, gpa: gpa + UInt64(offset), contentsDigest: Crypto.sha384(bytes[offset..<min(offset + 4096, bytes.count)]))
            offset += 4096
        }
    }

    mutating func addZeroPages(gpa: UInt64, size: Int) {
        var offset = 0
        while offset < size {
            add(.zero, gpa: gpa + UInt64(offset), contentsDigest: SNPLaunchContext.zeros)
            offset += 4096
        }
    }
}
