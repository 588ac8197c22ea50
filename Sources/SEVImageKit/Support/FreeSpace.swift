import Foundation

/// Room on the filesystem a command writes its work files to, checked before it starts: `rotate` and `keys`
/// keep two copies of the 16 MiB LUKS header area beside the image while they work (the workspace and the
/// journal). Short of room, `rotate` used to fail halfway and leave a pending rotation it could not finish.
public enum FreeSpace {
    /// What `rotate`, `keys add` and `keys remove` need beside the image: two header areas and 2 MiB of slack
    /// (measured: a rotation needed more than 32,000 KiB).
    public static let headerUpdate: UInt64 = 2 * LUKSLayout.headerSize + (2 << 20)

    /// Bytes an unprivileged process may still write in `directory`'s filesystem.
    public static func available(in directory: String) throws -> UInt64 {
        var info = statvfs()
        guard statvfs(directory, &info) == 0 else { throw GeneralError.io("read the free space of", path: directory, errno: errno) }
        return UInt64(info.f_bavail).multipliedReportingOverflow(by: UInt64(info.f_frsize)).overflow
            ? .max : UInt64(info.f_bavail) * UInt64(info.f_frsize)
    }

    /// Refuses, before anything is written, when `directory` has less than `bytes` free.
    public static func require(_ bytes: UInt64, in directory: String, for command: String, why: String) throws {
        let free = try available(in: directory)
        guard free >= bytes else {
            throw GeneralError.notEnoughSpace(directory, command: command, needed: bytes, available: free, why: why)
        }
    }
}
