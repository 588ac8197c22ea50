/// A GUID, stored as the 16 bytes of its canonical text read left to right (RFC 4122 order).
///
/// On-disk EFI structures (GPT, the OVMF table, the SEV secret table) store the first three fields
/// little-endian ("mixed endian"); `efiBytes` and `init(efiBytes:)` convert.
public struct GUID: Hashable, Sendable, CustomStringConvertible, Codable, Comparable {
    public let bytes: [UInt8]

    public init?(_ text: String) {
        let digits = text.replacingOccurrences(of: "-", with: "")
        guard text.count == 36, digits.count == 32,
              Array(text.utf8).enumerated().allSatisfy({ i, c in [8, 13, 18, 23].contains(i) ? c == 45 : c != 45 }),
              let parsed = hexBytes(digits) else { return nil }
        bytes = parsed
    }

    public init(bytes: [UInt8]) {
        precondition(bytes.count == 16)
        self.bytes = bytes
    }

    /// Decodes the EFI on-disk form (first three fields little-endian).
    public init(efiBytes raw: some Collection<UInt8>) {
        let b = Array(raw)
        precondition(b.count == 16)
        bytes = [b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6]] + b[8..<16]
    }

    /// The EFI on-disk form.
    public var efiBytes: [UInt8] {
        let b = bytes
        return [b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6]] + b[8..<16]
    }

    /// A random version-4 GUID from the CSPRNG.
    public static func random() throws -> GUID {
        var b = try randomBytes(16)
        b[6] = (b[6] & 0x0F) | 0x40
        b[8] = (b[8] & 0x3F) | 0x80
        return GUID(bytes: b)
    }

    /// Lowercase canonical text.
    public var description: String {
        let h = hex(bytes)
        let c = Array(h)
        return String(c[0..<8]) + "-" + String(c[8..<12]) + "-" + String(c[12..<16]) + "-" + String(c[16..<20]) + "-" + String(c[20..<32])
    }

    public static func < (a: GUID, b: GUID) -> Bool { a.bytes.lexicographicallyPrecedes(b.bytes) }

    public init(from decoder: Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let guid = GUID(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not a GUID: \(text)"))
        }
        self = guid
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

import Foundation

/// The GUIDs this project uses, from DESIGN.md (OVMF, GRUB, the UEFI and Discoverable Partitions specs).
public enum KnownGUID {
    public static let espType = GUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")!
    /// Discoverable Partitions Specification: root partition, x86-64.
    public static let rootX86_64Type = GUID("4f68bce3-e8cd-4db1-96e7-fbcaf984b709")!
    /// SEV secret table header (OVMF `SEV_SECRET` / GRUB `efisecret`).
    public static let secretTableHeader = GUID("1e74f542-71dd-4d66-963e-ef4287ff173b")!
    /// The secret table entry that carries the disk passphrase (GRUB's efisecret module).
    public static let diskPassphraseEntry = GUID("736869e5-84f0-4973-92ec-06879ce3da0b")!
    /// OVMF's GUIDed table footer at the end of the flash image.
    public static let ovmfTableFooter = GUID("96b582de-1fb2-45f7-baea-a366c55a082d")!
    public static let sevSecretBlock = GUID("4c2eb361-7d9b-4cc3-8081-127c90d3d294")!
    public static let sevHashTable = GUID("7255371f-3a3b-4b04-927b-1da6efa8d454")!
    public static let sevESResetBlock = GUID("00f771de-1a7e-4fcb-890e-68c77e2fb44e")!
    public static let sevMetadata = GUID("dc886566-984a-4798-a75e-5585a7bf67cc")!
    public static let tdxMetadata = GUID("e47a6535-984a-4798-865e-4685a7bf8ec2")!
}
