import Foundation

/// A root tree ready for `mke2fs -d`: a directory, plus the `debugfs -w` commands that restore what an
/// unprivileged copy of the tree could not (owners, setuid bits, device nodes).
///
/// The image builder runs, in this order:
///
///     mke2fs -t ext4 -d <directory> ... root.ext4
///     debugfs -w -f <script with debugfsCommands, one a line> root.ext4
///
/// Every path in the commands is absolute inside the filesystem and double-quoted (a `"` is doubled,
/// as debugfs's parser wants); names that debugfs cannot quote (a newline, a carriage return,
/// bytes that are not UTF-8) are refused before anything is built.
public struct PreparedRootTree: Sendable, Equatable {
    /// The directory to give `mke2fs -d`.
    public var directory: String
    /// Commands for `debugfs -w -f`, without newlines; empty for a directory source.
    public var debugfsCommands: [String]
    /// Bytes of file contents (each hard-linked file once) plus symlink targets too long to sit in an inode.
    public var dataBytes: UInt64
    /// Inodes the filesystem needs: directories (the root included), files, links, device nodes.
    public var inodeCount: Int
    /// `dataBytes` as the filesystem stores it: each file and long symlink target in whole 4 KiB blocks.
    public var blockBytes: UInt64 = 0
}

/// Why a root tree (a directory or a tarball) cannot be used.
public enum RootTreeError: SEVImageError, Equatable {
    /// The source does not exist.
    case missing(String)
    /// The source exists but is neither a directory nor a tar archive, or cannot be opened.
    case unusable(String, reason: String)
    /// A name in the tree that the filesystem tools cannot carry.
    case unsupportedName(String, reason: String)
    /// A file or directory in the tree cannot be read.
    case unreadable(String, reason: String)
    /// A directory tree deeper than `RootTree.maximumDepth`.
    case tooDeep(String, example: String)
    /// The tarball is damaged, or holds something that must not be extracted.
    case badArchive(String, reason: String)
    /// Extracting into the scratch directory failed (disk full, permissions).
    case extraction(String, operation: String, errno: Int32)

    public var exitStatus: ExitStatus {
        switch self {
        case .extraction: .failure
        default: .invalidInput
        }
    }

    public var description: String {
        let line: String
        switch self {
        case .missing(let path):
            line = "root tree \(path) does not exist"
        case .unusable(let path, let reason):
            line = "root tree \(path) cannot be used: \(reason)"
        case .unsupportedName(let path, let reason):
            line = "root tree entry '\(path)' \(reason)"
        case .unreadable(let path, let reason):
            line = "root tree entry \(path) cannot be read: \(reason)"
        case .tooDeep(let path, let example):
            line = "root tree \(path) is more than \(RootTree.maximumDepth) directories deep (\(example)); sevimage takes at most \(RootTree.maximumDepth) levels"
        case .badArchive(let path, let reason):
            line = "tarball \(path): \(reason)"
        case .extraction(let path, let operation, let errno):
            line = "cannot \(operation) \(path) while extracting the root tree: \(errnoDescription(errno))"
        }
        return printable(line)
    }
}

/// Turns `--rootfs DIR|TARBALL` into a `PreparedRootTree`.
public enum RootTree {
    /// Inline symlink targets: ext4 keeps targets shorter than 60 bytes inside the inode.
    static let inlineSymlinkLimit = 60

    /// The most names a path inside a root tree may have (`/usr/lib/x` has 3). mke2fs 1.47.0 corrupts its heap
    /// on a tree 1,500 directories deep; real systems stay below 40. Directories and tarballs alike.
    public static let maximumDepth = 256

