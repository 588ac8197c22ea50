import Foundation

/// What the root ext4 of one `--size` can hold, so that a tree too large or with too many entries is refused
/// with exit 2 and the `--size` it needs, before mke2fs runs out ("Could not allocate block/inode") and, for a
/// tarball, before the data of the entry that does not fit is written (a 116 KB `.tar.zst` can declare 500 MB).
///
/// The figures follow `Ext4Builder`'s mke2fs options: one inode per 16 KiB (`-i 16384`), of which the first
/// 11 are reserved (the tree's root is inode 2, lost+found 11); metadata takes the inode tables (1/64), the
/// journal (up to 1/64, at most 128 MiB), bitmaps and slack (8 MiB); each file's data takes whole 4 KiB blocks.
public struct RootFilesystemRoom: Sendable, Equatable {
    /// Bytes of the ext4 filesystem.
    public var size: UInt64
    /// Disk bytes around it (ESP, GPT, LUKS header, alignment): `--size` minus `size`.
    public var overhead: UInt64

    public static let bytesPerInode: UInt64 = 16384
    public static let blockSize: UInt64 = 4096
    /// Inodes the tree cannot use: the reserved ones, and a margin for mke2fs's rounding.
    static let unusableInodes: UInt64 = 16

    public init(size: UInt64, diskSize: UInt64) {
        self.size = size
        overhead = diskSize > size ? diskSize - size : 0
    }

    /// `bytes` rounded up to whole blocks.
    public static func blocks(_ bytes: UInt64) -> UInt64 {
        bytes.checkedAdding(blockSize - 1).map { $0 / blockSize * blockSize } ?? .max
    }

    /// Inodes the tree may use in a filesystem of `size` bytes.
    static func inodes(_ size: UInt64) -> UInt64 {
        let all = size / bytesPerInode
        return all > unusableInodes ? all - unusableInodes : 0
    }

    /// Bytes needed for `blockBytes` of data blocks and `inodes` entries in a filesystem of `size` bytes.
    static func needed(blockBytes: UInt64, inodes: UInt64, size: UInt64) -> UInt64 {
        let metadata = size / 64 + min(size / 64, 128 << 20) + (8 << 20)
        return blockBytes.checkedAdding(inodes.checkedMultiplied(by: blockSize / 4) ?? .max).flatMap { $0.checkedAdding(metadata) } ?? .max
    }

    static func fits(blockBytes: UInt64, inodes: UInt64, size: UInt64) -> Bool {
        inodes <= Self.inodes(size) && needed(blockBytes: blockBytes, inodes: inodes, size: size) <= size
    }

    /// Refuses, with the `--size` that would do, a tree of `blockBytes` data (whole blocks) and `inodes` entries;
    /// `complete` false: the figures are a lower bound (a tarball read only in part).
    public func check(blockBytes: UInt64, inodes: Int, complete: Bool = true) throws {
        let count = UInt64(max(0, inodes))
        guard !Self.fits(blockBytes: blockBytes, inodes: count, size: size) else { return }
        let suggested = suggestedDiskSize(blockBytes: blockBytes, inodes: count)
        if count > Self.inodes(size) {
            throw ImageBuildError.tooManyEntries(entries: inodes, available: Int(Self.inodes(size)), suggestedSize: suggested,
                                                 complete: complete)
        }
        throw ImageBuildError.treeLargerThanPartition(needed: Self.needed(blockBytes: blockBytes, inodes: count, size: size),
                                                      available: size, suggestedSize: suggested, complete: complete)
    }

    /// The smallest `--size`, in whole 16 MiB, whose root filesystem holds the tree (nil beyond 16 EiB).
    func suggestedDiskSize(blockBytes: UInt64, inodes: UInt64) -> UInt64? {
        let step: UInt64 = 16 << 20
        var low = size / step, high = max(low, 1)
        while !Self.fits(blockBytes: blockBytes, inodes: inodes, size: high * step) {
            guard high < UInt64(1) << 43 else { return nil }
            low = high
            high *= 2
        }
        while low + 1 < high {
            let middle = low + (high - low) / 2
            if Self.fits(blockBytes: blockBytes, inodes: inodes, size: middle * step) { high = middle } else { low = middle }
        }
        return (high * step).checkedAdding(overhead).map { ($0 + step - 1) / step * step }
    }
}
