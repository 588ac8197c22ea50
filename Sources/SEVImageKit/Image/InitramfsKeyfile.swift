import Foundation

/// A second LUKS keyslot for a key file that the initramfs uses to unlock the root again without a
/// prompt (GRUB unlocked it once with the passphrase; the kernel cannot reuse GRUB's volume key).
///
/// Either the image author's own key file (their initramfs already carries it: only the keyslot is
/// added), or a generated one: 64 bytes from the CSPRNG, written inside the encrypted root as
/// `/etc/cryptsetup-keys.d/root.key` (mode 0400, root) with a matching `/etc/crypttab` line. The
/// keyslot is PBKDF2 with libcryptsetup's minimum iterations: the key is random, a slow KDF adds nothing.
public struct InitramfsKeyfile: Sendable {
    /// Where a generated key lives inside the root, and the crypttab's name for the volume.
    public static let targetPath = "/etc/cryptsetup-keys.d/root.key"
    public static let mappingName = "root"
    public static let generatedBytes = 64
    public static let maximumBytes = 8192

    public let key: SecretBytes
    /// True for a generated key: it is installed in the root with its crypttab entry.
    public let installsInRoot: Bool

    /// 64 random bytes, installed in the root.
    public static func generate() throws -> InitramfsKeyfile {
        InitramfsKeyfile(key: try SecretBytes(randomCount: generatedBytes), installsInRoot: true)
    }

    /// The author's key file, byte for byte (a key file is binary: no newline is stripped).
    public static func read(from path: String) throws -> InitramfsKeyfile {
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw GeneralError.invalidArgument("cannot read the key file \(path): \(errnoDescription(errno))")
        }
        guard (info.st_mode & S_IFMT) == S_IFREG else { throw GeneralError.invalidArgument("the key file \(path) is not a regular file") }
        guard info.st_mode & (S_IWGRP | S_IWOTH) == 0 else {
            throw GeneralError.invalidArgument("the key file \(path) is writable by other users; chmod 600 it")
        }
        guard info.st_size > 0, info.st_size <= maximumBytes else {
            throw GeneralError.invalidArgument("the key file \(path) must hold 1 to \(maximumBytes) bytes, not \(info.st_size)")
        }
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw GeneralError.invalidArgument("cannot read the key file \(path): \(errnoDescription(errno))") }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: maximumBytes + 1)
        defer { buffer.withUnsafeMutableBytes { wipe($0) } }
        var length = 0
        while length < buffer.count {
            let n = buffer.withUnsafeMutableBytes { Foundation.read(fd, $0.baseAddress! + length, $0.count - length) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw GeneralError.io("read", path: path, errno: errno) }
            if n == 0 { break }
            length += n
        }
        guard length > 0, length <= maximumBytes else {
            throw GeneralError.invalidArgument("the key file \(path) must hold 1 to \(maximumBytes) bytes")
        }
        return InitramfsKeyfile(key: SecretBytes(buffer[0..<length]), installsInRoot: false)
    }

    /// The `/etc/crypttab` line for the root.
    public static func crypttabLine(luksUUID: String) -> String {
        "\(mappingName) UUID=\(luksUUID) \(targetPath) luks,discard"
    }

    /// debugfs commands that install a generated key and the crypttab entry (none for the author's own key).
    /// An existing `/etc/crypttab` in the tree is kept, with any `root` line replaced by ours.
    public func debugfsCommands(tree: String, scratch: TemporaryDirectory, luksUUID: String) throws -> [String] {
        guard installsInRoot else { return [] }
        let fm = FileManager.default
        let keyPath = scratch.file("initramfs.key")
        let fd = open(keyPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw GeneralError.io("create", path: keyPath, errno: errno) }
        defer { close(fd) }
        try key.withUnsafeBytes { bytes in
            guard Foundation.write(fd, bytes.baseAddress!, bytes.count) == bytes.count else {
                throw GeneralError.io("write", path: keyPath, errno: errno)
            }
        }
        var existing: [String] = []
        if let text = try? String(contentsOfFile: tree + "/etc/crypttab", encoding: .utf8) {
            existing = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
                .filter { $0.split(whereSeparator: { $0 == " " || $0 == "\t" }).first.map(String.init) != Self.mappingName }
            while existing.last?.isEmpty == true { existing.removeLast() }
        }
        let crypttabPath = scratch.file("crypttab")
        try Data((existing + [Self.crypttabLine(luksUUID: luksUUID)]).joined(separator: "\n").appending("\n").utf8)
            .write(to: URL(fileURLWithPath: crypttabPath))

        var commands: [String] = []
        func owned(_ path: String, mode: String) -> [String] {
            ["set_inode_field \(path) mode \(mode)", "set_inode_field \(path) uid 0", "set_inode_field \(path) gid 0"]
        }
        let keyDirectory = (Self.targetPath as NSString).deletingLastPathComponent
        if !fm.fileExists(atPath: tree + "/etc") { commands += ["mkdir /etc"] + owned("/etc", mode: "040755") }
        if !fm.fileExists(atPath: tree + keyDirectory) { commands += ["mkdir \(keyDirectory)"] + owned(keyDirectory, mode: "040700") }
        if fm.fileExists(atPath: tree + Self.targetPath) { commands.append("rm \(Self.targetPath)") }
        commands += ["write \"\(keyPath)\" \(Self.targetPath)"] + owned(Self.targetPath, mode: "0100400")
        if fm.fileExists(atPath: tree + "/etc/crypttab") { commands.append("rm /etc/crypttab") }
        commands += ["write \"\(crypttabPath)\" /etc/crypttab"] + owned("/etc/crypttab", mode: "0100644")
        return commands
    }

    /// Adds the key's keyslot (PBKDF2-SHA256, minimum iterations) and returns its number.
    public func addKeyslot(to luks: CryptDevice, volumeKey: SecretBytes) throws -> Int {
        try luks.addKeyslot(volumeKey: volumeKey, passphrase: key, iterations: LUKSLayout.minimumPBKDF2Iterations)
    }
}
