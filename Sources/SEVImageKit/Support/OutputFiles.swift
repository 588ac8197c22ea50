import Foundation

/// Puts finished files in place atomically: each file is fsync'ed before it is linked or renamed to its
/// final name, and the directory is fsync'ed after. Without `replace`, an existing file is never
/// overwritten (the link fails instead), so two runs racing for one output cannot both win.
public enum OutputFiles {
    public static func publish(_ temporary: String, as final: String, replace: Bool) throws {
        let fd = open(temporary, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw GeneralError.io("open", path: temporary, errno: errno) }
        let synced = fsync(fd)
        close(fd)
        guard synced == 0 else { throw GeneralError.io("flush", path: temporary, errno: errno) }
        try PublishJournal.record(temporary: temporary, final: final, replace: replace)
        FaultInjection.checkpoint("before publishing \(PathName.name(of: final))")
        if replace {
            guard rename(temporary, final) == 0 else { throw GeneralError.io("move into place", path: final, errno: errno) }
        } else {
            guard link(temporary, final) == 0 else {
                if errno == EEXIST { throw GeneralError.outputExists(final) }
                throw GeneralError.io("move into place", path: final, errno: errno)
            }
            unlink(temporary)
        }
        try syncDirectory(of: final)
        FaultInjection.checkpoint("published \(PathName.name(of: final))")
    }

    /// Creates `path` exclusively (never through a symlink) with `mode`, writes `bytes`, and fsyncs it;
    /// on any failure the partial file is removed. An existing path is `GeneralError.outputExists`.
    public static func writeNew(_ bytes: UnsafeRawBufferPointer, to path: String, mode: mode_t) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode)
        guard fd >= 0 else {
            if errno == EEXIST { throw GeneralError.outputExists(path) }
            throw GeneralError.io("create", path: path, errno: errno)
        }
        var failure: Int32 = 0
        var offset = 0
        while failure == 0 && offset < bytes.count {
            let n = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if n < 0 && errno == EINTR { continue }
            if n > 0 { offset += n } else { failure = n < 0 ? errno : EIO }
        }
        // fchmod: the umask must not loosen or tighten the mode a secret or a manifest needs.
        if failure == 0, fchmod(fd, mode) != 0 || fsync(fd) != 0 { failure = errno }
        close(fd)
        guard failure == 0 else {
            unlink(path)
            throw GeneralError.io("write", path: path, errno: failure)
        }
    }

    public static func syncDirectory(of path: String) throws {
        let directory = PathName.directory(of: path)
        let fd = open(directory.isEmpty ? "." : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw GeneralError.io("open", path: directory, errno: errno) }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw GeneralError.io("flush", path: directory, errno: errno) }
    }

    /// Refuses an output path that exists (unless `force`) or whose directory is missing or not writable.
    public static func checkWritable(_ path: String, force: Bool) throws {
        let directory = PathName.directory(of: path)
        let dir = directory.isEmpty ? "." : directory
        var info = stat()
        guard stat(dir, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else {
            throw GeneralError.invalidArgument("output directory \(dir) does not exist")
        }
        guard access(dir, W_OK) == 0 else {
            throw GeneralError.invalidArgument("output directory \(dir) is not writable")
        }
        if lstat(path, &info) == 0 {
            if (info.st_mode & S_IFMT) == S_IFDIR { throw GeneralError.invalidArgument("output \(path) is a directory") }
            if (info.st_mode & S_IFMT) == S_IFLNK { throw GeneralError.invalidArgument("output \(path) is a symbolic link; give the real path") }
            if !force { throw GeneralError.outputExists(path) }
        }
    }
}
