import Foundation

/// The block digests (`ImageDigest`) of a `QCOW2Writer`'s file, taken from the bytes as they are written
/// instead of read back afterwards: a writer that puts a guest cluster's final bytes in one write hands
/// them to `record` too, which hashes every guest cluster the buffer covers whole. After `finish`, `leaves`
/// reads back only what was not recorded (the QCOW2's header and metadata, clusters written in pieces)
/// while the file is flushed.
///
/// Sound only if nothing writes into a recorded cluster afterwards, and if a recorded buffer holds the
/// cluster's bytes as the file will read them (zeros where the writer left holes): `reencrypt` writes each
/// data cluster once, from a buffer whose never-written sectors are zeros. `verify` and the oracle still
/// hash the whole file, so a slip here fails the tests, not a user's manifest silently.
final class WrittenClusterDigests: @unchecked Sendable {
    private let writer: QCOW2Writer
    private let capacity: Int
    private let digests: UnsafeMutableRawBufferPointer
    private let lock = NSLock()
    private var known: [Bool]

    /// For the clusters `writer` has allocated so far (allocate them all before writing).
    init(writer: QCOW2Writer) {
        precondition(writer.clusterSize == UInt64(ImageDigest.blockSize), "a block digest is kept per host cluster")
        self.writer = writer
        capacity = Int(writer.allocatedClusterEnd)
        digests = .allocate(byteCount: max(1, capacity * ImageDigest.leafSize), alignment: 8)
        known = [Bool](repeating: false, count: capacity)
    }

    deinit { digests.deallocate() }

    /// Hashes the guest clusters that `bytes`, the final bytes of guest offsets `offset...`, covers whole.
    func record(_ bytes: UnsafeRawBufferPointer, atGuest offset: UInt64) {
        let size = UInt64(ImageDigest.blockSize)
        var cluster = (offset + size - 1) / size * size
        while cluster + size <= offset + UInt64(bytes.count) {
            if let host = writer.hostCluster(ofGuest: cluster), host < UInt64(capacity) {
                let start = Int(cluster - offset)
                Crypto.sha256(UnsafeRawBufferPointer(rebasing: bytes[start..<start + Int(size)]),
                              into: digests.baseAddress! + Int(host) * ImageDigest.leafSize)
                lock.withLock { known[Int(host)] = true }
            }
            cluster += size
        }
    }

    /// How many clusters `record` hashed.
    var recordedCount: Int { lock.withLock { known.count(where: { $0 }) } }

    /// After `finish`: every block's digest, the recorded ones copied, the others read back from the file
    /// while another thread flushes it to disk.
    func leavesWhileSyncing() throws -> ImageDigest.Leaves {
        guard let size = writer.fileSize else { preconditionFailure("WrittenClusterDigests: leaves before finish") }
        let flushing = BackgroundWork("sevimage image flush") { [writer] in try writer.sync() }
        let leaves = Result { () throws -> ImageDigest.Leaves in
            let count = ImageDigest.blockCount(size: size)
            let leaves = ImageDigest.Leaves(count: count)
            let known = lock.withLock { self.known }
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: ImageDigest.blockSize, alignment: 4096)
            defer { buffer.deallocate() }
            for block in 0..<count {
                if block < capacity, known[block] {
                    leaves.set(block, copying: UnsafeRawBufferPointer(rebasing: digests[block * ImageDigest.leafSize..<(block + 1) * ImageDigest.leafSize]))
                } else {
                    try writer.readHost(into: buffer, cluster: UInt64(block))
                    let length = Int(min(UInt64(ImageDigest.blockSize), size - UInt64(block) * UInt64(ImageDigest.blockSize)))
                    leaves.set(block, UnsafeRawBufferPointer(rebasing: buffer[0..<length]))
                }
            }
            return leaves
        }
        try flushing.wait().get()
        return try leaves.get()
    }
}
