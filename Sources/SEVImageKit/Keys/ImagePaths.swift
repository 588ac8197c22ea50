import Foundation

/// The files that belong to an image during and after key operations, all in the image's directory.
///
///     vm.qcow2                          the image
///     vm.manifest.json                  its manifest (no secrets)
///     vm.blockdigests                   the SHA-256 of each 64 KiB block of vm.qcow2 (BlockDigests; the
///                                       manifest's image digest is their SHA-256)
///     vm.passphrase                     the current SEV passphrase (0600)
///     vm.passphrase.new                 the next passphrase, while a rotation or re-encryption runs
///     vm.passphrase.old                 the previous one, with --keep-old-passphrase
///     vm.qcow2.sevimage-journal         write-ahead journal of one LUKS header change
///     vm.qcow2.sevimage-rotate          the state of an unfinished rotation (JSON, no secrets)
///     vm.qcow2.sevimage-reencrypt/      the new image being built by reencrypt
public struct ImagePaths: Sendable {
    public let image: String

    public init(image: String) { self.image = image }

    public var manifest: String { Manifest.defaultPath(forImage: image) }
    public var passphrase: String { stem(image) + ".passphrase" }
    public var blockDigests: String { stem(image) + ".blockdigests" }
    public var newPassphrase: String { passphrase + ".new" }
    public var oldPassphrase: String { passphrase + ".old" }
    public var journal: String { image + ".sevimage-journal" }
    public var rotationState: String { image + ".sevimage-rotate" }
    public var reencryptDirectory: String { image + ".sevimage-reencrypt" }

    /// The endings of the files that go with an image: an image must not be named like one of them.
    public static let companionSuffixes = [".passphrase", ".passphrase.new", ".passphrase.old", ".manifest.json", ".blockdigests",
                                           ".sevimage-journal", ".sevimage-rotate", ".sevimage-reencrypt", ".sevimage-lock"]

    /// Refuses an image named like a companion file, and an image whose files are not all distinct
    /// (`create`, `rotate`, `reencrypt` and `keys` call it before they write anything).
    public static func check(image: String, extra: [(role: String, path: String)] = []) throws {
        let name = PathName.name(of: image)
        if let suffix = companionSuffixes.first(where: { name.hasSuffix($0) }) {
            throw GeneralError.invalidArgument("image \(image) is named like the \(suffix) file that goes with an image; give it another name (such as \(PathName.stem(name)).qcow2)")
        }
        let paths = ImagePaths(image: image)
        try PathName.requireDistinct([("image", image), ("manifest", paths.manifest), ("block digests", paths.blockDigests),
                                      ("passphrase file", paths.passphrase),
                                      ("new passphrase file", paths.newPassphrase), ("old passphrase file", paths.oldPassphrase),
                                      ("header journal", paths.journal), ("rotation state", paths.rotationState),
                                      ("re-encryption directory", paths.reencryptDirectory)] + extra)
    }

    /// The prefix of the private header copies (`TemporaryDirectory` adds `-XXXXXX`).
    var workspacePurpose: String { (PathName.name(of: image)) + ".sevimage-keys" }

    /// Removes what a killed run may have left that no step needs: temporary names of durable replacements
    /// (one may hold a passphrase) and private header copies. Call it holding the image's lock.
    func removeLeftovers() {
        for path in [passphrase, journal, rotationState, manifest, blockDigests] { unlink(path + ".tmp") }
        let directory = PathName.directory(of: image)
        let parent = directory.isEmpty ? "." : directory
        let prefix = "." + workspacePurpose + "-"
        for name in (try? FileManager.default.contentsOfDirectory(atPath: parent)) ?? [] where name.hasPrefix(prefix) && name.count == prefix.count + 6 {
            try? FileManager.default.removeItem(atPath: parent + "/" + name)
        }
    }

    static func exists(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0
    }
}

/// Small durable file operations, each followed by a directory fsync.
enum DurableFile {
    /// Writes `data` to `path` through a temporary file and an atomic rename (replacing any file there).
    static func replace(_ path: String, with data: Data, mode: mode_t = 0o644) throws {
        let temporary = path + ".tmp"
        unlink(temporary)
        try data.withUnsafeBytes { try OutputFiles.writeNew($0, to: temporary, mode: mode) }
        guard rename(temporary, path) == 0 else { throw GeneralError.io("move into place", path: path, errno: errno) }
        try OutputFiles.syncDirectory(of: path)
    }

    /// Writes a passphrase to `path` (0600) through a temporary file and an atomic rename.
    static func replace(_ path: String, with passphrase: Passphrase) throws {
        let temporary = path + ".tmp"
        unlink(temporary)
        try passphrase.write(toNewFile: temporary)
        guard rename(temporary, path) == 0 else { throw GeneralError.io("move into place", path: path, errno: errno) }
        try OutputFiles.syncDirectory(of: path)
    }

    static func remove(_ path: String) throws {
        guard unlink(path) == 0 || errno == ENOENT else { throw GeneralError.io("remove", path: path, errno: errno) }
        try OutputFiles.syncDirectory(of: path)
    }
}

extension Passphrase {
    /// Whether two passphrases are the same, in constant time.
    func matches(_ other: Passphrase) -> Bool { secret.constantTimeEquals(other.secret) }
}
