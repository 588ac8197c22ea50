import Foundation
import Testing
@testable import SEVImageKit

/// A flash image built byte by byte for tests, laid out as OVMF's AmdSev build lays out its end:
/// entries `data | u16 length | GUID`, the 18-byte footer ending 32 bytes before the end, and an
/// "ASEV" metadata block at `metadataOffset` bytes before the end.
struct SyntheticOVMF {
    static let amdSevSections: [(gpa: UInt32, size: UInt32, type: UInt32)] = [
        (0x0080_0000, 0x9000, 1), (0x0080_A000, 0x3000, 1), (0x0080_D000, 0x1000, 2),
        (0x0080_E000, 0x1000, 3), (0x0080_F000, 0x1000, 0x10), (0x0081_0000, 0x1000, 4), (0x0081_1000, 0xF000, 1),
    ]

    var size = 256 * 1024
    var secretBlock: (base: UInt32, size: UInt32)? = (0x0080_B000, 0xC00)
    var hashTable: (base: UInt32, size: UInt32)? = (0x0080_CC00, 0x400)
    var resetAddress: UInt32? = 0x0080_B004
    var metadataOffset: UInt32? = 0x1000
    var sections = SyntheticOVMF.amdSevSections
    var tdx = true
    var extraEntry: [UInt8]? = [0xAA, 0xBB, 0xCC]
    var seed: UInt64 = 1

    static let unknownGUID = GUID("12345678-9abc-4def-8123-456789abcdef")!

    /// Entries in file order (the parser meets them last to first).
    var entries: [(GUID, [UInt8])] {
        var list: [(GUID, [UInt8])] = []
        if let extraEntry { list.append((SyntheticOVMF.unknownGUID, extraEntry)) }
        if tdx { list.append((KnownGUID.tdxMetadata, ovmfLE32(0x840))) }
        if let metadataOffset { list.append((KnownGUID.sevMetadata, ovmfLE32(metadataOffset))) }
        if let hashTable { list.append((KnownGUID.sevHashTable, ovmfLE32(hashTable.base) + ovmfLE32(hashTable.size))) }
        if let secretBlock { list.append((KnownGUID.sevSecretBlock, ovmfLE32(secretBlock.base) + ovmfLE32(secretBlock.size))) }
        if let resetAddress { list.append((KnownGUID.sevESResetBlock, ovmfLE32(resetAddress))) }
        return list
    }

    func build() -> [UInt8] {
        var rng = FirmwareTestRNG(seed: seed)
        var bytes = (0..<size).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        var table: [UInt8] = []
        for (guid, data) in entries { table += data + ovmfLE16(UInt16(data.count + 18)) + guid.efiBytes }
        table += ovmfLE16(UInt16(table.count + 18)) + KnownGUID.ovmfTableFooter.efiBytes
        bytes.replaceSubrange((size - 32 - table.count)..<(size - 32), with: table)
        if let metadataOffset {
            var metadata = Array("ASEV".utf8) + ovmfLE32(UInt32(16 + 12 * sections.count)) + ovmfLE32(1) + ovmfLE32(UInt32(sections.count))
            for section in sections { metadata += ovmfLE32(section.gpa) + ovmfLE32(section.size) + ovmfLE32(section.type) }
            let start = size - Int(metadataOffset)
            bytes.replaceSubrange(start..<(start + metadata.count), with: metadata)
        }
        return bytes
    }

    func write(to path: String) throws {
        try Data(build()).write(to: URL(fileURLWithPath: path))
    }
}

func ovmfLE16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8)] }
func ovmfLE32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }

/// A small, seedable generator so that a failing fuzz input can be reproduced.
struct FirmwareTestRNG: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite struct FirmwareTableTests {
    @Test func parsesEveryEntryOfASyntheticAmdSevImage() throws {
        let image = try OVMFImage(bytes: SyntheticOVMF().build(), path: "synthetic.fd")
        let table = image.table
        #expect(table.entries.map(\.name) == ["sev-es-reset-block", "sev-secret-block", "sev-hash-table", "sev-metadata", "tdx-metadata", nil])
        #expect(table.entries.last?.guid == SyntheticOVMF.unknownGUID)
        #expect(table.entries.last?.data == [0xAA, 0xBB, 0xCC])
        #expect(table.secretArea == OVMFTable.Area(base: 0x80B000, size: 0xC00))
        #expect(table.hashTable == OVMFTable.Area(base: 0x80CC00, size: 0x400))
        #expect(table.resetAddress == 0x80B004)
        #expect(table.tdxMetadataOffset == 0x840)
        let metadata = try #require(table.metadata)
        #expect(metadata.headerOffset == 256 * 1024 - 0x1000)
        #expect(metadata.sections.map { [$0.gpa, $0.size, $0.type.rawValue] } == SyntheticOVMF.amdSevSections.map { [$0.gpa, $0.size, $0.type] })
        #expect(image.gpa == 0x1_0000_0000 - 256 * 1024)
        let verdict = image.verdict
        #expect(verdict.encryptedBoot && verdict.sevES && verdict.sevSNP && verdict.measuredDirectBoot)
        #expect(verdict.secretTableCapacity == 3072)
        #expect(throws: Never.self) { try image.checkSecretTableFits(size: 3072) }
        #expect(throws: FirmwareError.secretTableTooLarge(size: 3088, capacity: 3072)) { try image.checkSecretTableFits(size: 3088) }
    }

