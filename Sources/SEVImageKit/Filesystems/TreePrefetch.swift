import Foundation

/// Asks the kernel to read a root tree's files into the page cache ahead of `mke2fs -d`.
///
/// mke2fs reads the tree one file at a time, each read waiting for the disk, so a cold tree costs it
/// about twice the time the disk needs to deliver the same bytes with many requests in flight. A
/// background thread walks the tree the way mke2fs does (depth first, each directory's entries sorted by
/// name: e2fsprogs 1.47 lists them with `scandir` and `alphasort`, and runs with LC_ALL=C here) and gives
/// each regular file `posix_fadvise(WILLNEED)`, which queues its reads without waiting for them; mke2fs
/// then finds most of its data already cached. Measured on a cold 1 GiB tree: 8.4 s without, 5.5 s with
/// (then in `readdir` order, which is not mke2fs's); in mke2fs's order a whole `create` of that tree took
/// 3.6 s instead of 3.9 s (medians of four cold runs).
///
/// It reads at most `budget` bytes ahead (a quarter of physical memory by default), so that a tree larger
/// than the cache does not push out what mke2fs is about to read. Failures are ignored: this only warms
/// the cache, mke2fs still reads and checks everything itself.
public final class TreePrefetch: @unchecked Sendable {
    private let done = DispatchGroup()
    private let lock = NSLock()
    private var stopped = false

    /// Starts walking `directory` in the background.
    public init(directory: String, budget: UInt64 = ProcessInfo.processInfo.physicalMemory / 4) {
        done.enter()
        let thread = Thread { [self] in
            var left = budget
            walk(directory, left: &left, depth: 0)
            done.leave()
        }
        thread.name = "sevimage tree prefetch"
        thread.qualityOfService = .utility
        thread.start()
    }

    /// Stops the walk (if still running) and waits for the thread to end.
    public func finish() {
        lock.withLock { stopped = true }
        done.wait()
    }

    private var isStopped: Bool { lock.withLock { stopped } }

    private func walk(_ directory: String, left: inout UInt64, depth: Int) {
        guard depth < 256, left > 0, !isStopped, let handle = opendir(directory) else { return }
        var entries: [(name: [UInt8], type: Int32)] = []
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in Array(raw.prefix { $0 != 0 }) }
            if name == [0x2E] || name == [0x2E, 0x2E] { continue }
            entries.append((name, Int32(entry.pointee.d_type)))
        }
        closedir(handle)
        for (name, type) in entries.sorted(by: { $0.name.lexicographicallyPrecedes($1.name) }) {
            let path = directory + "/" + String(decoding: name, as: UTF8.self)
            switch type {
            case Int32(DT_DIR):
                walk(path, left: &left, depth: depth + 1)
            case Int32(DT_REG):
                let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
                guard fd >= 0 else { continue }
                var info = stat()
                if fstat(fd, &info) == 0, info.st_size > 0 {
                    let size = UInt64(info.st_size)
                    _ = posix_fadvise(fd, 0, off_t(min(size, left)), POSIX_FADV_WILLNEED)
                    left -= min(size, left)
                }
                close(fd)
            default:
                continue
            }
            if left == 0 || isStopped { return }
        }
    }
}
