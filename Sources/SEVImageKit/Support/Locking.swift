import Foundation

/// An exclusive claim on an output path for the length of one `create`, so that two processes writing the
/// same output cannot interleave: the second fails at once with `GeneralError.locked` (exit status 3).
///
///     out/.vm.qcow2.sevimage-lock     flock(LOCK_EX) by the running process; removed when it ends
///     out/vm.qcow2                    if it exists (a --force run replaces it): flock(LOCK_EX) as well,
///                                     the lock `rotate`/`reencrypt`/`keys` take on an image (Keys/ImageLock)
///
/// The lock file is unlinked on release. A process that opened it just before the unlink holds a lock on
/// a file that no longer has the name, so every holder checks, after locking, that the name still leads
/// to its inode, and starts over if not. A SIGKILL'ed process leaves the file behind; its lock died with
/// it, and the next run takes the file over. Owns its descriptors; not `Sendable`.
public final class OutputLock {
    public let output: String
    public let lockPath: String
    private var fd: Int32 = -1
    private var imageFD: Int32 = -1

    public init(output: String) throws {
        self.output = output
        let directory = PathName.directory(of: output)
        let parent = directory.isEmpty ? "." : directory
        lockPath = parent + "/." + PathName.name(of: output) + ".sevimage-lock"
        for _ in 0..<20 {
            let candidate = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
            guard candidate >= 0 else {
                switch errno {
                case ENOENT, ENOTDIR: throw GeneralError.invalidArgument("output directory \(parent) does not exist")
                case EACCES, EPERM, EROFS: throw GeneralError.invalidArgument("output directory \(parent) is not writable")
                case ELOOP: throw GeneralError.invalidArgument("\(lockPath) is a symbolic link; remove it")
                default: throw GeneralError.io("create the lock file", path: lockPath, errno: errno)
                }
            }
            if flock(candidate, LOCK_EX | LOCK_NB) != 0 {
                let code = errno
                close(candidate)
                if code == EWOULDBLOCK { throw GeneralError.locked(output) }
                throw GeneralError.io("lock", path: lockPath, errno: code)
            }
            var held = stat(), named = stat()
            if fstat(candidate, &held) == 0, lstat(lockPath, &named) == 0, held.st_ino == named.st_ino, held.st_dev == named.st_dev {
                fd = candidate
                break
            }
            close(candidate)  // the previous holder removed the name after we opened it: try again
        }
        guard fd >= 0 else { throw GeneralError.locked(output) }
        Cleanup.shared.register(lockPath)
        // An existing image may be in the middle of a key operation (which flocks the image itself).
        let existing = open(output, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)
        if existing >= 0 {
            var info = stat()
            if fstat(existing, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG, flock(existing, LOCK_EX | LOCK_NB) != 0, errno == EWOULDBLOCK {
                close(existing)
                release()
                throw GeneralError.locked(output)
            }
            imageFD = existing
        }
    }

    /// Removes the lock file and drops the locks (also done on release of the value).
    public func release() {
        if fd >= 0 {
            unlink(lockPath)
            Cleanup.shared.unregister(lockPath)
            close(fd)
            fd = -1
        }
        if imageFD >= 0 {
            close(imageFD)
            imageFD = -1
        }
    }

    deinit { release() }
}

/// Who owns a private work directory (a `TemporaryDirectory`), so that a later run can tell a live
/// run's directory from one a killed run left behind.
///
///     .sevimage-XXXXXX/owner       "pid\noutput\n", flock(LOCK_EX) by the owner for as long as it lives
///     .sevimage-XXXXXX/published   publish journal (PublishJournal), in directories that publish outputs
///
/// A SIGKILL runs no handler: the directory stays, but the owner's lock goes with the process. The next
/// `create` into the same directory calls `reapStale`, which takes the lock of each such directory's
/// owner file; when it succeeds the owner is dead, its half-published outputs are rolled back and the
/// directory removed. Directories without an owner file (a run killed between `mkdtemp` and the claim)
/// are removed once they are a minute old.
public enum WorkDirectory {
    static let ownerFile = "owner"

    /// Creates the owner file and locks it; returns the descriptor to keep open (or -1 if that failed).
    public static func claim(_ directory: String, output: String) -> Int32 {
        let path = directory + "/" + ownerFile
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { return -1 }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            return -1
        }
        let text = Array("\(getpid())\n\(absolutePath(output))\n".utf8)
        _ = text.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        return fd
    }

    /// The output a work directory's owner was making, and whether the owner still runs.
    static func owner(of directory: String) -> (output: String?, alive: Bool)? {
        let fd = open(directory + "/" + ownerFile, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        let alive = flock(fd, LOCK_SH | LOCK_NB) != 0
        var bytes = [UInt8](repeating: 0, count: 8192)
        let n = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        let lines = String(decoding: bytes.prefix(max(n, 0)), as: UTF8.self).split(separator: "\n", maxSplits: 1)
        let output = lines.count > 1 ? String(lines[1]).trimmingSuffixNewline : nil
        return (output, alive)
    }

    /// Removes the work directories of dead runs beside `output`, rolling back what they half-published.
    /// Returns the directories removed.
    @discardableResult
    public static func reapStale(near output: String, minimumAgeWithoutOwner: TimeInterval = 60) -> [String] {
        let directory = PathName.directory(of: output)
        let parent = directory.isEmpty ? "." : directory
        var removed: [String] = []
        let names = (try? FileManager.default.contentsOfDirectory(atPath: parent)) ?? []
        // Lock files of runs that died: nobody holds their lock. Whoever opens one just before the unlink
        // sees, after locking, that the name no longer leads to it, and starts over (OutputLock.init).
        for name in names where name.hasPrefix(".") && name.hasSuffix(".sevimage-lock") {
            let path = parent + "/" + name
            let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)
            guard fd >= 0 else { continue }
            if flock(fd, LOCK_EX | LOCK_NB) == 0 { unlink(path) }
            close(fd)
        }
        for name in names where isWorkDirectoryName(name) {
            let path = parent + "/" + name
            var info = stat()
            guard lstat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR, info.st_uid == geteuid() || geteuid() == 0 else { continue }
            if let owner = owner(of: path) {
                if owner.alive { continue }
            } else {
                // Only create's own directories are old enough to judge by age alone.
                guard name.hasPrefix(".sevimage-"), Date().timeIntervalSince1970 - Double(info.st_mtim.tv_sec) >= minimumAgeWithoutOwner else { continue }
            }
            finish(path)
            if (try? FileManager.default.removeItem(atPath: path)) != nil { removed.append(path) }
        }
        if !removed.isEmpty { try? OutputFiles.syncDirectory(of: output) }
        return removed
    }

