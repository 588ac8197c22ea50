import Foundation

/// What a tree's initramfs is and whether it can open a LUKS root, read from the archive itself (not from
/// the tree's package database: the file in `/boot` is what boots).
///
/// Debian's initramfs-tools and dracut both write an uncompressed cpio (CPU microcode, often empty) followed
/// by a compressed one; the names are read through the matching decompressor and the data skipped.
public struct InitramfsInspection: Sendable, Equatable, Codable {
    public enum Kind: String, Sendable, Codable {
        /// Debian's initramfs-tools: `scripts/local-top/cryptroot` unlocks what `/cryptroot/crypttab` lists.
        case initramfsTools = "initramfs-tools"
        /// dracut: systemd-cryptsetup unlocks `rd.luks.uuid=`, with keys from `/etc/cryptsetup-keys.d/`.
        case dracut
        /// Neither (a hand-made initramfs, such as the demo's): sevimage cannot tell whether it unlocks LUKS.
        case other
    }

    /// The initrd inside the tree, e.g. `/boot/initrd.img-6.1.0-28-amd64`.
    public var path: String
    public var kind: Kind
    /// Whether the initramfs holds what unlocks LUKS (nil for `other`).
    public var unlocksLUKS: Bool?
    /// The compressions met, in order: `none`, `gzip`, `zstd`, `xz`, ... (`unknown`: the rest was not read).
    public var compression: [String]

    /// The package that gives this initramfs what it lacks, for the refusal.
    public var missingPackage: String? {
        switch (kind, unlocksLUKS) {
        case (.initramfsTools, false): "cryptsetup-initramfs"
        case (.dracut, false): "cryptsetup (dracut's crypt module needs it; rebuild the initramfs with dracut afterwards)"
        default: nil
        }
    }

    /// Reads the initrd at `relative` inside `tree`.
    static func inspect(_ relative: String, in tree: String) throws -> InitramfsInspection {
        let fd = try TreePath.openFile(relative, in: tree)
        defer { close(fd) }
        var names = Set<String>()
        var compression: [String] = []
        func add(_ listing: Cpio.Listing) {
            for entry in listing.entries {
                var name = Substring(entry.name)
                while name.hasPrefix("./") { name = name.dropFirst(2) }
                while name.hasPrefix("/") { name = name.dropFirst() }
                names.insert(String(name))
            }
        }
        let plain = try Cpio.list { count in try readSome(fd, count, path: relative) }
        add(plain)
        compression.append("none")
        if let rest = plain.rest {
            var magic = [UInt8](repeating: 0, count: 6)
            let got = magic.withUnsafeMutableBytes { pread(fd, $0.baseAddress!, 6, off_t(rest)) }
            guard let decompressor = InitramfsDecompressor.matching(Array(magic.prefix(max(0, got)))) else {
                // Not an initramfs sevimage can read (nor, most likely, one the kernel can): nothing to judge it by.
                return InitramfsInspection(path: "/" + relative, kind: .other, unlocksLUKS: nil, compression: compression + ["unknown"])
            }
            compression.append(decompressor.name)
            guard lseek(fd, off_t(rest), SEEK_SET) >= 0 else { throw GeneralError.io("seek", path: relative, errno: errno) }
            add(try decompressor.list(input: fd, path: relative))
        }
        return InitramfsInspection(path: "/" + relative, kind: kind(of: names), unlocksLUKS: unlocks(names), compression: compression)
    }

    static func kind(of names: Set<String>) -> Kind {
        if names.contains("conf/initramfs.conf") || names.contains("scripts/local") { return .initramfsTools }
        if names.contains("usr/lib/dracut") || names.contains(where: { $0.hasPrefix("usr/lib/dracut/") }) { return .dracut }
        return .other
    }

    static func unlocks(_ names: Set<String>) -> Bool? {
        let cryptsetup = names.contains("usr/sbin/cryptsetup") || names.contains("sbin/cryptsetup")
        switch kind(of: names) {
        case .initramfsTools:
            return cryptsetup && names.contains("scripts/local-top/cryptroot")
        case .dracut:
            return names.contains("usr/lib/systemd/systemd-cryptsetup") || names.contains("lib/systemd/systemd-cryptsetup")
        case .other:
            return nil
        }
    }

