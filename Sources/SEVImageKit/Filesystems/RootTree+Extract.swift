import Foundation

/// Extracts a tar stream into `scratch/rootfs` without privileges, and remembers what the extraction could not
/// keep (owners, setuid/setgid/sticky bits, modes without owner access, device nodes, FIFOs) as debugfs commands.
///
/// Safety: entries are created only beneath directories this extraction made itself (an entry under a
/// symlink, a file or a device is refused), files are opened with `O_EXCL | O_NOFOLLOW`, and absolute paths
/// or `..` that would climb out of the tree are refused. Not `Sendable`: one extraction, one thread.
final class TarExtractor {
    enum Kind: Equatable {
        case file
        case directory
        case symlink(length: Int)
        case characterDevice(major: UInt64, minor: UInt64)
        case blockDevice(major: UInt64, minor: UInt64)
        case fifo

        /// Made by debugfs after mke2fs, not on disk.
        var isSpecial: Bool {
            switch self {
            case .characterDevice, .blockDevice, .fifo: true
            default: false
            }
        }

        var typeBits: UInt32 {
            switch self {
            case .file: 0o100000
            case .directory: 0o040000
            case .symlink: 0o120000
            case .characterDevice: 0o020000
            case .blockDevice: 0o060000
            case .fifo: 0o010000
            }
        }
    }

    struct Node {
        var kind: Kind
        /// Permission bits with setuid, setgid and sticky (12 bits).
        var mode: UInt32
        var uid: UInt32
        var gid: UInt32
        var mtime: Int64
        /// Hard links share this number.
        var inode: Int
        var size: UInt64
        /// Extended attributes from pax `SCHILY.xattr.*` records (file capabilities, SELinux labels, ...).
        var xattrs: [(name: String, value: [UInt8])] = []
    }

    /// The largest GNU long name or pax header accepted.
    static let maximumExtendedHeader: UInt64 = 1 << 20

    let archive: String
    let format: ArchiveFormat
    let root: String
    private var nodes: [String: Node] = [:]
    private var nextInode = 0
    /// Whether the archive has an entry for the root (`./`); if not, the root gets the newest entry's time.
    private var rootGiven = false
    /// The extended attributes of the entry being extracted.
    private var currentXattrs: [(name: String, value: [UInt8])] = []
    private var xattrFiles = 0
    private var newestTime: Int64 = 0
    /// What the root filesystem holds, checked at each entry's header; nil: no limit.
    let room: RootFilesystemRoom?
    /// Data blocks of the files extracted so far (a replaced file's given back).
    private var extractedBlocks: UInt64 = 0
    /// Once an entry did not fit: the blocks and inodes counted so far, where the counting started, and whether
    /// it went to the end of the archive (at most `countingLimit` more bytes are read).
    private var overflow: (blocks: UInt64, inodes: Int, offset: UInt64, complete: Bool)?
    private var countedNames = Set<[UInt8]>()
    static let countingLimit: UInt64 = 4 << 30

    init(archive: String, format: ArchiveFormat, scratch: String, room: RootFilesystemRoom? = nil) {
        self.archive = archive
        self.format = format
        self.root = scratch + "/rootfs"
        self.room = room
    }

    func bad(_ reason: String) -> RootTreeError { .badArchive(archive, reason: reason) }

    func run() throws -> PreparedRootTree {
        guard mkdir(root, 0o700) == 0 else { throw RootTreeError.extraction(root, operation: "create", errno: errno) }
        nodes[""] = Node(kind: .directory, mode: 0o755, uid: 0, gid: 0, mtime: 0, inode: newInode(), size: 0)
        do {
            switch format {
            case .tar:
                let descriptor = open(archive, O_RDONLY | O_CLOEXEC)
                guard descriptor >= 0 else { throw RootTreeError.unusable(archive, reason: errnoDescription(errno)) }
                defer { close(descriptor) }
                try extract(from: ByteStream(descriptor: descriptor, name: archive))
            case .compressed(let tool):
                let decompressor = try Decompressor(tool: tool, archive: archive, scratch: PathName.directory(of: root))
                do {
                    try extract(from: decompressor.stream)
                } catch let error as RootTreeError {
                    // A corrupt compressed stream usually shows first as a broken tar stream: read on to the
                    // end and prefer the decompressor's own message when it fails too.
                    guard case .badArchive = error, (try? decompressor.stream.drain()) != nil else {
                        decompressor.cancel()
                        throw error
                    }
                    try decompressor.finish(archive: archive)
                    throw error
                } catch {
                    decompressor.cancel()
                    throw error
                }
                try decompressor.finish(archive: archive)
            }
            try throwOverflow()
            try finishOnDisk()
            return try prepared()
        } catch {
            removeTree()
            // A damaged or cut-off archive after an entry that did not fit: the room is the first problem.
            if overflow != nil, !(error is ImageBuildError) {
                overflow?.complete = false
                try throwOverflow()
            }
            throw error
        }
    }

