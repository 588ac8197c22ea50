import Foundation

/// Reads a root tree's files into the page cache just ahead of `mke2fs -d`, and drops them behind it.
///
/// Ahead: mke2fs reads the tree one file at a time, each read waiting for the disk, so a cold tree costs it
/// about twice the time the disk needs to deliver the same bytes with many requests in flight. A background
/// thread walks the tree the way mke2fs does (depth first, each directory's entries sorted by name:
/// e2fsprogs 1.47 lists them with `scandir` and `alphasort`, and runs with LC_ALL=C here) and gives each
/// regular file `posix_fadvise(WILLNEED)`, which queues its reads without waiting for them, staying at most
/// `window` bytes ahead of mke2fs. Measured on a cold 1 GiB tree: mke2fs 8.4 s without, 5.5 s with (then in
/// `readdir` order, which is not mke2fs's); in mke2fs's order a whole `create` took 3.6 s instead of 3.9 s.
///
/// Behind: once mke2fs has moved past a file (it has a later file of the walk open: `/proc/PID/fd` of the
/// children), the file's pages are dropped (`POSIX_FADV_DONTNEED`), unless the tree was found in the page
/// cache (most of its first files' first pages, asked with `mincore` before anything is read): a cached
/// tree stays cached for the next build, a cold one leaves the cache as it was found, and, more to the
/// point, the pages freed are the ones that mke2fs's scratch filesystem takes next. Fresh
/// pages can cost far more than reused ones: on a VM whose balloon gives freed memory back to the host (as
/// here), writing 1.1 GiB into pages the host has reclaimed took a second more (3 cold creates right after
/// 8 GiB were written and deleted: 2.95-3.27 s with the drops, 3.51-4.17 s without).
///
/// Failures are ignored: this only warms and cools the cache, mke2fs still reads and checks everything itself.
final class TreePrefetch: @unchecked Sendable {
    private let done = DispatchGroup()
    private let lock = NSLock()
    private var stopped = false
    private let window: UInt64
    private let readers: @Sendable () -> Set<Int32>

    /// Starts walking `directory` in the background, at most `window` bytes ahead of `readers` (the
    /// processes that read the tree: the children, mke2fs among them).
    init(directory: String, window: UInt64 = 256 << 20,
         readers: @escaping @Sendable () -> Set<Int32> = { ChildProcesses.shared.running }) {
        self.window = window
        self.readers = readers
        done.enter()
        let thread = Thread { [self] in
            run(directory)
            done.leave()
        }
        thread.name = "sevimage tree prefetch"
        thread.start()
    }

    /// Stops the walk (if still running), drops what is left of a cold tree (mke2fs is done, or abandoned),
    /// and waits for the thread to end. Safe to call more than once.
    func finish() {
        lock.withLock { stopped = true }
        done.wait()
    }

    private var isStopped: Bool { lock.withLock { stopped } }

    private func run(_ directory: String) {
        var walk = TreeWalk(root: directory)
        var issued: [(path: String, size: UInt64)] = []
        var first = 0  // issued[first...]: what mke2fs has not been seen to pass
        var positions: [String: Int] = [:]
        var ahead: UInt64 = 0
        func issue(_ path: String, _ size: UInt64) {
            positions[path] = issued.count
            issued.append((path, size))
            Self.advise(path, POSIX_FADV_WILLNEED)
            ahead += size
        }
        // Warm or cold: the first files, each looked at just before it is asked for (mke2fs is still setting up).
        var sampled = 0, cached = 0
        while sampled < 64, ahead < window, let (path, size) = walk.next() {
            if Self.firstPageIsCached(path) { cached += 1 }
            sampled += 1
            issue(path, size)
        }
        let keepCached = cached * 2 > sampled
        func dropPassed(upTo end: Int) {
            while first < end {
                let file = issued[first]
                if !keepCached { Self.advise(file.path, POSIX_FADV_DONTNEED) }
                positions[file.path] = nil
                ahead -= file.size
                first += 1
            }
            if first > 4096 {
                issued.removeFirst(first)
                positions = positions.mapValues { $0 - first }
                first = 0
            }
        }
        while !isStopped {
            if let position = readerPosition(in: positions), position > first { dropPassed(upTo: position) }
            var added = 0
            while ahead < window, added < 64, let (path, size) = walk.next() {
                issue(path, size)
                added += 1
            }
            if added == 0 { usleep(2000) }
        }
        dropPassed(upTo: issued.count)
    }

