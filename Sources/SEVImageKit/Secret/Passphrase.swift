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

    /// The most characters GRUB 2.06's passphrase prompt keeps: `grub_password_get(buf, 256)` (luks2.c's
    /// MAX_PASSPHRASE) stores a key only while `cur_len + 2 < buf_size`, and drops the rest without a word.
    public static let grubPromptMaximumLength = 254

    /// Why a person cannot type this passphrase at GRUB's prompt, or nil when they can. GRUB 2.06
    /// (`grub_password_get` in grub-core/lib/crypto.c) skips every key that is not printable ASCII
    /// (`grub_isprint`: 0x20 to 0x7E, so no UTF-8, tab or other control character) and keeps at most 254.
    /// The SEV secret path takes any bytes but NUL: a passphrase only it can use gets a warning, one meant to
    /// be typed (a recovery passphrase, `boot`) is refused.
    public var grubPromptProblem: String? {
        secret.withUnsafeBytes { bytes -> String? in
            if let index = bytes.firstIndex(where: { $0 < 0x20 || $0 > 0x7E }) {
                let what = bytes[index] > 0x7E ? "is not ASCII" : "is a control character"
                return "byte \(index + 1) (0x\(String(bytes[index], radix: 16, uppercase: true))) \(what); GRUB's prompt takes only printable ASCII (0x20 to 0x7E)"
            }
            if bytes.count > Self.grubPromptMaximumLength {
                return "it is \(bytes.count) characters long; GRUB's prompt keeps at most \(Self.grubPromptMaximumLength) and drops the rest"
            }
            return nil
        }
    }

    /// Refuses a passphrase a person must type at GRUB's prompt when they cannot (`role`: what it is for).
    public func checkTypableAtGrub(path: String, role: String) throws {
        if let problem = grubPromptProblem { throw PassphraseError.notTypableAtGrub(path, role: role, reason: problem) }
    }

    /// Warns, on stderr, that only the SEV secret path will be able to use this passphrase.
    public func warnIfNotTypableAtGrub(path: String) {
        guard let problem = grubPromptProblem else { return }
        Console.warning("the passphrase in \(path) cannot be typed at GRUB's prompt (\(problem)): only the SEV secret path will unlock the image with it, not a standard boot")
    }

    /// Writes the passphrase (without a newline) to a new file, created exclusively with mode 0600 and fsync'ed.
    public func write(toNewFile path: String) throws {
        try SecretFile.writeNew(secret, to: path)
    }
}

public enum PassphraseError: SEVImageError {
    case empty(String)
    case containsNUL(String)
    case notTypableAtGrub(String, role: String, reason: String)

    public var exitStatus: ExitStatus { .invalidInput }

    public var description: String {
        switch self {
        case .empty(let path): "passphrase file \(path) is empty"
        case .containsNUL(let path): "passphrase file \(path) contains a NUL byte, which GRUB's secret entry cannot carry"
        case .notTypableAtGrub(let path, let role, let reason): "the \(role) in \(path) cannot be typed at GRUB's passphrase prompt: \(reason)"
        }
    }
}
