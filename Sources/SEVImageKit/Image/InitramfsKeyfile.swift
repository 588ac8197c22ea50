import Foundation

/// A LUKS keyslot for the initramfs, which must open the root a second time: GRUB unlocked it with the
/// passphrase, but the kernel cannot reuse GRUB's volume key (and GRUB wipes the SEV secret after use).
///
/// Two kinds:
/// - **The unlock archive** (the default, `[boot] initramfs_unlock`): 64 random bytes in a keyslot of their
///   own, written with the crypttab entry into `/boot/sevimage-unlock.img`, a small uncompressed cpio inside
///   the encrypted root that GRUB loads after the tree's own initrd. The kernel unpacks the archives in order,
///   so the tree's initramfs finds, without any change to it or to the tree:
///
///       /cryptroot/crypttab                    root UUID=<luks uuid> /cryptroot/keyfiles/root.key luks
///       /cryptroot/keyfiles/root.key           initramfs-tools (cryptsetup-initramfs) reads these two
///       /etc/cryptsetup-keys.d/luks-<uuid>.key systemd-cryptsetup (dracut) finds it for rd.luks.uuid=<uuid>
///
///   The key is as safe as the kernel next to it: both are inside the encrypted root.
/// - **The author's own key file** (`--initramfs-keyfile`): their initramfs already carries it; only its
///   keyslot is added, and nothing is written into the tree.
///
/// Either keyslot is PBKDF2 with libcryptsetup's minimum iterations: a random key gains nothing from a slow KDF.
public struct InitramfsKeyfile: Sendable {
    /// Where the unlock archive lives inside the root, and GRUB's name for it.
    public static let archivePath = "/boot/sevimage-unlock.img"
    /// The archive's name in the work directory, on its way to debugfs.
    static let localName = "sevimage-unlock.img"
    /// initramfs-tools' name of the opened volume (`/dev/mapper/root`).
    public static let mappingName = "root"
    public static let generatedBytes = 64
    public static let maximumBytes = 8192

    public let key: SecretBytes
    /// True for a generated key: it goes into the unlock archive.
    public let installsInRoot: Bool

    /// 64 random bytes for the unlock archive.
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

    /// The crypttab line of the unlock archive (initramfs-tools' `/cryptroot/crypttab`).
    public static func crypttabLine(luksUUID: String) -> String {
        "\(mappingName) UUID=\(luksUUID) /cryptroot/keyfiles/\(mappingName).key luks"
    }

    /// The unlock archive's bytes. Secret: the caller wipes them.
    func unlockArchive(luksUUID: String, mtime: Int64) -> SecretBytes {
        var key = self.key.withUnsafeBytes { Array($0) }  // wiped below, with the archive
        var archive = Cpio.archive([
            .init(path: "cryptroot", mode: UInt32(S_IFDIR) | 0o755),
            .init(path: "cryptroot/crypttab", mode: UInt32(S_IFREG) | 0o644, data: Array((Self.crypttabLine(luksUUID: luksUUID) + "\n").utf8)),
            .init(path: "cryptroot/keyfiles", mode: UInt32(S_IFDIR) | 0o700),
            .init(path: "cryptroot/keyfiles/\(Self.mappingName).key", mode: UInt32(S_IFREG) | 0o400, data: key),
            .init(path: "etc", mode: UInt32(S_IFDIR) | 0o755),
            .init(path: "etc/cryptsetup-keys.d", mode: UInt32(S_IFDIR) | 0o700),
            .init(path: "etc/cryptsetup-keys.d/luks-\(luksUUID).key", mode: UInt32(S_IFREG) | 0o400, data: key),
        ], mtime: mtime)
        defer {
            archive.withUnsafeMutableBytes { wipe($0) }
            key.withUnsafeMutableBytes { wipe($0) }
        }
        return SecretBytes(archive[...])
    }

    /// debugfs commands that install the unlock archive at `archivePath` (root, mode 0600), replacing one the
    /// tree has; none for the author's own key. The archive goes through a 0600 file in the private work directory.
    public func debugfsCommands(tree: String, scratch: TemporaryDirectory, luksUUID: String, mtime: Int64) throws -> [String] {
        guard installsInRoot else { return [] }
        let local = scratch.file(Self.localName)
        let fd = open(local, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw GeneralError.io("create", path: local, errno: errno) }
        defer { close(fd) }
        try unlockArchive(luksUUID: luksUUID, mtime: mtime).withUnsafeBytes { bytes in
            guard Foundation.write(fd, bytes.baseAddress!, bytes.count) == bytes.count else {
                throw GeneralError.io("write", path: local, errno: errno)
            }
        }
        let target = RootTree.debugfsQuoted(Self.archivePath)
        let replace = TreePath.exists(Self.archivePath, in: tree) ? ["rm \(target)"] : []
        return replace + ["write \"\(local)\" \(target)"] + BootPlan.rootOwned(target, mode: "0100600")
    }

    /// Adds the key's keyslot (PBKDF2-SHA256, minimum iterations) and returns its number.
    public func addKeyslot(to luks: CryptDevice, volumeKey: SecretBytes) throws -> Int {
        try luks.addKeyslot(volumeKey: volumeKey, passphrase: key, iterations: LUKSLayout.minimumPBKDF2Iterations)
    }
}
