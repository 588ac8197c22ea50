import Foundation

/// Splits a path into its directory and its last name, the way `dirname(1)` and `basename(1)` do.
///
///     "vm.qcow2"        directory "."     name "vm.qcow2"    stem "vm"
///     "a"               directory "."     name "a"           stem "a"
///     "/a"              directory "/"     name "a"           stem "/a"
///     "out//d/x.pass/"  directory "out//d" name "x.pass"     stem "out//d/x"
///     ".profile"        directory "."     name ".profile"    stem ".profile"
///
/// Every path a user gives goes through these, never through `NSString`'s path methods:
/// swift-corelibs-foundation's `deletingLastPathComponent` traps (SIGILL) on a one-character path.
public enum PathName {
    /// The directory that holds `path`'s last name: "." for a bare name, "/" for a name in the root.
    public static func directory(of path: String) -> String {
        let bytes = trimmed(path)
        guard let slash = bytes.lastIndex(of: 0x2F) else { return bytes.isEmpty && path.hasPrefix("/") ? "/" : "." }
        var end = slash
        while end > 0 && bytes[end - 1] == 0x2F { end -= 1 }
        return end == 0 ? "/" : String(decoding: bytes[..<end], as: UTF8.self)
    }

    /// The last name in `path` (trailing slashes ignored); "/" for the root, "" for an empty path.
    public static func name(of path: String) -> String {
        let bytes = trimmed(path)
        if bytes.isEmpty { return path.hasPrefix("/") ? "/" : "" }
        let start = bytes.lastIndex(of: 0x2F).map { $0 + 1 } ?? 0
        return String(decoding: bytes[start...], as: UTF8.self)
    }

    /// `path` without the last name's extension (from its last dot; a leading dot starts no extension).
    public static func stem(_ path: String) -> String {
        let bytes = trimmed(path)
        let start = bytes.lastIndex(of: 0x2F).map { $0 + 1 } ?? 0
        guard let dot = bytes[start...].lastIndex(of: 0x2E), dot > start, dot < bytes.count - 1 else {
            return String(decoding: bytes, as: UTF8.self)
        }
        return String(decoding: bytes[..<dot], as: UTF8.self)
    }

    /// `path`'s bytes without trailing slashes.
    private static func trimmed(_ path: String) -> ArraySlice<UInt8> {
        var bytes = ArraySlice(Array(path.utf8))
        while bytes.last == 0x2F { bytes.removeLast() }
        return bytes
    }

    /// Where `path` leads, for telling two names of one file apart: the directory through `realpath`
    /// (symbolic links, `.` and `..` resolved), the last name through `realpath` too when it is a link that
    /// resolves. A directory that does not exist is kept as written, made absolute.
    public static func resolved(_ path: String) -> String {
        if let full = realpath(path, nil) {
            defer { free(full) }
            return String(cString: full)
        }
        let directory = directory(of: path), name = name(of: path)
        guard let full = realpath(directory, nil) else { return absolutePath(path) }
        defer { free(full) }
        let parent = String(cString: full)
        return (parent == "/" ? "" : parent) + "/" + name
    }
}

extension PathName {
    /// Refuses, before anything is written, when two of one command's files lead to the same file (after
    /// symbolic links, `.` and `..`): one would replace the other. `files` are (what it is, its path).
    public static func requireDistinct(_ files: [(role: String, path: String)]) throws {
        var seen: [String: (role: String, path: String)] = [:]
        for file in files {
            let key = resolved(file.path)
            if let earlier = seen[key] {
                let same = earlier.path == file.path ? "\(file.path) is both" : "\(earlier.path) and \(file.path) are both"
                throw GeneralError.invalidArgument("\(same) the \(earlier.role) and the \(file.role); give the image another name")
            }
            seen[key] = file
        }
    }
}
