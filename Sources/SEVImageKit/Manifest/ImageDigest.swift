import Foundation

/// The digest a manifest records for its image (`image.blockSHA256`): the SHA-256 of the concatenated
/// SHA-256 digests of the file's 64 KiB blocks, in file order (the last block may be shorter).
///
/// Not the SHA-256 of the whole file, which sevimage 0.1 recorded (`image.sha256`, still checked
/// when present): that is one sequential pass that cannot begin before the QCOW2's first cluster is final,
/// i.e. after everything else, and ran at 2 GB/s on one core at the end of every `create`. Block digests are
/// independent: `create` computes each cluster's while it writes it (as mke2fs still runs), and `verify`
/// and the key commands hash on every core. A 64 KiB block is one QCOW2 cluster.
///
/// Checked without sevimage by:
///
///     python3 -c 'import hashlib,sys; f=open(sys.argv[1],"rb"); h=hashlib.sha256()
///     for b in iter(lambda: f.read(65536), b""): h.update(hashlib.sha256(b).digest())
///     print(h.hexdigest())' IMAGE.qcow2
public enum ImageDigest {
    public static let blockSize = 1 << 16
    public static let leafSize = 32

    /// The digest of a file, read and hashed on every core.
    public static func of(file path: String) throws -> [UInt8] {
        try leaves(of: path).combined()
    }

    /// How many blocks a file of `size` bytes has.
    public static func blockCount(size: UInt64) -> Int {
        Int((size + UInt64(blockSize) - 1) / UInt64(blockSize))
    }

    /// The block digests of a file, read and hashed on every core.
    static func leaves(of path: String) throws -> Leaves {
        let file = try RawFile(path: path, writable: false)
        let size = file.size
        let blocks = blockCount(size: size)
        let leaves = Leaves(count: blocks)
        let piecesPerRead = 16
        let queue = WorkQueue(Array(stride(from: 0, to: blocks, by: piecesPerRead)))
        let threads = max(1, min(ProcessInfo.processInfo.activeProcessorCount, 8))
        DispatchQueue.concurrentPerform(iterations: threads) { _ in
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: blockSize * piecesPerRead, alignment: 4096)
            defer { buffer.deallocate() }
            while let first = queue.next() {
                let start = UInt64(first) * UInt64(blockSize)
                let count = Int(min(UInt64(buffer.count), size - start))
                do {
                    try file.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count]), at: start)
                } catch {
                    queue.fail(error)
                    return
                }
                for (slot, offset) in stride(from: 0, to: count, by: blockSize).enumerated() {
                    leaves.set(first + slot, UnsafeRawBufferPointer(rebasing: buffer[offset..<min(count, offset + blockSize)]))
                }
            }
        }
        if let error = queue.error { throw error }
        return leaves
    }

    /// Block digests filled in by several threads, each block by one of them.
    final class Leaves: @unchecked Sendable {
        private let storage: UnsafeMutableRawBufferPointer
        let count: Int

        init(count: Int) {
            storage = .allocate(byteCount: max(1, count * ImageDigest.leafSize), alignment: 8)
            storage.initializeMemory(as: UInt8.self, repeating: 0)
            self.count = count
        }

        deinit { storage.deallocate() }

        /// Hashes `block` as block `index`.
        func set(_ index: Int, _ block: UnsafeRawBufferPointer) {
            Crypto.sha256(block, into: storage.baseAddress! + index * ImageDigest.leafSize)
        }

        /// Copies a digest computed earlier as block `index`.
        func set(_ index: Int, digest: Crypto.SHA256Value) {
            withUnsafeBytes(of: digest) { (storage.baseAddress! + index * ImageDigest.leafSize).copyMemory(from: $0.baseAddress!, byteCount: ImageDigest.leafSize) }
        }

        /// Copies a digest of `ImageDigest.leafSize` bytes as block `index`.
        func set(_ index: Int, copying digest: UnsafeRawBufferPointer) {
            (storage.baseAddress! + index * ImageDigest.leafSize).copyMemory(from: digest.baseAddress!, byteCount: ImageDigest.leafSize)
        }

        /// The image digest: SHA-256 over the block digests, in file order.
        func combined() -> [UInt8] {
            Crypto.sha256(UnsafeRawBufferPointer(rebasing: storage[0..<(count * ImageDigest.leafSize)]))
        }

        /// The block digests back to back: what `BlockDigests` keeps beside the image.
        var bytes: [UInt8] { Array(UnsafeRawBufferPointer(rebasing: storage[0..<(count * ImageDigest.leafSize)])) }
    }
}
