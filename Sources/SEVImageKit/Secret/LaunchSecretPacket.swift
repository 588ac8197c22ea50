import Foundation

/// The launch session's transport keys: TEK encrypts the secret, TIK authenticates it and the
/// launch measurement. sev-tool's `tmp_tk.bin` holds both, 32 bytes, TEK first.
public struct TransportKeys: Sendable {
    public let tek: SecretBytes
    public let tik: SecretBytes

    public init(tek: SecretBytes, tik: SecretBytes) throws {
        guard tek.count == 16, tik.count == 16 else {
            throw GeneralError.invalidArgument("the TEK and the TIK are 16 bytes each (got \(tek.count) and \(tik.count))")
        }
        self.tek = tek
        self.tik = tik
    }

    /// Reads a combined 32-byte TK file (TEK ‖ TIK).
    public static func read(tkFile path: String) throws -> TransportKeys {
        let both = try SecretFile.read(path, what: "TK file", maxSize: 32)
        guard both.count == 32 else { throw SecretFileError.wrongSize("TK file", path, expected: 32, actual: both.count) }
        return try both.withUnsafeBytes {
            try TransportKeys(tek: SecretBytes($0[0..<16]), tik: SecretBytes($0[16..<32]))
        }
    }

    /// Reads a 16-byte TEK file and a 16-byte TIK file.
    public static func read(tekFile: String, tikFile: String) throws -> TransportKeys {
        let tek = try SecretFile.read(tekFile, what: "TEK file", maxSize: 16)
        let tik = try SecretFile.read(tikFile, what: "TIK file", maxSize: 16)
        guard tek.count == 16 else { throw SecretFileError.wrongSize("TEK file", tekFile, expected: 16, actual: tek.count) }
        guard tik.count == 16 else { throw SecretFileError.wrongSize("TIK file", tikFile, expected: 16, actual: tik.count) }
        return try TransportKeys(tek: tek, tik: tik)
    }
}

/// What QEMU's `query-sev-launch-measure` returns in `data`: base64 of the 48-byte LAUNCH_MEASURE
/// buffer, the measurement (HMAC-SHA256, 32 bytes) followed by the firmware's nonce (MNONCE, 16 bytes).
public struct LaunchMeasure: Sendable, Equatable {
    public let measurement: [UInt8]
    public let nonce: [UInt8]

    public init(measurement: [UInt8], nonce: [UInt8]) {
        precondition(measurement.count == 32 && nonce.count == 16)
        self.measurement = measurement
        self.nonce = nonce
    }

    public init(base64 text: String) throws {
        guard let data = Data(base64Encoded: text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw LaunchSecretError.badLaunchMeasure("it is not base64")
        }
        guard data.count == 48 else {
            throw LaunchSecretError.badLaunchMeasure("it holds \(data.count) bytes, expected 48 (measurement 32 + nonce 16)")
        }
        let bytes = [UInt8](data)
        measurement = Array(bytes[0..<32])
        nonce = Array(bytes[32..<48])
    }

    public var base64: String { Data(measurement + nonce).base64EncodedString() }
}

/// The LAUNCH_SECRET packet that `sev-inject-launch-secret` takes.
///
/// ```
/// header (52 bytes, little-endian)        payload
/// 0   4   flags = 0                        AES-128-CTR(TEK, IV, padded secret table)
/// 4   16  IV (initial counter block)
/// 20  32  HMAC-SHA256(TIK, 0x01 ‖ flags ‖ IV ‖ guest length (u32) ‖ transfer length (u32)
///                          ‖ payload ‖ launch measurement (32))
/// ```
///
/// The HMAC input follows AMD's SEV API spec (LAUNCH_SECRET, "Packet Header Buffer") as implemented by
/// AMD's sev-tool (`Command::create_launch_secret_header`: meas_ctx 0x01, flags, IV, the encrypted
/// buffer's length twice as guest and transfer length, the encrypted data, then the measurement for
/// API >= 0.17) and by James Bottomley's QEMU inject script posted to qemu-devel; both MAC the
/// ciphertext, not the plaintext.
public struct LaunchSecretPacket: Sendable {
    public static let headerSize = 52
    public let flags: UInt32
    public let iv: [UInt8]
    public let header: [UInt8]
    /// The ciphertext: not secret once encrypted, but useless to anyone without the TEK.
    public let payload: [UInt8]

    public var headerBase64: String { Data(header).base64EncodedString() }
    public var payloadBase64: String { Data(payload).base64EncodedString() }

    /// Wraps a padded secret table. `iv` defaults to 16 bytes from the CSPRNG (tests pass their own).
    public init(table: SecretBytes, keys: TransportKeys, measurement: [UInt8], iv: [UInt8]? = nil) throws {
        guard table.count > 0, table.count % 16 == 0 else {
            throw LaunchSecretError.unpaddedTable(table.count)
        }
        guard measurement.count == 32 else { throw LaunchSecretError.badLaunchMeasure("the measurement is not 32 bytes") }
        let iv = try iv ?? randomBytes(16)
        precondition(iv.count == 16)
        var plain = table.withUnsafeBytes { [UInt8]($0) }
        defer { plain.withUnsafeMutableBytes { wipe($0) } }
        let payload = try keys.tek.withUnsafeBytes { try Crypto.aes128CTR(key: $0, iv: iv, plain) }
        let flags: UInt32 = 0
        let length = UInt32(payload.count)
        var message: [UInt8] = [0x01]
        message += withUnsafeBytes(of: flags.littleEndian, Array.init)
        message += iv
        message += withUnsafeBytes(of: length.littleEndian, Array.init)  // guest length
        message += withUnsafeBytes(of: length.littleEndian, Array.init)  // transfer length
        message += payload
        message += measurement
        let mac = keys.tik.withUnsafeBytes { Crypto.hmacSHA256(key: $0, message) }
        self.flags = flags
        self.iv = iv
        self.header = withUnsafeBytes(of: flags.littleEndian, Array.init) + iv + mac
        self.payload = payload
    }
}

public enum LaunchSecretError: SEVImageError {
    case badLaunchMeasure(String)
    case unpaddedTable(Int)

    public var exitStatus: ExitStatus { .invalidInput }

    public var description: String {
        switch self {
        case .badLaunchMeasure(let why): "the launch measurement is not usable: \(why)"
        case .unpaddedTable(let size): "the secret table is \(size) bytes, not a non-zero multiple of 16"
        }
    }
}