    /// The room refusal for what was counted, if an entry did not fit.
    private func throwOverflow() throws {
        guard let counted = overflow, let room else { return }
        try room.check(blockBytes: counted.blocks, inodes: counted.inodes, complete: counted.complete)
    }

    private func newInode() -> Int {
        nextInode += 1
        return nextInode
    }

    private func fullPath(_ path: String) -> String { path.isEmpty ? root : root + "/" + path }

    // MARK: - The tar stream

    private func extract(from stream: ByteStream) throws {
        var pax: [String: [UInt8]] = [:]
        var global: [String: [UInt8]] = [:]
        var longName: [UInt8]?
        var longLink: [UInt8]?
        while true {
            let headerOffset = stream.offset
            let block = try stream.take(512)
            if block.isEmpty { throw bad("ends without the end-of-archive blocks after \(headerOffset) bytes (truncated?)") }
            if block.count < 512 { throw bad("is truncated: it ends inside a header at byte \(headerOffset)") }
            if block.allSatisfy({ $0 == 0 }) {
                try stream.drain()
                return
            }
            guard TarHeader.checksumMatches(block) else {
                throw bad(headerOffset == 0 ? "is not a tar archive (bad header checksum at byte 0)"
                                            : "bad header checksum at byte \(headerOffset) (corrupt archive)")
            }
            let header: TarHeader
            do {
                header = try TarHeader(block: block)
            } catch {
                throw bad("\(error.reason) in the header at byte \(headerOffset)")
            }
            switch header.type {
            case UInt8(ascii: "x"), UInt8(ascii: "g"):
                let data = try extendedData(stream, header, what: "pax header")
                do {
                    if header.type == UInt8(ascii: "x") { try parsePaxRecords(data, into: &pax) } else { try parsePaxRecords(data, into: &global) }
                } catch {
                    throw bad("\(error.reason) at byte \(headerOffset)")
                }
                continue
            case UInt8(ascii: "L"):
                longName = Array(try extendedData(stream, header, what: "long name").prefix { $0 != 0 })
                continue
            case UInt8(ascii: "K"):
                longLink = Array(try extendedData(stream, header, what: "long link name").prefix { $0 != 0 })
                continue
            default:
                break
            }

            var entry = header
            var records = global
            records.merge(pax) { $1 }
            if let name = records["path"] ?? longName { entry.name = name }
            if let link = records["linkpath"] ?? longLink { entry.linkName = link }
            do {
                if let value = records["size"] { entry.size = UInt64(max(0, try paxInteger(value, key: "size"))) }
                if let value = records["uid"] { entry.uid = UInt64(max(0, try paxInteger(value, key: "uid"))) }
                if let value = records["gid"] { entry.gid = UInt64(max(0, try paxInteger(value, key: "gid"))) }
                if let value = records["mtime"] { entry.mtime = try paxInteger(value, key: "mtime", allowFraction: true) }
            } catch {
                throw bad("\(error.reason) for the entry at byte \(headerOffset)")
            }
            if records.keys.contains(where: { $0.hasPrefix("GNU.sparse.") }) {
                throw bad("entry '\(String(decoding: entry.name, as: UTF8.self))' is a sparse file, which is not supported; recreate the archive without --sparse")
            }
            let xattrPrefix = "SCHILY.xattr."
            currentXattrs = records.filter { $0.key.hasPrefix(xattrPrefix) }
                .map { (name: String($0.key.dropFirst(xattrPrefix.count)), value: $0.value) }
                .sorted { $0.name < $1.name }
            if let bad = currentXattrs.first(where: { $0.name.isEmpty || $0.name.contains(where: \.isNewline) }) {
                throw self.bad("entry '\(String(decoding: entry.name, as: UTF8.self))' has an extended attribute with an unusable name '\(bad.name)'")
            }
            pax = [:]
            longName = nil
            longLink = nil

            if overflow != nil {
                count(entry)
                try skip(stream, entry.size, entry: entry)
            } else {
                var consumed: UInt64 = 0
                do {
                    consumed = try handle(entry, stream: stream)
                } catch is ImageBuildError {
                    // The tree does not fit: write nothing more, but read the rest of the headers (skipping the
                    // data) so that the message says what the whole tree needs.
                    overflow = (extractedBlocks, nextInode, stream.offset, true)
                }
                try skip(stream, entry.size - consumed, entry: entry)
            }
            try skip(stream, (512 - entry.size % 512) % 512, entry: entry)
            if let counted = overflow, stream.offset - counted.offset > Self.countingLimit {
                overflow?.complete = false
                try throwOverflow()
            }
        }
    }

