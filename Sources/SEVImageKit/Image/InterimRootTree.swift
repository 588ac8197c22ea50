import Foundation

// Interim: replaced by Filesystems/RootTree (tarballs, validation) once it lands.
struct InterimPreparedTree {
    var directory: String
    var debugfsCommands: [String]
    var dataBytes: UInt64
    var inodeCount: Int
}

enum InterimRootTree {
    static func prepare(source: String, scratch: String) throws -> InterimPreparedTree {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: source, isDirectory: &isDirectory) else { throw ImageBuildError.rootfsMissing(source) }
        guard isDirectory.boolValue else { throw ImageBuildError.rootfsUnusable(source, "not a directory") }
        var bytes: UInt64 = 0, count = 0
        let enumerator = FileManager.default.enumerator(atPath: source)
        while let name = enumerator?.nextObject() as? String {
            count += 1
            var info = stat()
            if lstat(source + "/" + name, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG { bytes += (UInt64(info.st_size) + 4095) / 4096 * 4096 }
        }
        return InterimPreparedTree(directory: source, debugfsCommands: [], dataBytes: bytes, inodeCount: count)
    }
}
