import Foundation

/// Encrypts the root filesystem into the QCOW2 while mke2fs is still writing it, then makes the result exact.
///
/// Encrypting the root and writing it to disk take about as long as mke2fs itself, so they start early: a follower thread watches the plaintext file that mke2fs fills and encrypts each 1 MiB
/// chunk once its data stops growing, straight into newly allocated QCOW2 clusters, which the kernel starts
/// writing out at once (QCOW2Writer). This is speculative: mke2fs may still change a chunk afterwards (inode
/// tables and bitmaps are rewritten until it closes, debugfs edits a few blocks, a read may even race with a
/// write). So when the filesystem is final, `complete` walks every chunk that holds data or was written
/// ahead, encrypts it again from the final plaintext and compares: what differs is rewritten, what is
/// missing is allocated and written. The image is then exactly as if everything had been encrypted at the
/// end: every allocated cluster of the data segment holds the encryption of the final plaintext, and
/// clusters that hold no data stay unallocated: they decrypt to noise. ext4 never reads them before writing
/// them: the holes mke2fs leaves are free blocks, inode-table tails and journal blocks (`lazy_itable_init`
/// and `lazy_journal_init` leave `INODE_ZEROED` clear, so the kernel zeroes them itself, and fsck and the
/// kernel never read past a group's `itable_unused`). The tests check this with an independent decryption
/// and `e2fsck -f`, before and after `debugfs -w` allocates in fresh groups.
///
/// The compare re-encrypts rather than hashes: AES-XTS runs about four times faster than SHA-256 here, and
/// an exact compare needs no argument about collisions.
final class RootEncryption: @unchecked Sendable {
    let plaintextPath: String
    /// Length of the plaintext filesystem (a multiple of the sector size).
    let size: UInt64
    let key: SecretBytes
    let target: QCOW2Writer
    /// Guest offset of the LUKS data segment (cluster aligned).
    let targetOffset: UInt64
    let chunkSize: UInt64

    private let lock = NSLock()
    /// Per chunk: the data bytes the follower saw at its previous scan, or `written` once it encrypted it.
    private var seen: [UInt32]
    private static let written = UInt32.max
    private var stopRequested = false
    private var following: BackgroundWork<Void>?

    init(plaintext: String, size: UInt64, key: SecretBytes, target: QCOW2Writer, targetOffset: UInt64) {
        precondition(targetOffset % target.clusterSize == 0, "the data segment must start on a cluster")
        plaintextPath = plaintext
        self.size = size
        self.key = key
        self.target = target
        self.targetOffset = targetOffset
        chunkSize = 16 * target.clusterSize
        seen = [UInt32](repeating: 0, count: Int((size + chunkSize - 1) / chunkSize))
    }

    // MARK: Following mke2fs

    /// Starts the follower thread; `stopFollowing` ends it.
    func startFollowing(interval: TimeInterval = 0.1) {
        following = BackgroundWork("sevimage root encryption") { [self] in try follow(interval: interval) }
    }

    /// Stops the follower and waits for it; throws what made it fail, if anything did.
    func stopFollowing() throws {
        lock.withLock { stopRequested = true }
        try following?.wait().get()
    }

    private var isStopped: Bool { lock.withLock { stopRequested } }

    /// Whether the follower has encrypted this chunk ahead (for tests).
    func wasWrittenAhead(_ chunk: Int) -> Bool { lock.withLock { seen[chunk] == Self.written } }

    private func follow(interval: TimeInterval) throws {
        let worker = try ChunkWorker(self)
        var plaintext: RawFile?
        while !isStopped {
            Thread.sleep(forTimeInterval: interval)
            if plaintext == nil { plaintext = try? RawFile(path: plaintextPath, writable: false) }
            guard let plaintext else { continue }
            // A chunk is encrypted ahead once two scans a moment apart found the same data in it: mke2fs has
            // moved on. Chunks it still fills, and those it changes later, are handled by `complete`.
            for (chunk, dataBytes) in try coverage(of: plaintext.dataExtents()) {
                if isStopped { return }
                let stable = lock.withLock { () -> Bool in
                    let previous = seen[chunk]
                    if previous == Self.written { return false }
                    seen[chunk] = dataBytes
                    return previous == dataBytes
                }
                guard stable else { continue }
                allocate(chunk, clusterMask(chunk: chunk, extents: try plaintext.dataExtents(in: chunkRange(chunk))))
                try worker.encrypt(chunk: chunk, from: plaintext, compare: false)
                lock.withLock { seen[chunk] = Self.written }
            }
        }
    }

    // MARK: Completing