    /// Adds an entry to `overflow` without extracting it (names given twice are counted once).
    private func count(_ entry: TarHeader) {
        guard var counted = overflow, countedNames.insert(entry.name).inserted else { return }
        switch entry.type {
        case UInt8(ascii: "1"), UInt8(ascii: "V"): return
        case UInt8(ascii: "0"), 0, UInt8(ascii: "7"):
            if entry.name.last != 0x2f { counted.blocks = counted.blocks.checkedAdding(RootFilesystemRoom.blocks(entry.size)) ?? .max }
        case UInt8(ascii: "2") where entry.linkName.count >= RootTree.inlineSymlinkLimit:
            counted.blocks = counted.blocks.checkedAdding(RootFilesystemRoom.blocks(UInt64(entry.linkName.count))) ?? .max
        default: break
        }
        counted.inodes += 1
        overflow = counted
    }

    /// The data of a pax header or GNU long name, with its padding.
    private func extendedData(_ stream: ByteStream, _ header: TarHeader, what: String) throws -> [UInt8] {
        guard header.size <= Self.maximumExtendedHeader else { throw bad("a \(what) of \(header.size) bytes is too large") }
        let data = try stream.take(Int(header.size))
        guard data.count == Int(header.size) else { throw bad("is truncated inside a \(what)") }
        try skip(stream, (512 - header.size % 512) % 512, entry: header)
        return data
    }

    private func skip(_ stream: ByteStream, _ count: UInt64, entry: TarHeader) throws {
        guard count > 0 else { return }
        let skipped = try stream.forward(count) { _ in }
        guard skipped == count else {
            throw bad("is truncated: entry '\(String(decoding: entry.name, as: UTF8.self))' is cut short")
        }
    }

    // MARK: - Entries