    @Test func debianOVMFHasAZeroSecretBlock() throws {
        let path = "/usr/share/ovmf/OVMF.fd"
        guard FileManager.default.fileExists(atPath: path) else { return }
        let image = try OVMFImage.load(path: path)
        #expect(image.table.secretArea == OVMFTable.Area(base: 0, size: 0))
        #expect(image.secretArea == nil)
        #expect(!image.verdict.encryptedBoot)
        #expect(image.verdict.secretTableCapacity == 0)
        #expect(image.table.resetAddress == 0x0080_B004)
        #expect(image.table.metadata?.sections.count == 5)
        #expect(throws: FirmwareError.noSecretArea(path: path)) { try image.checkSecretTableFits(size: 64) }
    }

    @Test func secretAreaCapacityRoundsDownToTheTablePadding() throws {
        var synthetic = SyntheticOVMF()
        synthetic.secretBlock = (0x80B000, 1000)
        let image = try OVMFImage(bytes: synthetic.build(), path: "x")
        #expect(image.verdict.secretTableCapacity == 992)
    }

    struct BadCase: CustomTestStringConvertible, Sendable {
        let name: String
        let bytes: @Sendable () -> [UInt8]
        let expected: FirmwareError
        var testDescription: String { name }
    }

    static let badCases: [BadCase] = [
        BadCase(name: "empty", bytes: { [] }, expected: .tooSmall(path: "f", size: 0)),
        BadCase(name: "smaller than the footer", bytes: { [UInt8](repeating: 0, count: 49) }, expected: .tooSmall(path: "f", size: 49)),
        BadCase(name: "not whole pages", bytes: { Array(SyntheticOVMF().build().dropFirst(100)) }, expected: .notWholePages(path: "f", size: 256 * 1024 - 100)),
        BadCase(name: "no footer", bytes: { [UInt8](repeating: 0, count: 4096) }, expected: .noFooter(path: "f")),
        BadCase(name: "table length too small", bytes: { ovmfPatched(SyntheticOVMF().build(), at: 256 * 1024 - 50, ovmfLE16(17)) },
                expected: .tableLengthOutOfRange(path: "f", length: 17, room: 256 * 1024 - 32)),
        BadCase(name: "table length past the start", bytes: { ovmfPatched(SyntheticOVMF(size: 4096, metadataOffset: nil).build(), at: 4096 - 50, ovmfLE16(0xFFFF)) },
                expected: .tableLengthOutOfRange(path: "f", length: 0xFFFF, room: 4096 - 32)),
        BadCase(name: "entry length too small", bytes: { ovmfPatched(SyntheticOVMF().build(), at: 256 * 1024 - 50 - 18, ovmfLE16(3)) },
                expected: .entryLengthOutOfRange(path: "f", guid: KnownGUID.sevESResetBlock, offset: 256 * 1024 - 50, length: 3, room: SyntheticOVMF().entriesLength)),
        BadCase(name: "entry length past the table", bytes: { ovmfPatched(SyntheticOVMF().build(), at: 256 * 1024 - 50 - 18, ovmfLE16(500)) },
                expected: .entryLengthOutOfRange(path: "f", guid: KnownGUID.sevESResetBlock, offset: 256 * 1024 - 50, length: 500, room: SyntheticOVMF().entriesLength)),
        BadCase(name: "secret block too short", bytes: { SyntheticOVMF(secretBlock: nil, extraEntry: nil).withEntry(KnownGUID.sevSecretBlock, [1, 2, 3, 4]) },
                expected: .entryTooShort(path: "f", entry: "sev-secret-block", length: 4, needed: 8)),
        BadCase(name: "duplicate reset block", bytes: { SyntheticOVMF().withEntry(KnownGUID.sevESResetBlock, ovmfLE32(0x1000)) },
                expected: .duplicateEntry(path: "f", entry: "sev-es-reset-block")),
        BadCase(name: "metadata offset past the start", bytes: { SyntheticOVMF(size: 4096, metadataOffset: nil).withEntry(KnownGUID.sevMetadata, ovmfLE32(8192)) },
                expected: .metadataOffsetOutside(path: "f", offset: 8192, size: 4096)),
        BadCase(name: "metadata offset inside the last 16 bytes", bytes: { SyntheticOVMF(size: 4096, metadataOffset: nil).withEntry(KnownGUID.sevMetadata, ovmfLE32(8)) },
                expected: .metadataOffsetOutside(path: "f", offset: 8, size: 4096)),
        BadCase(name: "metadata signature", bytes: { ovmfPatched(SyntheticOVMF().build(), at: 256 * 1024 - 0x1000, Array("XSEV".utf8)) },
                expected: .metadataSignature(path: "f", found: Array("XSEV".utf8))),
        BadCase(name: "metadata version", bytes: { ovmfPatched(SyntheticOVMF().build(), at: 256 * 1024 - 0x1000 + 8, ovmfLE32(2)) },
                expected: .metadataVersion(path: "f", version: 2)),
        BadCase(name: "metadata section count", bytes: { ovmfPatched(SyntheticOVMF().build(), at: 256 * 1024 - 0x1000 + 12, ovmfLE32(0xFFFF_FFFF)) },
                expected: .metadataLengthOutOfRange(path: "f", length: 16 + 12 * 7, sections: 0xFFFF_FFFF, room: 0x1000)),
        BadCase(name: "metadata length past the end", bytes: { ovmfPatched(SyntheticOVMF().build(), at: 256 * 1024 - 0x1000 + 4, ovmfLE32(0x2000)) },
                expected: .metadataLengthOutOfRange(path: "f", length: 0x2000, sections: 7, room: 0x1000)),
        BadCase(name: "unknown section type", bytes: { ovmfPatched(SyntheticOVMF().build(), at: 256 * 1024 - 0x1000 + 16 + 12 * 2 + 8, ovmfLE32(7)) },
                expected: .unknownSectionType(path: "f", index: 2, type: 7)),
        BadCase(name: "unaligned section", bytes: { ovmfPatched(SyntheticOVMF().build(), at: 256 * 1024 - 0x1000 + 16 + 4, ovmfLE32(0x1234)) },
                expected: .sectionNotPageAligned(path: "f", index: 0, gpa: 0x80_0000, size: 0x1234)),
        BadCase(name: "section past 4 GiB", bytes: { ovmfPatched(SyntheticOVMF().build(), at: 256 * 1024 - 0x1000 + 16, ovmfLE32(0xFFFF_F000)) },
                expected: .sectionOutside4GiB(path: "f", index: 0, gpa: 0xFFFF_F000, size: 0x9000)),
    ]

