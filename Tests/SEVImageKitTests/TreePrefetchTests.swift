import Foundation
import Testing
@testable import SEVImageKit

/// The tree prefetch walks in mke2fs's order and leaves the page cache as it found it.
@Suite struct TreePrefetchTests {
    /// Files of `tree` (relative paths) in the order `TreeWalk` gives them.
    func walkOrder(_ tree: String) -> [String] {
        var walk = TreeWalk(root: tree), order: [String] = []
        while let (path, _) = walk.next() { order.append(String(path.dropFirst(tree.count + 1))) }
        return order
    }

    /// mke2fs numbers inodes in the order it copies files, so the regular files sorted by inode number are its
    /// order (read back with debugfs); names chosen where byte order, full-path order and locales disagree.
    @Test(.enabled(if: hasTool("mke2fs") && hasTool("debugfs"))) func walksInMke2fsOrder() throws {
        let scratch = try Scratch()
        let tree = scratch.file("tree")
        let files = ["a/b", "a-c", "a/a/z", "B", "b", "\u{E4}", "Z", "_x", "a0/q", "aa", "A/x", "A/Y", "a b"]
        for file in files {
            let path = tree + "/" + file
            try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try Data(file.utf8).write(to: URL(fileURLWithPath: path))
        }
        let image = scratch.file("fs.ext4")
        try runChecked("truncate", ["-s", "64M", image])
        try ExternalTool.mke2fs.run(["-q", "-F", "-t", "ext4", "-d", tree, image])
        var byInode: [(Int, String)] = []
        for file in files {
            let stat = try runChecked("debugfs", ["-R", "stat \"/\(file)\"", image]).stdout
            let inode = try #require(stat.split(separator: " ").dropFirst().first.flatMap { Int($0.filter(\.isNumber)) })
            byInode.append((inode, file))
        }
        #expect(walkOrder(tree) == byInode.sorted { $0.0 < $1.0 }.map(\.1))
    }

    /// A tree of `count` 2 MiB files (half of them in a subdirectory), out of the page cache; relative paths in
    /// the walk's order.
    func coldTree(_ tree: String, count: Int = 10) throws -> [String] {
        try FileManager.default.createDirectory(atPath: tree + "/d", withIntermediateDirectories: true)
        let names = (0..<count).map { String(format: $0 < count / 2 ? "d/f%02d" : "f%02d", $0) }
        for name in names {
            let path = tree + "/" + name
            try Data(randomBytes(2 << 20)).write(to: URL(fileURLWithPath: path))
            let fd = open(path, O_RDONLY)
            fsync(fd)
            _ = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)
            close(fd)
        }
        return names
    }

    /// Reads the files in order as mke2fs does, each held open a moment; `check(index)` runs while file
    /// `index` is open.
    func read(_ tree: String, _ names: [String], check: (Int) throws -> Void = { _ in }) throws {
        for index in names.indices {
            let reading = try FileHandle(forReadingFrom: URL(fileURLWithPath: tree + "/" + names[index]))
            _ = try reading.readToEnd()
            try check(index)
            usleep(20_000)
            try reading.close()
        }
    }

    /// Waits (2 s at most) until `path` is out of the page cache.
    func dropped(_ path: String) throws -> Bool {
        for _ in 0..<200 {
            if try residentBytes(path) == 0 { return true }
            usleep(10_000)
        }
        return false
    }

    /// A cold tree: each file a reader (here this process, as mke2fs in `create`) has moved past is dropped
    /// from the page cache while it reads on, and none is left at the end.
    @Test func dropsAColdTreeBehindTheReader() throws {
        let scratch = try Scratch()
        let tree = scratch.file("tree")
        let names = try coldTree(tree)
        try #require(try residentBytes(tree + "/" + names[0]) == 0, "the test needs the tree out of the cache")
        let me = getpid()
        let prefetch = TreePrefetch(directory: tree, window: 4 << 20, readers: { [me] })
        defer { prefetch.finish() }
        try read(tree, names) { index in
            guard index > 0 else { return }
            let gone = try dropped(tree + "/" + names[index - 1])
            #expect(gone, "\(names[index - 1]) is still cached while \(names[index]) is read")
        }
        prefetch.finish()
        for name in names { #expect(try residentBytes(tree + "/" + name) == 0, "\(name) was left in the page cache") }
    }

    /// A tree found in the page cache stays there.
    @Test func keepsACachedTreeCached() throws {
        let scratch = try Scratch()
        let tree = scratch.file("tree")
        let names = try coldTree(tree)
        for name in names { _ = try Data(contentsOf: URL(fileURLWithPath: tree + "/" + name)) }
        let me = getpid()
        let prefetch = TreePrefetch(directory: tree, window: 4 << 20, readers: { [me] })
        try read(tree, names)
        prefetch.finish()
        for name in names { #expect(try residentBytes(tree + "/" + name) == 2 << 20, "\(name) was dropped") }
    }

    /// Bytes of `path` in the page cache (mincore).
    func residentBytes(_ path: String) throws -> Int {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw GeneralError.io("open", path: path, errno: errno) }
        defer { close(fd) }
        var info = stat()
        fstat(fd, &info)
        let size = Int(info.st_size)
        guard size > 0, let map = mmap(nil, size, PROT_READ, MAP_SHARED, fd, 0), map != MAP_FAILED else { return 0 }
        defer { munmap(map, size) }
        let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
        var vector = [UInt8](repeating: 0, count: (size + pageSize - 1) / pageSize)
        guard mincore(map, size, &vector) == 0 else { throw GeneralError.io("mincore", path: path, errno: errno) }
        return vector.reduce(0) { $0 + Int($1 & 1) } * pageSize
    }
}
