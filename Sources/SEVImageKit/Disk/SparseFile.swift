import Foundation

// Linux lseek whences (unistd.h); Glibc does not export them to Swift.
private let SEEK_DATA: Int32 = 3
private let SEEK_HOLE: Int32 = 4

/// An open file read and written by offset (pread/pwrite), with its data extents (SEEK_DATA/SEEK_HOLE).
///
/// Owns the descriptor and closes it in `deinit`. `@unchecked Sendable`: pread/pwrite on one
/// descriptor are safe from several threads, which the encryption step relies on.
public final class RawFile: @unchecked Sendable {
    public let path: String
    public let fd: Int32

    /// Opens an existing file.
    public init(path: String, writable: Bool) throws {
        self.path = path
        fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC)
        guard fd >= 0 else { throw GeneralError.io("open", path: path, errno: errno) }
    }

    /// Creates a new sparse file of `size` bytes (it must not exist).
    public init(creating path: String, size: UInt64) throws {
        self.path = path
        fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw GeneralError.io("create", path: path, errno: errno) }
        guard ftruncate(fd, off_t(size)) == 0 else { throw GeneralError.io("size", path: path, errno: errno) }
    }

    deinit { close(fd) }

    public var size: UInt64 {
        var info = stat()
        return fstat(fd, &info) == 0 ? UInt64(info.st_size) : 0
    }

    /// The byte ranges that hold data (everything else reads as zeros and takes no space), within `range`.
    public func dataExtents(in range: Range<UInt64>? = nil) throws -> [Range<UInt64>] {
        var extents: [Range<UInt64>] = []
        let end = off_t(min(size, range?.upperBound ?? .max))
        var position = off_t(range?.lowerBound ?? 0)
        while position < end {
            let start = lseek(fd, position, SEEK_DATA)
            if start < 0 {
                if errno == ENXIO { break }
                throw GeneralError.io("map the data of", path: path, errno: errno)
            }
            if start >= end { break }
            var stop = lseek(fd, start, SEEK_HOLE)
            if stop < 0 || stop > end { stop = end }
            extents.append(UInt64(start)..<UInt64(stop))
            position = stop
        }
        return extents
    }

    /// Reads `buffer.count` bytes at `offset`; past the end of the file that is an error, or zeros with `zerosPastEnd`.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64, zerosPastEnd: Bool = false) throws {
        var done = 0
        while done < buffer.count {
            let n = pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 && errno == EINTR { continue }
            if n == 0 && zerosPastEnd {
                UnsafeMutableRawBufferPointer(rebasing: buffer[done...]).initializeMemory(as: UInt8.self, repeating: 0)
                return
            }
            guard n > 0 else {
                if n == 0 { throw GeneralError.io("read (unexpected end of file)", path: path, errno: EIO) }
                throw GeneralError.io("read", path: path, errno: errno)
            }
            done += n
        }
    }

    /// Reads with a descriptor opened `O_DIRECT`: false (nothing guaranteed read) where the memory, the offset or
    /// the length is not 4096-aligned, the filesystem refuses direct I/O, or the file ends early; the caller then
    /// reads through the page cache.
    static func readDirect(_ fd: Int32, path: String, into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws -> Bool {
        guard Int(bitPattern: buffer.baseAddress) % 4096 == 0, offset % 4096 == 0, buffer.count % 4096 == 0 else { return false }
        var done = 0
        while done < buffer.count {
            let n = pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 && errno == EINTR { continue }
            if n < 0 && errno == EINVAL { return false }
            guard n >= 0 else { throw GeneralError.io("read", path: path, errno: errno) }
            if n == 0 { return false }
            done += n
        }
        return true
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        var done = 0
        while done < buffer.count {
            let n = pwrite(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw GeneralError.io("write", path: path, errno: errno) }
            done += n
        }
    }

    /// Gives the bytes of `range` back to the filesystem (they read as zeros afterwards); does nothing where the
    /// filesystem cannot. Freeing a work file's pages piece by piece costs less than freeing them all at its removal.
    public func punchHole(_ range: Range<UInt64>) {
        guard !range.isEmpty, let fallocate = GNUCalls.fallocate else { return }
        _ = fallocate(fd, GNUCalls.punchHoleKeepSize, off_t(range.lowerBound), off_t(range.count))
    }

    public func sync() throws {
        guard fsync(fd) == 0 else { throw GeneralError.io("flush", path: path, errno: errno) }
    }

    /// Copies this file's data extents (within `range`) into `target` at `targetOffset + (offset - range.lowerBound)`.
    public func copyData(in range: Range<UInt64>, to target: RawFile, at targetOffset: UInt64) throws {
        let chunk = 1 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buffer.deallocate() }
        for extent in try dataExtents() {
            var position = max(extent.lowerBound, range.lowerBound)
            let end = min(extent.upperBound, range.upperBound)
            while position < end {
                let count = Int(min(UInt64(chunk), end - position))
                let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count])
                try read(into: slice, at: position)
                try target.write(UnsafeRawBufferPointer(slice), at: targetOffset + position - range.lowerBound)
                position += UInt64(count)
            }
        }
    }
}

/// Merges overlapping or touching ranges into a sorted list.
func mergeRanges(_ ranges: [Range<UInt64>]) -> [Range<UInt64>] {
    var merged: [Range<UInt64>] = []
    for range in ranges.sorted(by: { $0.lowerBound < $1.lowerBound }) where !range.isEmpty { merged.appendMerging(range) }
    return merged
}

extension Array where Element == Range<UInt64> {
    /// Appends `range` (which starts no earlier than the last one), or extends the last range if they touch.
    mutating func appendMerging(_ range: Range<UInt64>) {
        if let last, range.lowerBound <= last.upperBound {
            self[count - 1] = last.lowerBound..<Swift.max(last.upperBound, range.upperBound)
        } else {
            append(range)
        }
    }
}

/// The largest file a directory's filesystem takes, found by sizing a sparse probe file (no data is written):
/// `create` builds the disk and the root filesystem as sparse files of nearly `--size` bytes beside the output,
/// so a `--size` beyond it (64T on ext4, whose files end at 16 TiB − 4 KiB) is refused before any work.
public enum HostFileLimit {
    /// Refuses `size` when a file of that many bytes cannot exist in `directory`, naming the largest `--size` that can.
    public static func check(size: UInt64, directory: String) throws {
        let probe = directory + "/size-probe"
        let fd = open(probe, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw GeneralError.io("create", path: probe, errno: errno) }
        defer { close(fd); unlink(probe) }
        func fits(_ bytes: UInt64) -> Bool { bytes <= UInt64(Int64.max) && ftruncate(fd, off_t(bytes)) == 0 }
        guard !fits(size) else { return }
        guard errno == EFBIG || errno == EINVAL else { throw GeneralError.io("size", path: probe, errno: errno) }
        // The largest whole MiB that fits, by bisection (a few dozen ftruncate calls).
        var low: UInt64 = 0, high = size >> 20
        while low + 1 < high {
            let middle = low + (high - low) / 2
            if fits(middle << 20) { low = middle } else { high = middle }
        }
        throw GeneralError.invalidArgument("a disk of \(formatSize(size)) is larger than the largest file the filesystem of \(PathName.directory(of: directory)) takes; give --size \(formatSize(low << 20)) or less there (ext4 files end at 16 TiB), or write the image to a filesystem such as XFS")
    }
}