    @Test(arguments: badCases)
    func rejectsBadInputWithASpecificError(_ bad: BadCase) {
        #expect(throws: bad.expected) { try OVMFImage(bytes: bad.bytes(), path: "f") }
        #expect(!bad.expected.description.contains("\n"))
    }

    @Test func launchModesNeedTheirTableEntries() throws {
        let noReset = try OVMFImage(bytes: SyntheticOVMF(resetAddress: nil).build(), path: "f")
        let epyc = try VCPUType.named("EPYC")
        #expect(throws: FirmwareError.noResetBlock(path: "f", mode: "sev-es")) { try SEVLaunchDigest.compute(noReset, mode: .sevES, vcpus: 2, vcpuType: epyc) }
        let noMetadata = try OVMFImage(bytes: SyntheticOVMF(metadataOffset: nil).build(), path: "f")
        #expect(throws: FirmwareError.noSEVMetadata(path: "f")) { try SEVLaunchDigest.compute(noMetadata, mode: .sevSNP, vcpus: 1, vcpuType: epyc) }
        #expect(throws: FirmwareError.vcpuCount(0)) { try SEVLaunchDigest.compute(noMetadata, mode: .sevES, vcpus: 0, vcpuType: epyc) }
        #expect(throws: FirmwareError.missingVCPUType(mode: "sev-es")) { try SEVLaunchDigest.compute(noMetadata, mode: .sevES, vcpus: 1, vcpuType: nil) }
    }