    private static func readSome(_ fd: Int32, _ count: Int, path: String) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: count)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress!, count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw GeneralError.io("read", path: path, errno: errno) }
            return Array(buffer.prefix(n))
        }
    }
}

/// Why a tree's initramfs cannot be used.
public enum InitramfsError: SEVImageError, Equatable {
    /// The initramfs would stop at its own shell: it has no way to open the LUKS root.
    case cannotUnlock(path: String, kind: String, package: String)
    case unreadable(String, reason: String)

    public var exitStatus: ExitStatus { .invalidInput }

    public var description: String {
        switch self {
        case .cannotUnlock(let path, let kind, let package):
            "the initramfs \(path) (\(kind)) cannot unlock the encrypted root: install \(package) in the tree, or give --no-initramfs-unlock if it unlocks the root some other way"
        case .unreadable(let path, let reason):
            "cannot read the initramfs /\(path): \(reason)"
        }
    }
}

/// A decompressor the kernel also knows, run as a child reading the initrd from its offset.
struct InitramfsDecompressor {
    var name: String
    var tool: ExternalTool
    var arguments: [String]

    /// The decompressor for data starting with `magic` (the kernel's list: lib/decompress.c).
    static func matching(_ magic: [UInt8]) -> InitramfsDecompressor? {
        func starts(_ prefix: [UInt8]) -> Bool { magic.starts(with: prefix) }
        if starts([0x1f, 0x8b]) || starts([0x1f, 0x9e]) { return InitramfsDecompressor(name: "gzip", tool: .gzip, arguments: ["-dc"]) }
        if starts([0x28, 0xb5, 0x2f, 0xfd]) { return InitramfsDecompressor(name: "zstd", tool: .zstd, arguments: ["-dcq"]) }
        if starts([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]) { return InitramfsDecompressor(name: "xz", tool: .xz, arguments: ["-dc"]) }
        if starts([0x5d, 0x00, 0x00]) { return InitramfsDecompressor(name: "lzma", tool: .xz, arguments: ["-dc", "--format=lzma"]) }
        if starts([0x42, 0x5a, 0x68]) { return InitramfsDecompressor(name: "bzip2", tool: .bzip2, arguments: ["-dc"]) }
        if starts([0x02, 0x21, 0x4c, 0x18]) { return InitramfsDecompressor(name: "lz4", tool: .lz4, arguments: ["-dc"]) }
        if starts([0x89, 0x4c, 0x5a, 0x4f]) { return InitramfsDecompressor(name: "lzop", tool: .lzop, arguments: ["-dc"]) }
        return nil
    }

    /// The names in the cpio that the decompressor makes of `input` (read from its current offset).
    /// A decompressor that fails after the archive's end (trailing zeros, a second stream it does not know)
    /// is not an error: the kernel stops there too.
    func list(input: Int32, path: String) throws -> Cpio.Listing {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try tool.resolve())
        process.arguments = arguments
        process.standardInput = FileHandle(fileDescriptor: input, closeOnDealloc: false)
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        let exited = DispatchSemaphore(value: 0)
        process.terminationHandler = { _ in exited.signal() }
        guard !Interruption.isInterrupted else { throw GeneralError.interrupted }
        try process.run()
        ChildProcesses.shared.add(process.processIdentifier)
        defer {
            try? output.fileHandleForReading.close()
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            exited.wait()
            ChildProcesses.shared.remove(process.processIdentifier)
        }
        let reader = output.fileHandleForReading
        let listing = try Cpio.list { count in
            guard let data = try reader.read(upToCount: count) else { return [] }
            return Array(data)
        }
        guard !listing.entries.isEmpty else {
            throw InitramfsError.unreadable(path, reason: "its \(name) part holds no cpio archive")
        }
        return listing
    }
}
