import Foundation

/// Where every UUID and id of a new image comes from: the CSPRNG, or (for reproducible builds) a seed.
///
/// With a seed, each id is HMAC-SHA256(seed, "sevimage:" + purpose), shaped as a version-4 GUID, so two
/// runs with the same seed give the same disk, partition, filesystem and LUKS ids. Keys and passphrases
/// never come from the seed.
public struct Identities: Sendable {
    private let seed: [UInt8]?

    public init(seed: String?) {
        self.seed = seed.map { Array($0.utf8) }
    }

    public var isSeeded: Bool { seed != nil }

    public func guid(_ purpose: String) throws -> GUID {
        guard let seed else { return try GUID.random() }
        var b = Array(Crypto.hmacSHA256(key: seed, Array("sevimage:\(purpose)".utf8)).prefix(16))
        b[6] = (b[6] & 0x0F) | 0x40
        b[8] = (b[8] & 0x3F) | 0x80
        return GUID(bytes: b)
    }

    public func uint32(_ purpose: String) throws -> UInt32 {
        let b = try guid(purpose).bytes
        return UInt32(b[0]) << 24 | UInt32(b[1]) << 16 | UInt32(b[2]) << 8 | UInt32(b[3])
    }
}