    @Test func vcpuTypesAndSignatures() throws {
        #expect(try VCPUType.named("EPYC").signature == 0x800F12)
        #expect(try VCPUType.named("EPYC-v4").signature == 0x800F12)
        #expect(try VCPUType.named("EPYC-Rome").signature == 0x830F10)
        #expect(try VCPUType.named("EPYC-Milan").signature == 0xA00F11)
        #expect(try VCPUType.named("epyc-genoa").signature == 0xA10F10)
        #expect(try VCPUType.named("epyc-genoa").name == "EPYC-Genoa")
        let error = FirmwareError.unknownVCPUType("Skylake")
        #expect(throws: error) { try VCPUType.named("Skylake") }
        #expect(error.description.contains("EPYC, EPYC-v1"))
        #expect(error.description.contains("EPYC-Genoa"))
    }

    @Test func policyChecks() throws {
        #expect(throws: Never.self) { try LaunchMeasurement.checkPolicy(0x1, mode: .sev) }
        #expect(throws: Never.self) { try LaunchMeasurement.checkPolicy(0x5, mode: .sevES) }
        #expect(throws: Never.self) { try LaunchMeasurement.checkPolicy(0x30000, mode: .sevSNP) }
        #expect(throws: FirmwareError.self) { try LaunchMeasurement.checkPolicy(0x5, mode: .sev) }
        #expect(throws: FirmwareError.self) { try LaunchMeasurement.checkPolicy(0x1, mode: .sevES) }
        #expect(throws: FirmwareError.self) { try LaunchMeasurement.checkPolicy(0x1_0000_0005, mode: .sevES) }
        #expect(throws: FirmwareError.self) { try LaunchMeasurement.checkPolicy(0x1, mode: .sevSNP) }
    }

    @Test func noncesInBase64AndHex() throws {
        let bytes: [UInt8] = Array(0..<16)
        #expect(try LaunchMeasurement.parseNonce(hex(bytes)) == bytes)
        #expect(try LaunchMeasurement.parseNonce(Data(bytes).base64EncodedString()) == bytes)
        #expect(throws: FirmwareError.badNonce("abc")) { try LaunchMeasurement.parseNonce("abc") }
        #expect(throws: FirmwareError.self) { try LaunchMeasurement.parseNonce(Data(bytes + [0]).base64EncodedString()) }
    }

    @Test func manifestLinkForAnAmdSevImage() throws {
        let scratch = try Scratch()
        let path = scratch.file("OVMF-amdsev.fd")
        try SyntheticOVMF().write(to: path)
        let link = try FirmwareLink.make(ovmfPath: path, modes: ["sev", "sev-es", "sev-snp"], vcpus: [1, 4], vcpuType: "EPYC-Milan", allowNoSecretArea: false)
        #expect(link.file == "OVMF-amdsev.fd")
        #expect(link.size == 256 * 1024)
        #expect(link.secretArea == FirmwareLink.SecretArea(gpa: 0x80B000, size: 0xC00))
        #expect(link.launchDigests.map(\.mode) == ["sev", "sev-es", "sev-es", "sev-snp", "sev-snp"])
        #expect(link.launchDigests.map(\.vcpus) == [nil, 1, 4, 1, 4])
        #expect(link.launchDigests.map(\.vcpuType) == [nil, "EPYC-Milan", "EPYC-Milan", "EPYC-Milan", "EPYC-Milan"])
        #expect(link.launchDigests[0].digest == hex(Crypto.sha256(SyntheticOVMF().build())))
        #expect(link.launchDigests[3].digest.count == 96)
    }

