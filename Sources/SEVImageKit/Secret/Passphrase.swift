import Foundation

/// The disk passphrase: the LUKS keyslot's key and the SEV secret's payload.
///
/// Generated ones carry 256 bits from the kernel's CSPRNG as 43 characters of unpadded base64url
/// (printable ASCII, easy to type at GRUB's prompt, no NUL). A passphrase file holds the passphrase
/// itself; one trailing newline (`\n` or `\r\n`) is not part of it.
public struct Passphrase: Sendable, CustomStringConvertible {
    public let secret: SecretBytes

    public init(_ secret: SecretBytes) { self.secret = secret }

    public var description: String { "<passphrase>" }

    /// 256 bits from the CSPRNG, as 43 base64url characters.
    public static func generate() throws -> Passphrase {
        let raw = try SecretBytes(randomCount: 32)
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
        var text = [UInt8](repeating: 0, count: 43)
        defer { text.withUnsafeMutableBytes { wipe($0) } }
        raw.withUnsafeBytes { bytes in
            // 256 bits read as 43 groups of 6 bits, most significant first (the last group has 4 bits, padded).
            var accumulator: UInt32 = 0, bits = 0, out = 0
            for byte in bytes {
                accumulator = (accumulator << 8) | UInt32(byte)
                bits += 8
                while bits >= 6 {
                    bits -= 6
                    text[out] = alphabet[Int((accumulator >> UInt32(bits)) & 0x3F)]
                    out += 1
                }
            }
            if bits > 0 { text[out] = alphabet[Int((accumulator << UInt32(6 - bits)) & 0x3F)] }
            accumulator = 0
        }
        return Passphrase(SecretBytes(text))
    }

    /// Reads and checks a passphrase file.
    ///
    /// Refused (by `SecretFile.read`): a missing file, a directory, FIFO or device (reading one could block
    /// or never end), a file that other users can write (someone could swap the secret); a file others can
    /// read gets a warning. Refused here: an empty passphrase, and one with a NUL byte (GRUB's secret entry
    /// ends at the first NUL).
    public static func read(from path: String) throws -> Passphrase {
        let raw = try SecretFile.read(path, what: "passphrase file", maxSize: 4096)
        return try raw.withUnsafeBytes { bytes in
            var length = bytes.count
            if length > 0 && bytes[length - 1] == 0x0A { length -= 1 }
            if length > 0 && bytes[length - 1] == 0x0D { length -= 1 }
            guard length > 0 else { throw PassphraseError.empty(path) }
            guard !bytes[0..<length].contains(0) else { throw PassphraseError.containsNUL(path) }
            return Passphrase(SecretBytes(bytes[0..<length]))
        }
    }

    /// Writes the passphrase (without a newline) to a new file, created exclusively with mode 0600 and fsync'ed.
    public func write(toNewFile path: String) throws {
        try SecretFile.writeNew(secret, to: path)
    }
}

public enum PassphraseError: SEVImageError {
    case empty(String)
    case containsNUL(String)

    public var exitStatus: ExitStatus { .invalidInput }

    public var description: String {
        switch self {
        case .empty(let path): "passphrase file \(path) is empty"
        case .containsNUL(let path): "passphrase file \(path) contains a NUL byte, which GRUB's secret entry cannot carry"
        }
    }
}