    /// Makes one entry; returns how many data bytes it read.
    private func handle(_ entry: TarHeader, stream: ByteStream) throws -> UInt64 {
        let rawName = entry.name
        let shown = String(decoding: rawName, as: UTF8.self)
        guard entry.uid <= UInt64(UInt32.max), entry.gid <= UInt64(UInt32.max) else {
            throw bad("entry '\(shown)' has an owner beyond 32 bits")
        }
        var kind: Kind
        switch entry.type {
        case UInt8(ascii: "0"), 0, UInt8(ascii: "7"):
            kind = rawName.last == 0x2f ? .directory : .file
        case UInt8(ascii: "1"):
            return try hardLink(entry, shown: shown)
        case UInt8(ascii: "2"):
            kind = .symlink(length: entry.linkName.count)
        case UInt8(ascii: "3"):
            kind = .characterDevice(major: entry.deviceMajor, minor: entry.deviceMinor)
        case UInt8(ascii: "4"):
            kind = .blockDevice(major: entry.deviceMajor, minor: entry.deviceMinor)
        case UInt8(ascii: "5"), UInt8(ascii: "D"):
            kind = .directory
        case UInt8(ascii: "6"):
            kind = .fifo
        case UInt8(ascii: "V"):
            return 0
        case UInt8(ascii: "S"):
            throw bad("entry '\(shown)' is a GNU sparse file, which is not supported; recreate the archive without --sparse")
        case UInt8(ascii: "M"):
            throw bad("entry '\(shown)' continues from another volume; multi-volume archives are not supported")
        default:
            let type = (0x21...0x7e).contains(entry.type) ? "'\(Character(Unicode.Scalar(entry.type)))'" : "\(entry.type)"
            throw bad("entry '\(shown)' has the unsupported type \(type)")
        }
        let path = try normalize(rawName)
        newestTime = max(newestTime, entry.mtime)
        if path.isEmpty { rootGiven = true }
        let node = Node(kind: kind, mode: entry.mode, uid: UInt32(entry.uid), gid: UInt32(entry.gid),
                        mtime: entry.mtime, inode: 0, size: kind == .file ? entry.size : 0, xattrs: currentXattrs)
        try makeParents(of: path, shown: shown, mtime: entry.mtime)
        if case .directory = kind, let existing = nodes[path], existing.kind == .directory {
            nodes[path] = Node(kind: .directory, mode: node.mode, uid: node.uid, gid: node.gid, mtime: node.mtime,
                               inode: existing.inode, size: 0, xattrs: node.xattrs)
            return 0
        }
        try clear(path, shown: shown)
        var made = node
        made.inode = newInode()
        // Known from the header alone: refuse before the data is written (the running sum included).
        switch kind {
        case .file: extractedBlocks = extractedBlocks.checkedAdding(RootFilesystemRoom.blocks(entry.size)) ?? .max
        case .symlink(let length) where length >= RootTree.inlineSymlinkLimit: extractedBlocks += RootFilesystemRoom.blocks(UInt64(length))
        default: break
        }
        try room?.check(blockBytes: extractedBlocks, inodes: nextInode)
        let full = fullPath(path)
        var consumed: UInt64 = 0
        switch kind {
        case .file:
            consumed = try writeFile(full, size: entry.size, stream: stream, shown: shown)
        case .directory:
            guard mkdir(full, 0o700) == 0 else { throw RootTreeError.extraction(full, operation: "create", errno: errno) }
        case .symlink:
            guard !entry.linkName.isEmpty, !entry.linkName.contains(0), entry.linkName.count < 4096 else {
                throw bad("symlink '\(shown)' has an empty, too long or malformed target")
            }
            let target = String(decoding: entry.linkName, as: UTF8.self)
            guard String(validating: entry.linkName, as: UTF8.self) != nil else {
                throw RootTreeError.unsupportedName("/" + path, reason: "is a symlink whose target is not valid utf-8")
            }
            guard symlink(target, full) == 0 else { throw RootTreeError.extraction(full, operation: "create the symlink", errno: errno) }
        case .characterDevice, .blockDevice, .fifo:
            break
        }
        nodes[path] = made
        return consumed
    }

    private func hardLink(_ entry: TarHeader, shown: String) throws -> UInt64 {
        let path = try normalize(entry.name)
        let target = try normalize(entry.linkName)
        guard let targetNode = nodes[target] else {
            throw bad("hard link '\(shown)' points to '\(String(decoding: entry.linkName, as: UTF8.self))', which is not earlier in the archive")
        }
        guard targetNode.kind != .directory else { throw bad("hard link '\(shown)' points to a directory") }
        if path == target { return 0 }
        try makeParents(of: path, shown: shown, mtime: entry.mtime)
        try clear(path, shown: shown)
        if targetNode.kind.isSpecial {
            // Device nodes are made by debugfs, which cannot link them: give the link its own identical node.
            var copy = targetNode
            copy.inode = newInode()
            nodes[path] = copy
            return 0
        }
        guard link(fullPath(target), fullPath(path)) == 0 else {
            throw RootTreeError.extraction(fullPath(path), operation: "create the hard link", errno: errno)
        }
        nodes[path] = targetNode
        return 0
    }

