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
    /// Refused: a missing file, a directory, FIFO or device (reading one could block or never end),
    /// a file that other users can write (someone could swap the secret), an empty passphrase, one
    /// with a NUL byte (GRUB's secret entry ends at the first NUL). A file others can read gets a warning.
    public static func read(from path: String) throws -> Passphrase {
        var info = stat()
        guard stat(path, &info) == 0 else { throw PassphraseError.unreadable(path, errnoDescription(errno)) }
        guard (info.st_mode & S_IFMT) == S_IFREG else { throw PassphraseError.notRegularFile(path) }
        guard info.st_mode & (S_IWGRP | S_IWOTH) == 0 else { throw PassphraseError.writableByOthers(path) }
        guard info.st_size <= 4096 else { throw PassphraseError.tooLong(path) }
        if info.st_mode & (S_IRGRP | S_IROTH) != 0 {
            Console.warning("\(path) is readable by other users; chmod 600 it")
        }
        // O_NONBLOCK: should the file have become a FIFO since stat, reading it cannot hang.
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw PassphraseError.unreadable(path, errnoDescription(errno)) }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 4097)
        defer { buffer.withUnsafeMutableBytes { wipe($0) } }
        var length = 0
        while length < buffer.count {
            let n = buffer.withUnsafeMutableBytes { Foundation.read(fd, $0.baseAddress! + length, $0.count - length) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw PassphraseError.unreadable(path, errnoDescription(errno)) }
            if n == 0 { break }
            length += n
        }
        guard length <= 4096 else { throw PassphraseError.tooLong(path) }
        if length > 0 && buffer[length - 1] == 0x0A { length -= 1 }
        if length > 0 && buffer[length - 1] == 0x0D { length -= 1 }
        guard length > 0 else { throw PassphraseError.empty(path) }
        guard !buffer[0..<length].contains(0) else { throw PassphraseError.containsNUL(path) }
        return Passphrase(SecretBytes(buffer[0..<length]))
    }

    /// Writes the passphrase (without a newline) to a new file, created exclusively with mode 0600 and fsync'ed.
    public func write(toNewFile path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw GeneralError.io("create", path: path, errno: errno) }
        defer { close(fd) }
        try secret.withUnsafeBytes { bytes in
            var offset = 0
            while offset < bytes.count {
                let n = Foundation.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw GeneralError.io("write", path: path, errno: errno) }
                offset += n
            }
        }
        guard fchmod(fd, 0o600) == 0, fsync(fd) == 0 else { throw GeneralError.io("write", path: path, errno: errno) }
    }
}

public enum PassphraseError: SEVImageError {
    case unreadable(String, String)
    case notRegularFile(String)
    case writableByOthers(String)
    case empty(String)
    case containsNUL(String)
    case tooLong(String)

    public var exitStatus: ExitStatus { .invalidInput }

    public var description: String {
        switch self {
        case .unreadable(let path, let reason): "cannot read passphrase file \(path): \(reason)"
        case .notRegularFile(let path): "passphrase file \(path) is not a regular file (FIFOs and devices are refused)"
        case .writableByOthers(let path): "passphrase file \(path) is writable by other users; chmod 600 it"
        case .empty(let path): "passphrase file \(path) is empty"
        case .containsNUL(let path): "passphrase file \(path) contains a NUL byte, which GRUB's secret entry cannot carry"
        case .tooLong(let path): "passphrase file \(path) is longer than 4096 bytes"
        }
    }
}