    @Test func manifestLinkRefusesAFirmwareWithoutSecretArea() throws {
        let scratch = try Scratch()
        let path = scratch.file("plain.fd")
        try SyntheticOVMF(secretBlock: (0, 0)).write(to: path)
        let error = FirmwareError.noSecretArea(path: path)
        #expect(throws: error) {
            try FirmwareLink.make(ovmfPath: path, modes: ["sev"], vcpus: [], vcpuType: "EPYC", allowNoSecretArea: false)
        }
        #expect(error.description.contains("--standard-boot-only"))
        let link = try FirmwareLink.make(ovmfPath: path, modes: ["sev"], vcpus: [], vcpuType: "EPYC", allowNoSecretArea: true)
        #expect(link.secretArea == nil)
        #expect(link.launchDigests.count == 1)
        #expect(throws: FirmwareError.unknownVCPUType("nope")) {
            try FirmwareLink.make(ovmfPath: path, modes: ["sev-es"], vcpus: [1], vcpuType: "nope", allowNoSecretArea: true)
        }
    }

    /// Property: any input gives a table or a `FirmwareError`, never a trap, and a table only
    /// points inside the input. Random bytes, mutated real tables, random lengths and offsets.
    @Test func fuzzNeverCrashes() throws {
        let iterations = 200_000
        var rng = FirmwareTestRNG(seed: 0x5EF1_F00D)
        var seeds = [
            SyntheticOVMF(size: 4096, metadataOffset: 0x400).build(),
            SyntheticOVMF(size: 4096, metadataOffset: 0x400, sections: [(0x1000, 0x1000, 2)], tdx: false, extraEntry: nil).build(),
            SyntheticOVMF(size: 4096, secretBlock: (0, 0), resetAddress: nil, metadataOffset: nil).build(),
        ]
        // The last 8 KiB of Debian's real OVMF.fd: its table and its metadata (0x52c bytes from the end).
        if let real = FileManager.default.contents(atPath: "/usr/share/ovmf/OVMF.fd"), real.count >= 8192 {
            seeds.append([UInt8](real.suffix(8192)))
        }
        var outcomes: [String: Int] = [:]
        var violations = 0
        for i in 0..<iterations {
            var bytes: [UInt8]
            switch i % 4 {
            case 0:
                // Random bytes of a random length, with the footer GUID planted half the time.
                let length = Int(rng.next() % 300)
                bytes = (0..<length).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                if length >= 50 && rng.next() % 2 == 0 { bytes.replaceSubrange((length - 48)..<(length - 32), with: KnownGUID.ovmfTableFooter.efiBytes) }
            default:
                bytes = seeds[Int(rng.next() % UInt64(seeds.count))]
                let mutations = 1 + Int(rng.next() % 4)
                for _ in 0..<mutations {
                    switch rng.next() % 5 {
                    case 0: // flip a byte in the table
                        bytes[bytes.count - 1 - Int(rng.next() % 200)] ^= UInt8(truncatingIfNeeded: rng.next() | 1)
                    case 1: // a random u16 length somewhere in the table
                        let at = bytes.count - 50 - Int(rng.next() % 150)
                        bytes.replaceSubrange(at..<(at + 2), with: ovmfLE16(UInt16(truncatingIfNeeded: rng.next())))
                    case 2: // a random u32 in the metadata
                        let at = bytes.count - 0x400 + Int(rng.next() % 120)
                        bytes.replaceSubrange(at..<(at + 4), with: ovmfLE32(UInt32(truncatingIfNeeded: rng.next() % 3 == 0 ? rng.next() % 0x2000 : rng.next())))
                    case 3: // a random byte in the metadata
                        bytes[bytes.count - 0x400 + Int(rng.next() % 120)] = UInt8(truncatingIfNeeded: rng.next())
                    default: // truncate at the front, keeping the footer region
                        if rng.next() % 4 == 0 { bytes.removeFirst(Int(rng.next() % UInt64(bytes.count + 1))) }
                    }
                    if bytes.count < 0x400 { break }
                }
            }
            do {
                let image = try OVMFImage(bytes: bytes, path: "fuzz")
                for entry in image.table.entries where entry.offset < 0 || entry.offset + entry.data.count > bytes.count { violations += 1 }
                if let metadata = image.table.metadata, metadata.headerOffset < 0 || metadata.headerOffset + 16 > bytes.count { violations += 1 }
                if i % 64 == 1 { _ = FirmwareInspection(image).text }
                outcomes["parsed", default: 0] += 1
            } catch let error as FirmwareError {
                if i % 64 == 0 && error.description.contains("\n") { violations += 1 }
                outcomes[Mirror(reflecting: error).children.first?.label ?? "\(error)", default: 0] += 1
            }
        }
        #expect(violations == 0)
        #expect(outcomes.values.reduce(0, +) == iterations)
        #expect(outcomes["parsed", default: 0] > 1000)
        print("firmware table fuzz: \(iterations) inputs survived; outcomes: \(outcomes.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))")
    }
}

extension SyntheticOVMF {
    /// Bytes the entries take (the table without its footer).
    var entriesLength: Int { entries.reduce(0) { $0 + $1.1.count + 18 } }

    /// The image with one more entry nearest the footer.
    func withEntry(_ guid: GUID, _ data: [UInt8]) -> [UInt8] {
        var bytes = build()
        var table: [UInt8] = []
        for (g, d) in entries + [(guid, data)] { table += d + ovmfLE16(UInt16(d.count + 18)) + g.efiBytes }
        table += ovmfLE16(UInt16(table.count + 18)) + KnownGUID.ovmfTableFooter.efiBytes
        bytes.replaceSubrange((size - 32 - table.count)..<(size - 32), with: table)
        return bytes
    }
}

func ovmfPatched(_ bytes: [UInt8], at offset: Int, _ value: [UInt8]) -> [UInt8] {
    var copy = bytes
    copy.replaceSubrange(offset..<(offset + value.count), with: value)
    return copy
}