    /// `.sevimage-XXXXXX`, `.sevimage-grub-XXXXXX`, `.vm.qcow2.sevimage-keys-XXXXXX`: what `TemporaryDirectory` makes.
    static func isWorkDirectoryName(_ name: String) -> Bool {
        guard name.hasPrefix("."), name.contains("sevimage"), let dash = name.lastIndex(of: "-") else { return false }
        return name.distance(from: dash, to: name.endIndex) == 7
    }

    /// Called before a work directory is removed: if it holds a publish journal whose run did not put its
    /// main output in place, the files it published are removed and the ones it replaced are put back.
    public static func finish(_ directory: String) {
        guard let journal = PublishJournal.load(directory) else { return }
        if journal.isComplete { return }
        var changed = false
        for entry in journal.entries.reversed() {
            if PublishJournal.identity(of: entry.final) == entry.identity {
                unlink(entry.final)
                changed = true
            }
            if let backup = entry.backup, PublishJournal.identity(of: entry.final) == nil,
               rename(directory + "/" + backup, entry.final) == 0 {
                changed = true
            }
        }
        if changed, let output = journal.output { try? OutputFiles.syncDirectory(of: output) }
    }
}

/// A write-ahead record of the files a run publishes from its work directory, so that a run that dies
/// between its first and its last publish can be rolled back (by its own cleanup, or by `reapStale`).
///
/// Before each link or rename, `OutputFiles.publish` appends one line (JSON: the temporary file's device
/// and inode, which the published name keeps, the final path, and the name of a hard link to the file
/// it replaces, if any) and fsyncs it. The run is complete when its main output (from the owner file)
/// carries the inode recorded for it; otherwise every final that still carries a recorded inode is
/// removed, and replaced files come back where nothing else took their name.
public struct PublishJournal {
    static let fileName = "published"

    struct Entry: Codable {
        var device: UInt64
        var inode: UInt64
        var final: String
        var backup: String?
        var identity: [UInt64] { [device, inode] }
    }

    var output: String?
    var entries: [Entry]

    /// Starts journaling publishes from `directory` (a `TemporaryDirectory` made for `output`).
    public static func begin(in directory: String) throws {
        let path = directory + "/" + fileName
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw GeneralError.io("create", path: path, errno: errno) }
        close(fd)
    }

    static func load(_ directory: String) -> PublishJournal? {
        guard let data = FileManager.default.contents(atPath: directory + "/" + fileName) else { return nil }
        let decoder = JSONDecoder()
        let entries = data.split(separator: 0x0A).compactMap { try? decoder.decode(Entry.self, from: Data($0)) }
        return PublishJournal(output: WorkDirectory.owner(of: directory)?.output, entries: entries)
    }

    var isComplete: Bool {
        guard let output else { return true }  // no owner record: never remove what may be a finished run's
        return entries.contains { $0.final == output && Self.identity(of: output) == $0.identity }
    }

    static func identity(of path: String) -> [UInt64]? {
        var info = stat()
        guard lstat(path, &info) == 0 else { return nil }
        return [UInt64(info.st_dev), UInt64(info.st_ino)]
    }

    /// Records that `temporary` is about to become `final` (called by `OutputFiles.publish`); a no-op
    /// unless `temporary` lies in a journaled work directory. With `replace`, an existing final is kept
    /// as a hard link in the work directory until the run completes.
    static func record(temporary: String, final: String, replace: Bool) throws {
        let directory = PathName.directory(of: temporary)
        let path = directory + "/" + fileName
        guard identity(of: path) != nil, let source = identity(of: temporary) else { return }
        var entry = Entry(device: source[0], inode: source[1], final: absolutePath(final), backup: nil)
        if replace, identity(of: final) != nil {
            let backup = "replaced-\(UUID().uuidString.prefix(8))"
            if link(final, directory + "/" + backup) == 0 { entry.backup = backup }
        }
        var line = try JSONEncoder().encode(entry)
        line.append(0x0A)
        let fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { throw GeneralError.io("open", path: path, errno: errno) }
        defer { close(fd) }
        let written = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard written == line.count else { throw GeneralError.io("write", path: path, errno: written < 0 ? errno : ENOSPC) }
        guard fsync(fd) == 0 else { throw GeneralError.io("flush", path: path, errno: errno) }
    }
}

/// `path` from the root, so that a journal means the same in a process with another working directory.
func absolutePath(_ path: String) -> String {
    path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
}

private extension String {
    var trimmingSuffixNewline: String { hasSuffix("\n") ? String(dropLast()) : self }
}
