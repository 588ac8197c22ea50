import Foundation

/// Encrypts the parts of a plaintext volume that matter into the LUKS data segment of a disk file.
///
/// Only the given regions are written; everything else stays a hole in the output, which decrypts to
/// noise that the filesystem never reads (the state of a LUKS volume after `fstrim`). Work is split
/// into 1 MiB chunks spread over all cores, each thread with its own cipher and buffer, so memory
/// stays at a few MiB whatever the volume's size.
public enum DataEncryption {
    public static let chunkSize: UInt64 = 1 << 20

    /// - Parameters:
    ///   - regions: byte ranges of `source` to encrypt (rounded out to whole sectors here).
    ///   - targetOffset: where the data segment starts in `target` (partition offset + LUKS header).
    ///   - encrypt: false decrypts instead (the same walk, for reading a volume back).
    public static func run(source: RawFile, regions: [Range<UInt64>], key: SecretBytes, target: some PositionalWriter,
                           targetOffset: UInt64, encrypt: Bool = true, progress: (@Sendable (UInt64) -> Void)? = nil) throws {
        let sector = UInt64(LUKSLayout.sectorSize)
        let sourceSize = source.size
        var chunks: [Range<UInt64>] = []
        for region in mergeRanges(regions.map { ($0.lowerBound / sector * sector)..<min(sourceSize, ($0.upperBound + sector - 1) / sector * sector) }) {
            var start = region.lowerBound
            while start < region.upperBound {
                let end = min(region.upperBound, (start / chunkSize + 1) * chunkSize)
                chunks.append(start..<end)
                start = end
            }
        }
        let state = WorkQueue(chunks: chunks)
        let threads = max(1, min(ProcessInfo.processInfo.activeProcessorCount, 8))
        DispatchQueue.concurrentPerform(iterations: threads) { _ in
            do {
                let cipher = try XTSCipher(key: key, encrypt: encrypt)
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(chunkSize), alignment: 4096)
                defer { wipe(buffer); buffer.deallocate() }
                while let chunk = state.next() {
                    let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(chunk.count)])
                    try source.read(into: slice, at: chunk.lowerBound)
                    try cipher.process(slice, firstSector: chunk.lowerBound / sector)
                    try target.write(UnsafeRawBufferPointer(slice), at: targetOffset + chunk.lowerBound)
                    state.finished(chunk.count)
                    progress?(state.doneBytes)
                }
            } catch {
                state.fail(error)
            }
        }
        if let error = state.error { throw error }
    }

    /// The bytes `run` will write for these regions.
    public static func totalBytes(_ regions: [Range<UInt64>]) -> UInt64 {
        mergeRanges(regions).reduce(0) { $0 + UInt64($1.count) }
    }
}

private final class WorkQueue: @unchecked Sendable {
    private let lock = NSLock()
    private let chunks: [Range<UInt64>]
    private var index = 0
    private(set) var error: Error?
    private var done: UInt64 = 0

    init(chunks: [Range<UInt64>]) { self.chunks = chunks }

    func next() -> Range<UInt64>? {
        lock.withLock {
            guard error == nil, index < chunks.count else { return nil }
            defer { index += 1 }
            return chunks[index]
        }
    }

    func finished(_ bytes: Int) { lock.withLock { done += UInt64(bytes) } }
    var doneBytes: UInt64 { lock.withLock { done } }
    func fail(_ error: Error) { lock.withLock { if self.error == nil { self.error = error } } }
}
