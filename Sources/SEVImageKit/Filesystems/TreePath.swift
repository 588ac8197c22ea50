import Foundation

/// Reads paths inside a root tree the way the booted system will see them: a symlink is resolved against
/// the tree's root (an absolute target such as `/boot/vmlinuz-6.1` means the tree's `/boot`), and no step
/// ever leaves the tree. The tree comes from a stranger: a `boot -> /boot` or `etc/crypttab -> /etc/shadow`
/// must never make sevimage read the host's files.
enum TreePath {
    /// How many symlinks one lookup may follow (Linux's limit).
    static let maximumLinks = 40

    /// The path of `relative` inside `tree` with every symlink resolved inside the tree (components that do
    /// not exist are kept as they are), as a path under `tree`; nil when the lookup loops.
    static func resolve(_ relative: String, in tree: String) -> String? {
        var done: [String] = []
        var pending = components(relative).reversed() as [String]
        var links = 0
        while let component = pending.popLast() {
            if component == ".." {
                if !done.isEmpty { done.removeLast() }
                continue
            }
            let candidate = tree + "/" + (done + [component]).joined(separator: "/")
            var info = stat()
            if lstat(candidate, &info) == 0, info.st_mode & S_IFMT == S_IFLNK {
                links += 1
                guard links <= maximumLinks, let target = try? FileManager.default.destinationOfSymbolicLink(atPath: candidate) else { return nil }
                if target.hasPrefix("/") { done = [] }
                pending += components(target).reversed()
                continue
            }
            done.append(component)
        }
        return done.isEmpty ? tree : tree + "/" + done.joined(separator: "/")
    }

    /// What `relative` is inside the tree once resolved: its `lstat`, or nil when it does not exist.
    static func status(_ relative: String, in tree: String) -> stat? {
        guard let path = resolve(relative, in: tree) else { return nil }
        var info = stat()
        return lstat(path, &info) == 0 ? info : nil
    }

    static func isRegularFile(_ relative: String, in tree: String) -> Bool {
        status(relative, in: tree).map { $0.st_mode & S_IFMT == S_IFREG } ?? false
    }

    static func isDirectory(_ relative: String, in tree: String) -> Bool {
        status(relative, in: tree).map { $0.st_mode & S_IFMT == S_IFDIR } ?? false
    }

    static func exists(_ relative: String, in tree: String) -> Bool { status(relative, in: tree) != nil }

    /// The names in a directory of the tree (empty when it is missing or not a directory).
    static func contents(ofDirectory relative: String, in tree: String) -> [String] {
        guard isDirectory(relative, in: tree), let path = resolve(relative, in: tree) else { return [] }
        return (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
    }

    /// Opens a regular file of the tree for reading; the last step refuses a symlink (`O_NOFOLLOW`), so a link
    /// swapped in after the resolution fails instead of leading out.
    static func openFile(_ relative: String, in tree: String) throws -> Int32 {
        guard let path = resolve(relative, in: tree), isRegularFile(relative, in: tree) else {
            throw RootTreeError.unreadable("/" + components(relative).joined(separator: "/"), reason: "not a regular file inside the tree")
        }
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)
        guard fd >= 0 else { throw RootTreeError.unreadable(path, reason: errnoDescription(errno)) }
        return fd
    }

    /// A small text file of the tree (nil when it does not exist or holds more than `limit` bytes).
    static func readText(_ relative: String, in tree: String, limit: Int = 1 << 20) -> String? {
        guard let fd = try? openFile(relative, in: tree) else { return nil }
        let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
        guard let data = try? handle.read(upToCount: limit + 1), data.count <= limit else { return nil }
        return String(decoding: data, as: UTF8.self)
    }

    private static func components(_ path: String) -> [String] {
        path.split(separator: "/").map(String.init).filter { $0 != "." && !$0.isEmpty }
    }
}