    /// `a/./b/../c` → `a/c`; refuses absolute paths, escapes through `..`, and names debugfs cannot quote.
    private func normalize(_ raw: [UInt8]) throws -> String {
        let shown = String(decoding: raw, as: UTF8.self)
        guard !raw.isEmpty else { throw bad("an entry has an empty name") }
        guard !raw.contains(0) else { throw bad("entry '\(shown)' has a NUL byte in its name") }
        if raw.first == 0x2f { throw bad("entry '\(shown)' has an absolute path; refusing to extract outside the root tree") }
        var components: [[UInt8]] = []
        for component in raw.split(separator: 0x2f, omittingEmptySubsequences: true) {
            if component.elementsEqual([0x2e]) { continue }
            if component.elementsEqual([0x2e, 0x2e]) {
                guard components.popLast() != nil else {
                    throw bad("entry '\(shown)' climbs out of the root tree through '..'")
                }
                continue
            }
            let name = Array(component)
            try RootTree.checkName(name, displayPath: Array((components + [name]).joined(separator: [0x2f])))
            components.append(name)
            if components.count > RootTree.maximumDepth {
                throw bad("entry '\(shown.prefix(60))...' is more than \(RootTree.maximumDepth) directories deep; sevimage takes at most \(RootTree.maximumDepth) levels")
            }
        }
        return String(decoding: Array(components.joined(separator: [0x2f])), as: UTF8.self)
    }

    /// Creates the missing directories above `path`; refuses to go through anything but a directory.
    private func makeParents(of path: String, shown: String, mtime: Int64) throws {
        guard !path.isEmpty else { return }
        let components = path.split(separator: "/", omittingEmptySubsequences: true)
        var prefix = ""
        for component in components.dropLast() {
            prefix = prefix.isEmpty ? String(component) : prefix + "/" + component
            if let node = nodes[prefix] {
                guard node.kind == .directory else {
                    throw bad("entry '\(shown)' lies under '\(prefix)', which is not a directory")
                }
                continue
            }
            guard mkdir(fullPath(prefix), 0o700) == 0 else {
                throw RootTreeError.extraction(fullPath(prefix), operation: "create", errno: errno)
            }
            nodes[prefix] = Node(kind: .directory, mode: 0o755, uid: 0, gid: 0, mtime: mtime, inode: newInode(), size: 0)
        }
    }

    /// A later entry with the same name replaces an earlier one (as tar does), unless that one is a directory.
    private func clear(_ path: String, shown: String) throws {
        guard let existing = nodes[path] else { return }
        if path.isEmpty || existing.kind == .directory {
            throw bad("entry '\(shown)' would replace the directory '\(path.isEmpty ? "." : path)'")
        }
        if !existing.kind.isSpecial, unlink(fullPath(path)) != 0 {
            throw RootTreeError.extraction(fullPath(path), operation: "replace", errno: errno)
        }
        if existing.kind == .file, !nodes.contains(where: { $0.key != path && $0.value.inode == existing.inode }) {
            extractedBlocks -= min(extractedBlocks, RootFilesystemRoom.blocks(existing.size))
        }
        nodes[path] = nil
    }

    private func writeFile(_ full: String, size: UInt64, stream: ByteStream, shown: String) throws -> UInt64 {
        let descriptor = open(full, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw RootTreeError.extraction(full, operation: "create", errno: errno) }
        defer { close(descriptor) }
        let written = try stream.forward(size) { chunk in
            try chunk.withUnsafeBytes { raw in
                var offset = 0
                while offset < raw.count {
                    guard let base = raw.baseAddress else { return }
                    let count = write(descriptor, base + offset, raw.count - offset)
                    if count < 0 {
                        if errno == EINTR { continue }
                        throw RootTreeError.extraction(full, operation: "write", errno: errno)
                    }
                    offset += count
                }
            }
        }
        guard written == size else { throw bad("is truncated: entry '\(shown)' is cut short") }
        return written
    }

    // MARK: - Finishing

    /// Modes (keeping owner access so that mke2fs can read and the scratch can be removed) and times.
    private func finishOnDisk() throws {
        if !rootGiven { nodes[""]?.mtime = newestTime }
        for (path, node) in nodes where !node.kind.isSpecial {
            let full = fullPath(path)
            switch node.kind {
            case .file: if chmod(full, (node.mode & 0o777) | 0o600) != 0 { throw RootTreeError.extraction(full, operation: "chmod", errno: errno) }
            case .directory: if chmod(full, (node.mode & 0o777) | 0o700) != 0 { throw RootTreeError.extraction(full, operation: "chmod", errno: errno) }
            default: break
            }
        }
        for (path, node) in nodes where !node.kind.isSpecial {
            var times = [timespec(tv_sec: Int(node.mtime), tv_nsec: 0), timespec(tv_sec: Int(node.mtime), tv_nsec: 0)]
            guard utimensat(AT_FDCWD, fullPath(path), &times, AT_SYMLINK_NOFOLLOW) == 0 else {
                throw RootTreeError.extraction(fullPath(path), operation: "set the times of", errno: errno)
            }
        }
    }

