import Foundation

/// How a tarball is compressed, recognised by its first bytes.
enum ArchiveFormat: Equatable {
    case tar
    case compressed(ExternalTool)

    static func == (lhs: ArchiveFormat, rhs: ArchiveFormat) -> Bool {
        switch (lhs, rhs) {
        case (.tar, .tar): true
        case (.compressed(let a), .compressed(let b)): a.name == b.name
        default: false
        }
    }

    static let gzip = ExternalTool.gzip
    static let xz = ExternalTool.xz
    static let zstd = ExternalTool.zstd
    static let bzip2 = ExternalTool.bzip2

    /// Reads the first block: a compressor's magic number, or a tar header with a valid checksum.
    static func detect(path: String) throws -> ArchiveFormat {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw RootTreeError.unusable(path, reason: errnoDescription(errno)) }
        defer { close(descriptor) }
        var head = [UInt8](repeating: 0, count: 512)
        var filled = 0
        while filled < head.count {
            let count = head.withUnsafeMutableBytes { raw -> Int in
                guard let base = raw.baseAddress else { return 0 }
                return read(descriptor, base + filled, 512 - filled)
            }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else {
                if count < 0 { throw RootTreeError.unusable(path, reason: errnoDescription(errno)) }
                break
            }
            filled += count
        }
        let bytes = Array(head[0..<filled])
        if bytes.starts(with: [0x1f, 0x8b]) { return .compressed(gzip) }
        if bytes.starts(with: [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]) { return .compressed(xz) }
        if bytes.starts(with: [0x28, 0xb5, 0x2f, 0xfd]) { return .compressed(zstd) }
        if bytes.starts(with: Array("BZh".utf8)) { return .compressed(bzip2) }
        if filled == 512, TarHeader.checksumMatches(bytes) { return .tar }
        throw RootTreeError.unusable(path, reason: "not a directory, and not a tar archive (plain, gzip, xz, zstd or bzip2)")
    }
}

/// Buffered reading from a file or from a decompressor's output, with the offset for messages.
final class ByteStream {
    private let descriptor: Int32
    private var buffer = [UInt8](repeating: 0, count: 1 << 20)
    private var start = 0
    private var end = 0
    private var atEnd = false
    /// Bytes handed out so far: the offset in the uncompressed tar stream.
    private(set) var offset: UInt64 = 0
    private let name: String

    init(descriptor: Int32, name: String) {
        self.descriptor = descriptor
        self.name = name
    }

    /// Refills the buffer; false at the end of the stream.
    private func fill() throws -> Bool {
        if start < end { return true }
        if atEnd { return false }
        start = 0
        end = 0
        while true {
            let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw RootTreeError.badArchive(name, reason: "read failed: \(errnoDescription(errno))")
            }
            if count == 0 {
                atEnd = true
                return false
            }
            end = count
            return true
        }
    }

    /// Up to `count` bytes: fewer only at the end of the stream.
    func take(_ count: Int) throws -> [UInt8] {
        var result: [UInt8] = []
        result.reserveCapacity(count)
        while result.count < count, try fill() {
            let take = min(count - result.count, end - start)
            result.append(contentsOf: buffer[start..<(start + take)])
            start += take
            offset += UInt64(take)
        }
        return result
    }

    /// Hands `count` bytes to `sink` in chunks; returns how many there were (fewer only at the end).
    func forward(_ count: UInt64, to sink: (ArraySlice<UInt8>) throws -> Void) throws -> UInt64 {
        var done: UInt64 = 0
        while done < count, try fill() {
            let take = Int(min(count - done, UInt64(end - start)))
            try sink(buffer[start..<(start + take)])
            start += take
            offset += UInt64(take)
            done += UInt64(take)
        }
        return done
    }

    /// Reads and drops everything left (so a decompressor reaches its end and checks its CRC).
    func drain() throws {
        while try fill() {
            offset += UInt64(end - start)
            start = end
        }
    }
}

/// A decompressor running as a child: the archive on its stdin, its stdout read through a `ByteStream`.
final class Decompressor {
    private let process = Process()
    private let outputPipe = Pipe()
    private let errorFile: String
    private let tool: ExternalTool
    let stream: ByteStream

    init(tool: ExternalTool, archive: String, scratch: String) throws {
        self.tool = tool
        process.executableURL = URL(fileURLWithPath: try tool.resolve())
        process.arguments = ["-dc"]
        guard let input = FileHandle(forReadingAtPath: archive) else {
            throw RootTreeError.unusable(archive, reason: "cannot open it")
        }
        process.standardInput = input
        process.standardOutput = outputPipe
        errorFile = scratch + "/.\(tool.name).stderr"
        guard FileManager.default.createFile(atPath: errorFile, contents: nil),
              let errorHandle = FileHandle(forWritingAtPath: errorFile) else {
            throw RootTreeError.extraction(errorFile, operation: "create", errno: errno)
        }
        process.standardError = errorHandle
        stream = ByteStream(descriptor: outputPipe.fileHandleForReading.fileDescriptor, name: archive)
        try process.run()
        ChildProcesses.shared.add(process.processIdentifier)
        try? input.close()
        try? errorHandle.close()
    }

    /// Waits for the decompressor; a failure (corrupt data, bad CRC) becomes the archive's error.
    func finish(archive: String) throws {
        process.waitUntilExit()
        ChildProcesses.shared.remove(process.processIdentifier)
        defer { try? FileManager.default.removeItem(atPath: errorFile) }
        guard process.terminationStatus == 0 else {
            let text = (try? String(contentsOfFile: errorFile, encoding: .utf8)) ?? ""
            let detail = text.split(separator: "\n").last.map { ": " + $0 } ?? ""
            throw RootTreeError.badArchive(archive, reason: "\(tool.name) cannot decompress it (status \(process.terminationStatus))\(detail)")
        }
    }

    /// Stops the decompressor early (after an error in the tar stream).
    func cancel() {
        if process.isRunning { process.terminate() }
        try? outputPipe.fileHandleForReading.close()
        process.waitUntilExit()
        ChildProcesses.shared.remove(process.processIdentifier)
        try? FileManager.default.removeItem(atPath: errorFile)
    }
}
