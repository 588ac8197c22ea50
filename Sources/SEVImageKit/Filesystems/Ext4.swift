import Foundation

/// Builds the root ext4 filesystem into a plain file, without mounting: `mke2fs -d` copies the tree,
/// then `debugfs -w` applies what the tree could not carry (ownership from a tarball, device nodes,
/// a generated `/boot/grub/grub.cfg`).
public struct Ext4Builder: Sendable {
    public var blockSize: UInt32 = 4096
    public var label = "root"
    public var uuid: GUID
    public var hashSeed: GUID
    /// Fixed time for every timestamp mke2fs and debugfs write (`SOURCE_DATE_EPOCH`), or now.
    public var timestamp: Int64?

    public init(uuid: GUID, hashSeed: GUID, timestamp: Int64?) {
        self.uuid = uuid
        self.hashSeed = hashSeed
        self.timestamp = timestamp
    }

    /// The environment of mke2fs and debugfs.
    private var environment: [String: String] {
        var environment: [String: String] = ["MKE2FS_CONFIG": "/dev/null"]
        if let timestamp { environment["E2FSPROGS_FAKE_TIME"] = String(timestamp) }
        if let noSync = Self.noSyncLibrary {
            let inherited = ProcessInfo.processInfo.environment["LD_PRELOAD"].map { " " + $0 } ?? ""
            environment["LD_PRELOAD"] = noSync + inherited
        }
        return environment
    }

    /// `mke2fs -d`: creates `path` (`size` bytes, sparse) holding `tree`.
    ///
    /// Inode tables and the journal are left to read as zeros (`lazy_itable_init`, `lazy_journal_init`):
    /// the file is new, so its holes are zeros (RootEncryption explains why they need no encryption).
    public func makeFilesystem(path: String, size: UInt64, tree: String) throws {
        let blocks = size / UInt64(blockSize)
        let created = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard created >= 0 else { throw GeneralError.io("create", path: path, errno: errno) }
        guard ftruncate(created, off_t(size)) == 0 else {
            let code = errno
            close(created)
            throw GeneralError.io("size", path: path, errno: code)
        }
        close(created)
        // MKE2FS_CONFIG=/dev/null: the features below are the whole configuration, whatever the host's mke2fs.conf says.
        let arguments = [
            "-q", "-F", "-t", "ext4", "-b", String(blockSize),
            "-O", "has_journal,ext_attr,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize,^resize_inode",
            "-I", "256", "-i", "16384",
            "-L", label, "-U", uuid.description,
            "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard,hash_seed=\(hashSeed.description)",
            "-d", tree, path, String(blocks),
        ]
        do {
            try ExternalTool.mke2fs.run(arguments, environment: environment)
        } catch GeneralError.toolFailed(_, _, let stderr) where stderr.contains("Could not allocate block")
                    || stderr.contains("Could not allocate inode") || stderr.contains("No space left") {
            throw ImageBuildError.treeTooLarge(partition: size)
        }
    }

    /// `debugfs -w`: applies what the tree could not carry (and, with a timestamp, fixes every inode's times).
    public func edit(path: String, tree: String, debugfsCommands: [String]) throws {
        let debugfsCommands = (timestamp.map { Self.normalizedTimes(tree: tree, epoch: $0) } ?? []) + debugfsCommands
        guard !debugfsCommands.isEmpty else { return }
        let script = path + ".debugfs"
        try Data((debugfsCommands.joined(separator: "\n") + "\n").utf8).write(to: URL(fileURLWithPath: script))
        defer { unlink(script) }
        let output = try ExternalTool.debugfs.run(["-w", "-f", script, path], environment: environment)
        // debugfs reports failed commands on stderr but still exits 0.
        let problems = output.stderrText.split(separator: "\n").filter { !$0.hasPrefix("debugfs ") && !$0.isEmpty }
        if let first = problems.first {
            throw GeneralError.toolFailed("debugfs", status: 0, stderr: String(first))
        }
    }
}

extension Ext4Builder {
    /// The blocks that hold a file's data, in file order (`debugfs blocks`).
    public func blocks(of file: String, path: String) throws -> [UInt64] {
        let output = try ExternalTool.debugfs.run(["-R", "blocks \(RootTree.debugfsQuoted(file))", path], environment: environment)
        return output.stdoutText.split(whereSeparator: { $0 == " " || $0 == "\n" }).compactMap { UInt64($0) }
    }

    /// libeatmydata (Debian's `libeatmydata1`), preloaded into mke2fs and debugfs when installed: it turns
    /// their fsync calls into no-ops. Their output is a scratch file that is read once and deleted, so its
    /// durability is worthless, while mke2fs's closing fsync would write the whole filesystem to disk once
    /// more before the encrypted copy (the one that is kept, and flushed) is even made.
    static let noSyncLibrary: String? = RuntimeFile.eatmydata.path

    /// For reproducible builds: debugfs commands that give every inode of the tree mtime, atime and ctime
    /// equal to its mtime clamped to `epoch`. mke2fs -d copies all three from the source, but reading the
    /// tree updates its atimes and a fresh extraction its ctimes, so two builds of one tree would differ.
    static func normalizedTimes(tree: String, epoch: Int64) -> [String] {
        var commands: [String] = []
        func add(_ relative: String, _ info: stat) {
            let time = min(Int64(info.st_mtim.tv_sec), epoch)
            let quoted = RootTree.debugfsQuoted("/" + relative)
            for field in ["mtime", "atime", "ctime"] { commands.append("set_inode_field \(quoted) \(field) @\(time)") }
        }
        var info = stat()
        if lstat(tree, &info) == 0 { add("", info) }
        let enumerator = FileManager.default.enumerator(atPath: tree)
        while let relative = enumerator?.nextObject() as? String {
            if lstat(tree + "/" + relative, &info) == 0 { add(relative, info) }
        }
        return commands
    }
}