    /// Refuses a directory tree deeper than `maximumDepth`, before mke2fs sees it (create starts mke2fs on a
    /// directory while it checks the rest). Reads directories only (the entry type from readdir, lstat only
    /// where the filesystem does not give it); anything else is left to `prepare`.
    public static func checkDepth(of source: String) throws {
        var pending: [(path: [UInt8], depth: Int)] = [(Array(source.utf8), 0)]
        while let (directory, depth) = pending.popLast() {
            guard let handle = opendir(String(decoding: directory, as: UTF8.self)) else { continue }
            defer { closedir(handle) }
            while let entry = readdir(handle) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { raw -> [UInt8] in Array(raw.prefix { $0 != 0 }) }
                if name == [0x2e] || name == [0x2e, 0x2e] { continue }
                var isDirectory = entry.pointee.d_type == UInt8(DT_DIR)
                let path = directory + [0x2f] + name
                if entry.pointee.d_type == UInt8(DT_UNKNOWN) {
                    var status = stat()
                    isDirectory = lstat(String(decoding: path, as: UTF8.self), &status) == 0 && (status.st_mode & S_IFMT) == S_IFDIR
                }
                guard isDirectory else { continue }
                if depth + 1 > maximumDepth {
                    let inside = String(decoding: path.dropFirst(source.utf8.count), as: UTF8.self)
                    throw RootTreeError.tooDeep(source, example: String(inside.prefix(60)) + "...")
                }
                pending.append((path, depth + 1))
            }
        }
    }

    /// Checks a directory and returns it as is, or extracts a tarball (`.tar`, `.tar.gz`/`.tgz`, `.tar.xz`,
    /// `.tar.zst`, `.tar.bz2`: recognised by content, not by name) into `scratch/rootfs` and collects the
    /// commands that restore owners, special modes and device nodes.
    /// With `room`, a tarball entry that would not fit is refused before its data is written.
    public static func prepare(source: String, scratch: String, room: RootFilesystemRoom? = nil) throws -> PreparedRootTree {
        var status = stat()
        guard stat(source, &status) == 0 else {
            if errno == ENOENT || errno == ENOTDIR { throw RootTreeError.missing(source) }
            throw RootTreeError.unusable(source, reason: errnoDescription(errno))
        }
        switch status.st_mode & S_IFMT {
        case S_IFDIR:
            return try prepareDirectory(source)
        case S_IFREG:
            let format = try ArchiveFormat.detect(path: source)
            return try TarExtractor(archive: source, format: format, scratch: scratch, room: room).run()
        default:
            throw RootTreeError.unusable(source, reason: "not a directory or a tarball")
        }
    }

    /// Walks a directory tree without following symlinks: every name must be quotable, every file and
    /// directory readable (mke2fs opens them all); counts bytes and inodes.
    static func prepareDirectory(_ source: String) throws -> PreparedRootTree {
        guard let resolved = realpath(source, nil) else { throw RootTreeError.unusable(source, reason: errnoDescription(errno)) }
        let root = String(cString: resolved)
        free(resolved)
        guard access(root, R_OK | X_OK) == 0 else { throw RootTreeError.unreadable(root, reason: errnoDescription(errno)) }

        var seen = Set<InodeKey>()
        var dataBytes: UInt64 = 0, blockBytes: UInt64 = 0
        var pending: [(path: [UInt8], relative: [UInt8])] = [(Array(root.utf8), [])]
        var rootStatus = stat()
        lstat(root, &rootStatus)
        seen.insert(InodeKey(device: UInt64(rootStatus.st_dev), inode: UInt64(rootStatus.st_ino)))

        while let (directory, relative) = pending.popLast() {
            let directoryPath = String(decoding: directory, as: UTF8.self)
            guard let handle = opendir(directoryPath) else {
                throw RootTreeError.unreadable(directoryPath, reason: errnoDescription(errno))
            }
            defer { closedir(handle) }
            while let entry = readdir(handle) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { raw -> [UInt8] in
                    Array(raw.prefix { $0 != 0 })
                }
                if name == [0x2e] || name == [0x2e, 0x2e] { continue }
                let childRelative = relative + [0x2f] + name
                try checkName(name, displayPath: childRelative)
                let childPath = directory + [0x2f] + name
                let childString = String(decoding: childPath, as: UTF8.self)
                var status = stat()
                guard lstat(childString, &status) == 0 else {
                    throw RootTreeError.unreadable(childString, reason: errnoDescription(errno))
                }
                let key = InodeKey(device: UInt64(status.st_dev), inode: UInt64(status.st_ino))
                let isNew = seen.insert(key).inserted
                switch status.st_mode & S_IFMT {
                case S_IFDIR:
                    guard access(childString, R_OK | X_OK) == 0 else {
                        throw RootTreeError.unreadable(childString, reason: errnoDescription(errno))
                    }
                    pending.append((childPath, childRelative))
                case S_IFREG:
                    guard access(childString, R_OK) == 0 else {
                        throw RootTreeError.unreadable(childString, reason: errnoDescription(errno))
                    }
                    if isNew {
                        dataBytes += UInt64(max(0, status.st_size))
                        blockBytes += RootFilesystemRoom.blocks(UInt64(max(0, status.st_size)))
                    }
                case S_IFLNK:
                    if isNew && status.st_size >= inlineSymlinkLimit {
                        dataBytes += UInt64(status.st_size)
                        blockBytes += RootFilesystemRoom.blocks(UInt64(status.st_size))
                    }
                default:
                    break
                }
            }
        }
        return PreparedRootTree(directory: root, debugfsCommands: [], dataBytes: dataBytes, inodeCount: seen.count, blockBytes: blockBytes)
    }

    /// Refuses a name debugfs cannot quote or ext4 cannot hold. `displayPath` is the path inside the tree.
    static func checkName(_ name: [UInt8], displayPath: [UInt8]) throws {
        let shown = "/" + String(decoding: displayPath.drop { $0 == 0x2f }, as: UTF8.self)
        if name.contains(0x0a) || name.contains(0x0d) {
            throw RootTreeError.unsupportedName(shown, reason: "has a line break in its name, which debugfs cannot quote; rename it")
        }
        if String(validating: name, as: UTF8.self) == nil {
            throw RootTreeError.unsupportedName(shown, reason: "has a name that is not valid utf-8, which debugfs scripts cannot carry; rename it")
        }
        if name.count > 255 {
            throw RootTreeError.unsupportedName(shown, reason: "has a name longer than 255 bytes, the ext4 limit")
        }
    }

    /// A path as a debugfs argument: absolute, in double quotes, with `"` doubled.
    static func debugfsQuoted(_ path: String) -> String {
        "\"" + path.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }
}

struct InodeKey: Hashable {
    var device: UInt64
    var inode: UInt64
}
