/// A QEMU vCPU model (`-cpu NAME`) and the CPUID signature (family, model, stepping) it reports in RDX at reset.
public struct VCPUType: Sendable, Equatable {
    public let name: String
    public let family: UInt32
    public let model: UInt32
    public let stepping: UInt32

    /// The CPUID Fn0000_0001_EAX encoding (AMD CPUID Specification #25481): extended family above 0xF.
    public var signature: UInt32 {
        let baseFamily = min(family, 0xF)
        let extendedFamily = family > 0xF ? (family - 0xF) & 0xFF : 0
        return extendedFamily << 20 | ((model >> 4) & 0xF) << 16 | baseFamily << 8 | (model & 0xF) << 4 | (stepping & 0xF)
    }

    /// The AMD EPYC models of QEMU's `builtin_x86_defs` and their versions (a version changes
    /// features, never the family, model or stepping).
    public static let all: [VCPUType] = {
        func group(_ base: String, versions: [String], _ family: UInt32, _ model: UInt32, _ stepping: UInt32) -> [VCPUType] {
            ([base] + versions.map { base + "-" + $0 }).map { VCPUType(name: $0, family: family, model: model, stepping: stepping) }
        }
        return group("EPYC", versions: ["v1", "v2", "v3", "v4", "IBPB"], 23, 1, 2)
            + group("EPYC-Rome", versions: ["v1", "v2", "v3"], 23, 49, 0)
            + group("EPYC-Milan", versions: ["v1", "v2"], 25, 1, 1)
            + group("EPYC-Genoa", versions: ["v1"], 25, 17, 0)
            + group("EPYC-Turin", versions: [], 26, 0, 0)
    }()

    /// Looks a name up (case-insensitively, as people type it); the error lists the known names.
    public static func named(_ name: String) throws -> VCPUType {
        if let exact = all.first(where: { $0.name == name }) { return exact }
        if let loose = all.first(where: { $0.name.lowercased() == name.lowercased() }) { return loose }
        throw FirmwareError.unknownVCPUType(name)
    }
}

/// The initial VMSA (VM save area) page QEMU and KVM give a vCPU of an SEV-ES or SEV-SNP guest.
///
/// The launch measurement covers these pages, so every byte counts. Layout: AMD64 APM volume 2,
/// table B-4 ("VMSA layout, state save area for SEV-ES"); the values are the x86 reset state that
/// QEMU's `x86_cpu_reset` and KVM's SEV-ES setup leave in it:
/// ```
///  0x000 es  0x010 cs  0x020 ss  0x030 ds  0x040 fs  0x050 gs       segment = u16 selector | u16 attrib
///  0x060 gdtr 0x070 ldtr 0x080 idtr 0x090 tr                                  | u32 limit | u64 base
///  0x0d0 efer  0x148 cr4  0x158 cr0  0x160 dr7  0x168 dr6  0x170 rflags  0x178 rip
///  0x268 g_pat  0x310 rdx (CPUID signature)  0x3b0 sev_features  0x3e8 xcr0
///  0x408 mxcsr (u32)  0x410 x87 fcw (u16)                          everything else zero, 4096 bytes
/// ```
public enum VMSA {
    /// Where the bootstrap processor starts: the reset vector 16 bytes below 4 GiB.
    public static let bspResetAddress: UInt32 = 0xFFFF_FFF0

    /// The page for a vCPU that starts at `resetAddress` (CS base is its upper 16 bits, RIP the lower).
    public static func page(resetAddress: UInt32, sevFeatures: UInt64, cpuSignature: UInt32) -> [UInt8] {
        var page = [UInt8](repeating: 0, count: 4096)
        func put(_ value: UInt64, at offset: Int, width: Int) {
            for i in 0..<width { page[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
        }
        func segment(_ offset: Int, selector: UInt16, attrib: UInt16, limit: UInt32, base: UInt64) {
            put(UInt64(selector), at: offset, width: 2)
            put(UInt64(attrib), at: offset + 2, width: 2)
            put(UInt64(limit), at: offset + 4, width: 4)
            put(base, at: offset + 8, width: 8)
        }
        let data: UInt16 = 0x93  // present, writable, accessed data segment
        segment(0x000, selector: 0, attrib: data, limit: 0xFFFF, base: 0)                                   // es
        segment(0x010, selector: 0xF000, attrib: 0x9B, limit: 0xFFFF, base: UInt64(resetAddress & 0xFFFF_0000)) // cs
        segment(0x020, selector: 0, attrib: data, limit: 0xFFFF, base: 0)                                   // ss
        segment(0x030, selector: 0, attrib: data, limit: 0xFFFF, base: 0)                                   // ds
        segment(0x040, selector: 0, attrib: data, limit: 0xFFFF, base: 0)                                   // fs
        segment(0x050, selector: 0, attrib: data, limit: 0xFFFF, base: 0)                                   // gs
        segment(0x060, selector: 0, attrib: 0, limit: 0xFFFF, base: 0)                                      // gdtr
        segment(0x070, selector: 0, attrib: 0x82, limit: 0xFFFF, base: 0)                                   // ldtr
        segment(0x080, selector: 0, attrib: 0, limit: 0xFFFF, base: 0)                                      // idtr
        segment(0x090, selector: 0, attrib: 0x8B, limit: 0xFFFF, base: 0)                                   // tr
        put(0x1000, at: 0x0D0, width: 8)             // efer: SVME, which KVM sets
        put(0x40, at: 0x148, width: 8)               // cr4: MCE, which KVM sets
        put(0x10, at: 0x158, width: 8)               // cr0: ET
        put(0x400, at: 0x160, width: 8)              // dr7
        put(0xFFFF_0FF0, at: 0x168, width: 8)        // dr6
        put(0x2, at: 0x170, width: 8)                // rflags: reserved bit 1
        put(UInt64(resetAddress & 0xFFFF), at: 0x178, width: 8) // rip
        put(0x0007_0406_0007_0406, at: 0x268, width: 8) // g_pat: the power-on PAT
        put(UInt64(cpuSignature), at: 0x310, width: 8)  // rdx
        put(sevFeatures, at: 0x3B0, width: 8)
        put(0x1, at: 0x3E8, width: 8)                // xcr0: x87
        put(0x1F80, at: 0x408, width: 4)             // mxcsr
        put(0x37F, at: 0x410, width: 2)              // x87 control word
        return page
    }
}