    /// The commands that make the filesystem match the archive, and the counts.
    private func prepared() throws -> PreparedRootTree {
        var commands: [String] = []
        var done = Set<Int>()
        var dataBytes: UInt64 = 0, blockBytes: UInt64 = 0
        var changedDirectory = false
        for path in nodes.keys.sorted(by: { $0.utf8.lexicographicallyPrecedes($1.utf8) }) {
            guard let node = nodes[path], done.insert(node.inode).inserted else { continue }
            let inside = "/" + path
            let quoted = RootTree.debugfsQuoted(inside)
            switch node.kind {
            case .file:
                dataBytes += node.size
                blockBytes += RootFilesystemRoom.blocks(node.size)
            case .symlink(let length) where length >= RootTree.inlineSymlinkLimit:
                dataBytes += UInt64(length)
                blockBytes += RootFilesystemRoom.blocks(UInt64(length))
            default: break
            }
            if node.kind.isSpecial {
                let parent = PathName.directory(of: inside)
                let name = PathName.name(of: inside)
                commands.append("cd \(RootTree.debugfsQuoted(parent))")
                changedDirectory = true
                switch node.kind {
                case .characterDevice(let major, let minor): commands.append("mknod \(RootTree.debugfsQuoted(name)) c \(major) \(minor)")
                case .blockDevice(let major, let minor): commands.append("mknod \(RootTree.debugfsQuoted(name)) b \(major) \(minor)")
                default: commands.append("mknod \(RootTree.debugfsQuoted(name)) p")
                }
                commands.append("set_inode_field \(quoted) mode 0\(String(node.kind.typeBits | node.mode, radix: 8))")
                commands.append("set_inode_field \(quoted) uid \(node.uid)")
                commands.append("set_inode_field \(quoted) gid \(node.gid)")
                commands.append("set_inode_field \(quoted) mtime @\(max(0, node.mtime))")
                commands += try xattrCommands(node, quoted: quoted)
                continue
            }
            var status = stat()
            guard lstat(fullPath(path), &status) == 0 else {
                throw RootTreeError.extraction(fullPath(path), operation: "stat", errno: errno)
            }
            if status.st_uid != node.uid { commands.append("set_inode_field \(quoted) uid \(node.uid)") }
            if status.st_gid != node.gid { commands.append("set_inode_field \(quoted) gid \(node.gid)") }
            if case .symlink = node.kind {
            } else if UInt32(status.st_mode) & 0o7777 != node.mode {
                commands.append("set_inode_field \(quoted) mode 0\(String(node.kind.typeBits | node.mode, radix: 8))")
            }
            commands += try xattrCommands(node, quoted: quoted)
        }
        if changedDirectory { commands.append("cd \"/\"") }
        return PreparedRootTree(directory: root, debugfsCommands: commands, dataBytes: dataBytes, inodeCount: done.count,
                                blockBytes: blockBytes)
    }

    /// `ea_set -f VALUEFILE PATH NAME` for each extended attribute; values (often binary) go through files
    /// beside the tree, which live as long as the scratch directory.
    private func xattrCommands(_ node: Node, quoted: String) throws -> [String] {
        guard !node.xattrs.isEmpty else { return [] }
        let directory = PathName.directory(of: root) + "/xattrs"
        if xattrFiles == 0, mkdir(directory, 0o700) != 0, errno != EEXIST {
            throw RootTreeError.extraction(directory, operation: "create", errno: errno)
        }
        var commands: [String] = []
        for xattr in node.xattrs {
            xattrFiles += 1
            let file = directory + "/\(xattrFiles)"
            guard FileManager.default.createFile(atPath: file, contents: Data(xattr.value)) else {
                throw RootTreeError.extraction(file, operation: "write", errno: errno)
            }
            commands.append("ea_set -f \(RootTree.debugfsQuoted(file)) \(quoted) \(RootTree.debugfsQuoted(xattr.name))")
        }
        return commands
    }

    /// After a failure: nothing half-extracted stays behind.
    private func removeTree() {
        try? FileManager.default.removeItem(atPath: root)
        try? FileManager.default.removeItem(atPath: PathName.directory(of: root) + "/xattrs")
    }
}