    /// Once the plaintext is final: encrypts what is missing and corrects what changed since it was encrypted
    /// ahead, on all cores (`wipeFreeSpace` covers the whole filesystem instead of its data), and finishes the
    /// QCOW2. Returns the bytes of the data segment that have clusters and the image's SHA-256, which a thread
    /// computes behind the writers: the clusters are allocated and the metadata written first, so that the
    /// file's layout is final, then the chunks are completed in the order of their clusters in the file while
    /// the hash reads each cluster as soon as it is final. Ends with the file flushed to disk.
    func complete(wipeFreeSpace: Bool, progress: (@Sendable (UInt64) -> Void)? = nil) throws -> (encryptedBytes: UInt64, sha256: [UInt8]) {
        precondition(isStopped, "complete after stopFollowing")
        let plaintext = try RawFile(path: plaintextPath, writable: false)
        let extents = wipeFreeSpace ? [0..<size] : try plaintext.dataExtents()
        // Clusters that hold data now, per chunk; chunks written ahead are checked even if they hold none now.
        var dataClusters: [Int: UInt16] = [:]
        for extent in extents {
            for chunk in chunks(touching: extent) {
                dataClusters[chunk, default: 0] |= clusterMask(chunk: chunk, extents: [extent])
            }
        }
        let ahead = Set(lock.withLock { seen.indices.filter { seen[$0] == Self.written } })
        for chunk in ahead where dataClusters[chunk] == nil { dataClusters[chunk] = 0 }
        for (chunk, mask) in dataClusters.sorted(by: { $0.key < $1.key }) { allocate(chunk, mask) }
        try target.finish()

        // Chunks in the order of their first cluster in the file (memory: two words per chunk, whatever the size).
        let order = dataClusters.keys.map { ($0, hostClusters($0).first ?? 0) }.sorted { $0.1 < $1.1 }.map(\.0)
        let settled = SettledClusters(fileSize: target.fileSize!, clusterSize: target.clusterSize)
        for chunk in order { settled.markPending(hostClusters(chunk)) }
        let hashing = BackgroundWork("sevimage image hash") { [target] in
            try Crypto.hashFile(target.path, readableUpTo: settled.readableUpTo)
        }
        let queue = WorkQueue(order)
        let threads = max(1, min(ProcessInfo.processInfo.activeProcessorCount, 8))
        DispatchQueue.concurrentPerform(iterations: threads) { _ in
            do {
                let worker = try ChunkWorker(self)
                while let chunk = queue.next() {
                    try worker.encrypt(chunk: chunk, from: plaintext, compare: ahead.contains(chunk))
                    settled.settle(self.hostClusters(chunk))
                    progress?(queue.finished(UInt64(chunkRange(chunk).count)))
                }
            } catch {
                queue.fail(error)
            }
        }
        if let error = queue.error {
            settled.abandon()
            _ = hashing.wait()
            throw error
        }
        try target.sync()
        let digest = try hashing.wait().get()
        let dataSegment = targetOffset..<(targetOffset + size)
        let encrypted = target.allocatedRanges.reduce(UInt64(0)) { total, range in
            let start = max(range.lowerBound, dataSegment.lowerBound), end = min(range.upperBound, dataSegment.upperBound)
            return total + (start < end ? end - start : 0)
        }
        return (encrypted, digest)
    }

    /// The host clusters of a chunk's allocated guest clusters, ascending.
    private func hostClusters(_ chunk: Int) -> [UInt64] {
        let start = targetOffset + chunkRange(chunk).lowerBound
        return (0..<16).compactMap { target.hostCluster(ofGuest: start + UInt64($0) * target.clusterSize) }.sorted()
    }

    // MARK: Chunks and clusters

    func chunkRange(_ chunk: Int) -> Range<UInt64> {
        let start = UInt64(chunk) * chunkSize
        return start..<min(size, start + chunkSize)
    }

    private func chunks(touching extent: Range<UInt64>) -> Range<Int> {
        let end = min(extent.upperBound, size)
        guard extent.lowerBound < end else { return 0..<0 }
        return Int(extent.lowerBound / chunkSize)..<Int((end - 1) / chunkSize + 1)
    }

    /// Data bytes per chunk, for the chunks that hold any.
    private func coverage(of extents: [Range<UInt64>]) -> [(Int, UInt32)] {
        var bytes: [Int: UInt64] = [:]
        for extent in extents {
            for chunk in chunks(touching: extent) {
                let range = chunkRange(chunk)
                bytes[chunk, default: 0] += min(range.upperBound, extent.upperBound) - max(range.lowerBound, extent.lowerBound)
            }
        }
        return bytes.keys.sorted().map { ($0, UInt32(bytes[$0]!)) }
    }

    /// Gives the chunk's clusters in `mask` (bit i: the i-th) clusters in the QCOW2, if they have none yet.
    private func allocate(_ chunk: Int, _ mask: UInt16) {
        let start = targetOffset + chunkRange(chunk).lowerBound
        for bit in 0..<16 where mask & (1 << UInt16(bit)) != 0 {
            let cluster = start + UInt64(bit) * target.clusterSize
            target.allocate(cluster..<(cluster + target.clusterSize))
        }
    }

