import Foundation

/// The guest view of a disk image, QCOW2 (through `QCOW2Image`) or raw, read by offset.
///
/// Nothing is converted: `inspect` and `verify` read the GPT, the first MiB of each partition and
/// the LUKS header area, a few MiB whatever the disk's size. A file that ends before the data its
/// own tables point to is reported as truncated (`DiskError.notAnImage`, invalid input).
public final class DiskImageReader {
    public enum Format: String, Codable, Sendable {
        case qcow2
        case raw
    }

    public let path: String
    public let format: Format
    public let virtualSize: UInt64
    public let fileSize: UInt64
    /// QCOW2 cluster size; nil for raw images.
    public let clusterSize: UInt64?
    private let qcow: QCOW2Image?
    private let raw: RawFile?

    /// Opens `path`; `requireQCOW2` refuses raw files (the manifest of a sevimage image says qcow2).
    public init(path: String, requireQCOW2: Bool = false) throws {
        self.path = path
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw DiskError.notAnImage(path, "cannot open it: \(errnoDescription(errno))")
        }
        guard (info.st_mode & S_IFMT) == S_IFREG else { throw DiskError.notAnImage(path, "it is not a regular file") }
        guard info.st_size > 0 else { throw DiskError.notAnImage(path, "it is empty (0 bytes)") }
        fileSize = UInt64(info.st_size)
        let file = try RawFile(path: path, writable: false)
        var magic = [UInt8](repeating: 0, count: 4)
        if fileSize >= 4 { try magic.withUnsafeMutableBytes { try file.read(into: $0, at: 0) } }
        if magic == [0x51, 0x46, 0x49, 0xFB] {
            let image = try QCOW2Image(path: path)
            qcow = image
            raw = nil
            format = .qcow2
            virtualSize = image.virtualSize
            clusterSize = image.clusterSize
        } else {
            if requireQCOW2 { throw DiskError.notAnImage(path, "not a QCOW2 file (no QFI magic)") }
            guard fileSize % 512 == 0, fileSize >= 34 * 512 else {
                throw DiskError.notAnImage(path, "neither QCOW2 nor a raw disk (\(fileSize) bytes is not a whole number of 512-byte sectors)")
            }
            qcow = nil
            raw = file
            format = .raw
            virtualSize = fileSize
            clusterSize = nil
        }
    }

    /// Guest bytes; holes read as zeros.
    public func read(count: Int, at offset: UInt64) throws -> [UInt8] {
        guard offset + UInt64(count) <= virtualSize else {
            throw DiskError.notAnImage(path, "a read at \(offset) runs past the end of the \(virtualSize)-byte disk")
        }
        var bytes = [UInt8](repeating: 0, count: count)
        try bytes.withUnsafeMutableBytes { try read(into: $0, at: offset) }
        return bytes
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        do {
            if let qcow { try qcow.read(into: buffer, at: offset) } else if let raw { try raw.read(into: buffer, at: offset) }
        } catch GeneralError.io(let operation, _, _) where operation.contains("unexpected end") {
            throw DiskError.notAnImage(path, "it is truncated (data at guest offset \(offset) lies past the end of the file)")
        }
    }

    /// Copies guest bytes `range` into `target` at `targetOffset`, 1 MiB at a time, skipping zero chunks.
    public func copy(_ range: Range<UInt64>, to target: RawFile, at targetOffset: UInt64) throws {
        let chunk: UInt64 = 1 << 20
        var position = range.lowerBound
        while position < range.upperBound {
            let count = Int(min(chunk, range.upperBound - position))
            let bytes = try read(count: count, at: position)
            if bytes.contains(where: { $0 != 0 }) {
                try bytes.withUnsafeBytes { try target.write($0, at: targetOffset + position - range.lowerBound) }
            }
            position += UInt64(count)
        }
    }

    /// For QCOW2: every allocated cluster lies wholly inside the file (a truncated copy fails here even
    /// where the GPT and headers survived). Raw files have nothing to check.
    public func checkAllocations() throws {
        guard let qcow else { return }
        var offset: UInt64 = 0
        while offset < virtualSize {
            if let (host, _) = try qcow.hostOffset(offset), host + qcow.clusterSize > fileSize {
                throw DiskError.notAnImage(path, "it is truncated (a data cluster at host offset \(host) ends past the file's \(fileSize) bytes)")
            }
            offset += qcow.clusterSize
        }
    }
}
