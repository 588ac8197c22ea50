import Foundation

/// Builds the root ext4 filesystem into a plain file, without mounting: `mke2fs -d` copies the tree,
/// then `debugfs -w` applies what the tree could not carry (ownership from a tarball, device nodes,
/// a generated `/boot/grub/grub.cfg`).
public struct Ext4Builder {
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

    /// Creates `path` (`size` bytes, sparse) holding `tree`, then runs the `debugfs` commands.
    ///
    /// Inode tables and the journal are left to read as zeros (`lazy_itable_init`, `lazy_journal_init`):
    /// the file is new, so its holes are zeros; the encryption step writes them as encrypted zeros.
    public func build(path: String, size: UInt64, tree: String, debugfsCommands: [String]) throws {
        let blocks = size / UInt64(blockSize)
        var environment: [String: String] = ["MKE2FS_CONFIG": "/dev/null"]
        if let timestamp { environment["E2FSPROGS_FAKE_TIME"] = String(timestamp) }
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
            "-O", "has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize,^resize_inode",
            "-I", "256", "-i", "16384",
            "-L", label, "-U", uuid.description,
            "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard,hash_seed=\(hashSeed.description)",
            "-d", tree, path, String(blocks),
        ]
        do {
            try ExternalTool.mke2fs.run(arguments, environment: environment)
        } catch GeneralError.toolFailed(_, _, let stderr) where stderr.contains("Could not allocate block") || stderr.contains("No space left") {
            throw ImageBuildError.treeTooLarge(partition: size)
        }
        if !debugfsCommands.isEmpty {
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
}

/// What an ext4 file system's superblock and group descriptors say about where its metadata lives.
///
/// Read field by field (little-endian, offsets from the kernel's `struct ext4_super_block` and
/// `struct ext4_group_desc`).
public struct Ext4Layout: Sendable {
    public let blockSize: UInt64
    public let blockCount: UInt64
    public let freeBlocks: UInt64
    public let inodesPerGroup: UInt32
    public let inodeSize: UInt32
    public let uuid: GUID
    /// Block ranges of every group's inode table.
    public let inodeTables: [Range<UInt64>]

    public init(path: String) throws {
        let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        try handle.seek(toOffset: 1024)
        let sb = [UInt8](try handle.read(upToCount: 1024) ?? Data())
        guard sb.count == 1024, le16(sb, 0x38) == 0xEF53 else {
            throw ImageBuildError.notExt4(path)
        }
        blockSize = 1024 << UInt64(le32(sb, 0x18))
        let is64 = le32(sb, 0x60) & 0x80 != 0
        blockCount = UInt64(le32(sb, 0x04)) | (is64 ? UInt64(le32(sb, 0x150)) << 32 : 0)
        freeBlocks = UInt64(le32(sb, 0x0C)) | (is64 ? UInt64(le32(sb, 0x158)) << 32 : 0)
        let firstDataBlock = UInt64(le32(sb, 0x14))
        let blocksPerGroup = UInt64(le32(sb, 0x20))
        inodesPerGroup = le32(sb, 0x28)
        inodeSize = UInt32(le16(sb, 0x58))
        uuid = GUID(bytes: Array(sb[0x68..<0x78]))
        let descriptorSize = is64 ? UInt64(le16(sb, 0xFE)) : 32
        guard blockSize <= 65536, blocksPerGroup > 0, descriptorSize >= 32, inodeSize >= 128 else { throw ImageBuildError.notExt4(path) }
        let groups = (blockCount - firstDataBlock + blocksPerGroup - 1) / blocksPerGroup
        let tableBlocks = (UInt64(inodesPerGroup) * UInt64(inodeSize) + blockSize - 1) / blockSize
        try handle.seek(toOffset: (firstDataBlock + 1) * blockSize)
        let descriptors = [UInt8](try handle.read(upToCount: Int(groups * descriptorSize)) ?? Data())
        guard descriptors.count == Int(groups * descriptorSize) else { throw ImageBuildError.notExt4(path) }
        inodeTables = (0..<Int(groups)).map { group in
            let base = group * Int(descriptorSize)
            var start = UInt64(le32(descriptors, base + 0x08))
            if descriptorSize >= 64 { start |= UInt64(le32(descriptors, base + 0x28)) << 32 }
            return start..<(start + tableBlocks)
        }
    }
}

@inline(__always) func le16(_ b: [UInt8], _ o: Int) -> UInt16 { UInt16(b[o]) | UInt16(b[o + 1]) << 8 }
@inline(__always) func le32(_ b: [UInt8], _ o: Int) -> UInt32 {
    UInt32(b[o]) | UInt32(b[o + 1]) << 8 | UInt32(b[o + 2]) << 16 | UInt32(b[o + 3]) << 24
}