    /// Bit i set: the chunk's i-th cluster holds some of `extents`.
    private func clusterMask(chunk: Int, extents: [Range<UInt64>]) -> UInt16 {
        let range = chunkRange(chunk)
        var mask: UInt16 = 0
        for extent in extents {
            let start = max(extent.lowerBound, range.lowerBound), end = min(extent.upperBound, range.upperBound)
            guard start < end else { continue }
            for cluster in ((start - range.lowerBound) / target.clusterSize)...((end - 1 - range.lowerBound) / target.clusterSize) {
                mask |= 1 << UInt16(cluster)
            }
        }
        return mask
    }

    /// One thread's cipher and buffers.
    private final class ChunkWorker {
        let owner: RootEncryption
        let cipher: XTSCipher
        let buffer: UnsafeMutableRawBufferPointer
        let existing: UnsafeMutableRawBufferPointer

        init(_ owner: RootEncryption) throws {
            self.owner = owner
            cipher = try XTSCipher(key: owner.key, encrypt: true)
            buffer = .allocate(byteCount: Int(owner.chunkSize), alignment: 4096)
            existing = .allocate(byteCount: Int(owner.chunkSize), alignment: 4096)
        }

        deinit {
            wipe(buffer)
            buffer.deallocate()
            existing.deallocate()
        }

        /// Encrypts the chunk from the plaintext as it is now into every cluster of it that has one. With
        /// `compare`, clusters that already hold the same bytes are left alone, so that what was written
        /// ahead and did not change is not written twice.
        func encrypt(chunk: Int, from plaintext: RawFile, compare: Bool) throws {
            let range = owner.chunkRange(chunk)
            let clusterSize = owner.target.clusterSize
            let guestStart = owner.targetOffset + range.lowerBound
            let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(range.count)])
            try plaintext.read(into: slice, at: range.lowerBound)
            try cipher.process(slice, firstSector: range.lowerBound / UInt64(LUKSLayout.sectorSize))
            // Runs of allocated clusters, each written (or compared) at once.
            var bit = 0
            let clusters = Int((UInt64(range.count) + clusterSize - 1) / clusterSize)
            while bit < clusters {
                guard owner.target.isAllocated(guestStart + UInt64(bit) * clusterSize) else { bit += 1; continue }
                var end = bit + 1
                while end < clusters, owner.target.isAllocated(guestStart + UInt64(end) * clusterSize) { end += 1 }
                let bytes = (bit * Int(clusterSize))..<min(Int(range.count), end * Int(clusterSize))
                let fresh = UnsafeRawBufferPointer(rebasing: slice[bytes])
                var same = false
                if compare {
                    let old = UnsafeMutableRawBufferPointer(rebasing: existing[bytes])
                    try owner.target.read(into: old, at: guestStart + UInt64(bytes.lowerBound))
                    same = memcmp(old.baseAddress!, fresh.baseAddress!, bytes.count) == 0
                }
                if !same { try owner.target.write(fresh, at: guestStart + UInt64(bytes.lowerBound)) }
                bit = end
            }
        }
    }
}

/// Which host clusters of a file being completed are final, for a reader that follows the writers in file order.
private final class SettledClusters: @unchecked Sendable {
    private let condition = NSCondition()
    private var pending: [Bool]
    private var firstPending = 0
    private var abandoned = false
    private let clusterSize: UInt64

    init(fileSize: UInt64, clusterSize: UInt64) {
        self.clusterSize = clusterSize
        pending = [Bool](repeating: false, count: Int((fileSize + clusterSize - 1) / clusterSize))
        firstPending = pending.count
    }

    /// Marks clusters as not final yet (before the reader starts).
    func markPending(_ clusters: [UInt64]) {
        condition.withLock {
            for cluster in clusters { pending[Int(cluster)] = true }
            firstPending = min(firstPending, clusters.map { Int($0) }.min() ?? firstPending)
        }
    }

    private func advance() {
        while firstPending < pending.count, !pending[firstPending] { firstPending += 1 }
    }

    func settle(_ clusters: [UInt64]) {
        condition.withLock {
            for cluster in clusters { pending[Int(cluster)] = false }
            advance()
            condition.broadcast()
        }
    }

    /// Lets the reader stop where it is (the writers failed).
    func abandon() {
        condition.withLock {
            abandoned = true
            condition.broadcast()
        }
    }

    /// How far the file is final from `offset`; waits while the cluster at `offset` is not. Returns `offset`
    /// itself (nothing to read) once abandoned.
    @Sendable func readableUpTo(_ offset: UInt64) -> UInt64 {
        condition.withLock {
            while true {
                if abandoned { return offset }
                let limit = firstPending == pending.count ? UInt64.max : UInt64(firstPending) * clusterSize
                if limit > offset { return limit }
                condition.wait()
            }
        }
    }
}
