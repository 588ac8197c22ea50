import Foundation

// Linux fcntl commands for open-file-description locks (fcntl.h); Glibc does not export them to Swift.
private let F_OFD_GETLK: Int32 = 36

/// An exclusive hold on an image for the length of a key operation.
///
/// Two locks are checked: our own `flock` (another sevimage process on the same image is a conflict),
/// and QEMU's image locks, which are open-file-description byte locks (`F_OFD_SETLK`) on the image file:
/// any such lock held by another process means a VM has the image open. The image must also be writable:
/// a file without write permission bits or on a read-only mount is refused before anything is written.
/// Owns the descriptor; the lock goes with `deinit` (or the process).
public final class ImageLock {
    public let path: String
    private let fd: Int32

    public init(image path: String, exclusive: Bool = true) throws {
        self.path = path
        var info = stat()
        guard stat(path, &info) == 0 else {
            if errno == ENOENT { throw GeneralError.invalidArgument("image \(path) does not exist") }
            throw GeneralError.io("read", path: path, errno: errno)
        }
        guard (info.st_mode & S_IFMT) == S_IFREG else {
            throw GeneralError.invalidArgument("image \(path) is not a regular file")
        }
        if exclusive {
            if info.st_mode & (S_IWUSR | S_IWGRP | S_IWOTH) == 0 {
                throw KeysError.readOnly(path, "mode \(String(info.st_mode & 0o777, radix: 8)); chmod u+w it to allow the change")
            }
            var fs = statvfs()
            if statvfs(path, &fs) == 0, fs.f_flag & UInt(ST_RDONLY) != 0 {
                throw KeysError.readOnly(path, "its filesystem is mounted read-only")
            }
        }
        let fd = open(path, (exclusive ? O_RDWR : O_RDONLY) | O_CLOEXEC)
        guard fd >= 0 else {
            if errno == EACCES || errno == EROFS || errno == EPERM { throw KeysError.readOnly(path, errnoDescription(errno)) }
            throw GeneralError.io("open", path: path, errno: errno)
        }
        self.fd = fd
        if flock(fd, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) != 0 {
            let code = errno
            close(fd)
            if code == EWOULDBLOCK { throw GeneralError.locked(path) }
            throw GeneralError.io("lock", path: path, errno: code)
        }
        var probe = flock()
        probe.l_type = Int16(exclusive ? F_WRLCK : F_RDLCK)
        probe.l_whence = Int16(SEEK_SET)
        probe.l_start = 0
        probe.l_len = 0
        if fcntl(fd, F_OFD_GETLK, &probe) == 0, probe.l_type != Int16(F_UNLCK) {
            close(fd)
            throw KeysError.inUseByQEMU(path)
        }
    }

    deinit { close(fd) }
}
