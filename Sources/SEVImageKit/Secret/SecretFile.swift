import Foundation

/// Reading and writing files that hold secrets: secret table entries, transport keys, tables.
///
/// Reads refuse what could block or be swapped under us (FIFOs, devices, files others can write), and warn
/// about files others can read (not the process's own group: a Kubernetes Secret with fsGroup, mode 0440);
/// writes create a new file exclusively with mode 0600, so that a secret never lands in a file
/// someone else opened first.
public enum SecretFile {
    /// Reads a whole regular file of at most `maxSize` bytes into `SecretBytes`.
    public static func read(_ path: String, what: String, maxSize: Int) throws -> SecretBytes {
        var info = stat()
        guard stat(path, &info) == 0 else { throw SecretFileError.unreadable(what, path, errnoDescription(errno)) }
        guard (info.st_mode & S_IFMT) == S_IFREG else { throw SecretFileError.notRegularFile(what, path) }
        guard info.st_mode & (S_IWGRP | S_IWOTH) == 0 else { throw SecretFileError.writableByOthers(what, path) }
        guard info.st_size <= maxSize else { throw SecretFileError.tooLarge(what, path, maxSize) }
        // Readable by the file's group is no one else's business when that group is our own: a Kubernetes Secret
        // volume gives files root:fsGroup and mode 0440, and the stage runs with that group (runAsGroup = fsGroup).
        if info.st_mode & S_IROTH != 0 || (info.st_mode & S_IRGRP != 0 && info.st_gid != getegid()) {
            Console.warning("\(what) \(path) is readable by other users; chmod 600 it")
        }
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw SecretFileError.unreadable(what, path, errnoDescription(errno)) }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: maxSize + 1)
        defer { buffer.withUnsafeMutableBytes { wipe($0) } }
        var length = 0
        while length < buffer.count {
            let n = buffer.withUnsafeMutableBytes { Foundation.read(fd, $0.baseAddress! + length, $0.count - length) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw SecretFileError.unreadable(what, path, errnoDescription(errno)) }
            if n == 0 { break }
            length += n
        }
        guard length <= maxSize else { throw SecretFileError.tooLarge(what, path, maxSize) }
        return SecretBytes(buffer[0..<length])
    }

    /// Writes `secret` to a new file (O_EXCL, mode 0600, fsync'ed); an existing path is a conflict.
    public static func writeNew(_ secret: SecretBytes, to path: String) throws {
        try secret.withUnsafeBytes { try OutputFiles.writeNew($0, to: path, mode: 0o600) }
    }
}

public enum SecretFileError: SEVImageError {
    case unreadable(String, String, String)
    case notRegularFile(String, String)
    case writableByOthers(String, String)
    case tooLarge(String, String, Int)
    case wrongSize(String, String, expected: Int, actual: Int)

    public var exitStatus: ExitStatus { .invalidInput }

    public var description: String {
        switch self {
        case .unreadable(let what, let path, let reason): "cannot read \(what) \(path): \(reason)"
        case .notRegularFile(let what, let path): "\(what) \(path) is not a regular file (FIFOs and devices are refused)"
        case .writableByOthers(let what, let path): "\(what) \(path) is writable by other users; chmod 600 it"
        case .tooLarge(let what, let path, let max): "\(what) \(path) is larger than \(max) bytes"
        case .wrongSize(let what, let path, let expected, let actual): "\(what) \(path) holds \(actual) bytes, expected \(expected)"
        }
    }
}