    /// Opens `path` and gives it `advice`.
    private static func advise(_ path: String, _ advice: Int32) {
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { return }
        _ = posix_fadvise(fd, 0, 0, advice)
        close(fd)
    }

    /// Whether the file's first page is in the page cache, without reading it (`mincore` on a mapping that is
    /// never touched). Linux answers only for files the caller owns or may write; for others it says no (a
    /// tree of such files counts as cold).
    private static func firstPageIsCached(_ path: String) -> Bool {
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        guard let map = mmap(nil, page, PROT_READ, MAP_SHARED, fd, 0), map != MAP_FAILED else { return false }
        defer { munmap(map, page) }
        var vector: UInt8 = 0
        return mincore(map, page, &vector) == 0 && vector & 1 == 1
    }

    /// The position, among the files walked, of the last one a reader (mke2fs) has open, if any.
    private func readerPosition(in positions: [String: Int]) -> Int? {
        var found: Int?
        var target = [UInt8](repeating: 0, count: Int(PATH_MAX))
        for pid in readers() {
            let directory = "/proc/\(pid)/fd"
            guard let handle = opendir(directory) else { continue }
            defer { closedir(handle) }
            while let entry = readdir(handle) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                let length = target.withUnsafeMutableBytes { readlink(directory + "/" + name, $0.baseAddress!, $0.count) }
                guard length > 0 else { continue }
                if let position = positions[String(decoding: target[0..<length], as: UTF8.self)] {
                    found = max(found ?? position, position)
                }
            }
        }
        return found
    }
}

/// The regular files of a tree (with their sizes) in mke2fs's order: depth first, each directory's entries
/// sorted by their bytes. Does not follow symlinks; goes 256 directories deep at most.
struct TreeWalk {
    private var levels: [(entries: [(path: String, type: Int32)], next: Int)]

    init(root: String) { levels = [(Self.entries(of: root), 0)] }

    mutating func next() -> (String, UInt64)? {
        while let level = levels.indices.last {
            guard levels[level].next < levels[level].entries.count else {
                levels.removeLast()
                continue
            }
            let entry = levels[level].entries[levels[level].next]
            levels[level].next += 1
            var info = stat()
            guard lstat(entry.path, &info) == 0 else { continue }
            switch info.st_mode & S_IFMT {
            case S_IFDIR where levels.count < 256:
                levels.append((Self.entries(of: entry.path), 0))
            case S_IFREG where info.st_size > 0:
                return (entry.path, UInt64(info.st_size))
            default:
                continue
            }
        }
        return nil
    }

    /// A directory's directories and regular files (and entries of unknown type), sorted by name.
    private static func entries(of directory: String) -> [(path: String, type: Int32)] {
        guard let handle = opendir(directory) else { return [] }
        defer { closedir(handle) }
        var entries: [(name: [UInt8], type: Int32)] = []
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in Array(raw.prefix { $0 != 0 }) }
            let type = Int32(entry.pointee.d_type)
            guard name != [0x2E], name != [0x2E, 0x2E], [DT_DIR, DT_REG, DT_UNKNOWN].map(Int32.init).contains(type) else { continue }
            entries.append((name, type))
        }
        return entries.sorted { $0.name.lexicographicallyPrecedes($1.name) }
            .map { (directory + "/" + String(decoding: $0.name, as: UTF8.self), $0.type) }
    }
}
