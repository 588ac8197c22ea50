import Foundation

/// Encrypts the root filesystem into the QCOW2 while mke2fs is still writing it, then makes the result exact.
///
/// Encrypting the root, hashing it and writing it to disk take about as long as mke2fs itself, so they start
/// early: a follower thread watches the plaintext file that mke2fs fills and encrypts each 1 MiB chunk once
/// it is full or its data stops growing, straight into newly allocated QCOW2 clusters, written with direct
/// I/O (no copy into the page cache; the disk works while mke2fs does). For each cluster it keeps a
/// fingerprint of the plaintext it encrypted (`Crypto.Fingerprinter`) and the SHA-256 of the ciphertext it
/// wrote (the cluster's block digest for the manifest, `ImageDigest`). This is speculative: mke2fs may still
/// change a chunk afterwards (inode tables and bitmaps are rewritten until it closes, debugfs edits a few
/// blocks, a read may even race with a write). So when the filesystem is final, `complete` gives every
/// cluster still needed its place, writes the QCOW2's metadata, and then walks the whole file on all cores:
/// the fingerprint of each cluster's final plaintext says whether the file already holds it (its block
/// digest is then known too) or it must be encrypted again and written; every other cluster is read back and
/// hashed. The image is then exactly as if everything had been encrypted at the end: every allocated cluster
/// of the data segment holds the encryption of the final plaintext, and clusters that hold no data stay
/// unallocated: they decrypt to noise. ext4 never reads them before writing them: the holes mke2fs leaves
/// are free blocks, inode-table tails and journal blocks (`lazy_itable_init` and `lazy_journal_init` leave
/// `INODE_ZEROED` clear, so the kernel zeroes them itself, and fsck and the kernel never read past a group's
/// `itable_unused`). The tests check this with an independent decryption and `e2fsck -f`, before and after
/// `debugfs -w` allocates in fresh groups.
///
/// Checking a fingerprint costs less than reading the image back: GHASH and AES-XTS run at several GB/s per
/// core, and the clusters written with direct I/O are not in the page cache.
final class RootEncryption: @unchecked Sendable {
    let plaintextPath: String
    /// Length of the plaintext filesystem (a multiple of the sector size).
    let size: UInt64
    let key: SecretBytes
    let target: QCOW2Writer
    /// Guest offset of the LUKS data segment (cluster aligned).
    let targetOffset: UInt64
    let chunkSize: UInt64
    private let fingerprintKey: SecretBytes

    private let lock = NSLock()
    /// Per chunk: the data bytes the follower saw at its previous scan, or `written` once it encrypted it.
    private var seen: [UInt32]
    private static let written = UInt32.max
    /// Host cluster -> what the follower wrote into it.
    private var written: [UInt64: WrittenCluster] = [:]
    private var stopRequested = false
    /// Ends the follower's wait between two scans at once when it is asked to stop (mke2fs is done).
    private let stopSignal = DispatchSemaphore(value: 0)
    private var following: BackgroundWork<Void>?

    init(plaintext: String, size: UInt64, key: SecretBytes, target: QCOW2Writer, targetOffset: UInt64) throws {
        precondition(targetOffset % target.clusterSize == 0, "the data segment must start on a cluster")
        precondition(target.clusterSize == UInt64(ImageDigest.blockSize), "a block digest is kept per host cluster")
        plaintextPath = plaintext
        self.size = size
        self.key = key
        self.target = target
        self.targetOffset = targetOffset
        chunkSize = 16 * target.clusterSize
        fingerprintKey = try SecretBytes(randomCount: 16)
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
        stopSignal.signal()
        try following?.wait().get()
    }

    private var isStopped: Bool { lock.withLock { stopRequested } }

    /// Whether the follower has encrypted this chunk ahead (for tests).
    func wasWrittenAhead(_ chunk: Int) -> Bool { lock.withLock { seen[chunk] == Self.written } }

    private func follow(interval: TimeInterval) throws {
        let worker = try Worker(self)
        var plaintext: RawFile?
        var lastScan = Date.distantPast
        while true {
            // Scans at least `interval` apart (at once when the last scan took longer: the follower is behind).
            let wait = interval - Date().timeIntervalSince(lastScan)
            if wait > 0, stopSignal.wait(timeout: .now() + wait) == .success { return }
            if isStopped { return }
            lastScan = Date()
            if plaintext == nil { plaintext = try? RawFile(path: plaintextPath, writable: false) }
            guard let plaintext else { continue }
            // A chunk is encrypted ahead once it is full of data, or two scans found the same data in it: mke2fs
            // has moved on. Chunks it still fills, and those it changes later, are handled by `complete`.
            for (chunk, dataBytes) in try coverage(of: plaintext.dataExtents()) {
                if isStopped { return }
                let ready = lock.withLock { () -> Bool in
                    let previous = seen[chunk]
                    if previous == Self.written { return false }
                    seen[chunk] = dataBytes
                    return previous == dataBytes || UInt64(dataBytes) == chunkRange(chunk).count
                }
                guard ready else { continue }
                allocate(chunk, clusterMask(chunk: chunk, extents: try plaintext.dataExtents(in: chunkRange(chunk))))
                try worker.encryptAhead(chunk: chunk, from: plaintext)
                lock.withLock { seen[chunk] = Self.written }
            }
        }
    }

    // MARK: Completing

    /// Once the plaintext is final: gives clusters to the data not encrypted ahead (`wipeFreeSpace`: to the
    /// whole filesystem), writes the QCOW2's metadata, then completes the file on all cores: encrypts and
    /// writes each data cluster the file does not hold yet, and finds every cluster's block digest. Returns
    /// the bytes of the data segment that have clusters and the image's digest (`ImageDigest`). Ends with the
    /// file flushed to disk. Frees the plaintext's space as it goes (it is of no use afterwards). `meter`,
    /// given the file's length, may return a progress meter for the bytes completed.
    func complete(wipeFreeSpace: Bool, meter: ((UInt64) -> (@Sendable (UInt64) -> Void)?)? = nil) throws -> (encryptedBytes: UInt64, digest: [UInt8]) {
        precondition(isStopped, "complete after stopFollowing")
        let plaintext = try RawFile(path: plaintextPath, writable: true)
        let extents = wipeFreeSpace ? [0..<size] : try plaintext.dataExtents()
        var masks: [Int: UInt16] = [:]
        for extent in extents {
            for chunk in chunks(touching: extent) { masks[chunk, default: 0] |= clusterMask(chunk: chunk, extents: [extent]) }
        }
        for (chunk, mask) in masks.sorted(by: { $0.key < $1.key }) { allocate(chunk, mask) }
        try target.finish()

        // The file in pieces of 16 clusters, completed by several threads (memory: one piece per thread).
        let guests = target.guestClusters()
        let progress = meter?(UInt64(guests.count) * target.clusterSize)
        let leaves = ImageDigest.Leaves(count: guests.count)
        let queue = WorkQueue(stride(from: 0, to: guests.count, by: 16).map { $0..<min($0 + 16, guests.count) })
        let threads = max(1, min(ProcessInfo.processInfo.activeProcessorCount, 8))
        DispatchQueue.concurrentPerform(iterations: threads) { _ in
            do {
                let worker = try Worker(self)
                while let piece = queue.next() {
                    try worker.complete(hostClusters: piece, guests: guests, from: plaintext, leaves: leaves)
                    progress?(queue.finished(UInt64(piece.count) * target.clusterSize))
                }
            } catch {
                queue.fail(error)
            }
        }
        if let error = queue.error { throw error }
        try target.sync()
        let dataSegment = targetOffset..<(targetOffset + size)
        let encrypted = target.allocatedRanges.reduce(UInt64(0)) { total, range in
            let start = max(range.lowerBound, dataSegment.lowerBound), end = min(range.upperBound, dataSegment.upperBound)
            return total + (start < end ? end - start : 0)
        }
        blockDigests = leaves.bytes
        return (encrypted, leaves.combined())
    }

    /// After `complete`: every block's digest, back to back (the sidecar `BlockDigests` keeps beside the image).
    private(set) var blockDigests: [UInt8] = []

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

    /// One thread's ciphers and buffers.
    private final class Worker {
        let owner: RootEncryption
        let cipher: XTSCipher
        let fingerprinter: Crypto.Fingerprinter
        let buffer: UnsafeMutableRawBufferPointer

        init(_ owner: RootEncryption) throws {
            self.owner = owner
            cipher = try XTSCipher(key: owner.key, encrypt: true)
            fingerprinter = try Crypto.Fingerprinter(key: owner.fingerprintKey)
            buffer = .allocate(byteCount: Int(owner.chunkSize), alignment: 4096)
        }

        deinit {
            wipe(buffer)
            buffer.deallocate()
        }

        /// Encrypts the chunk from the plaintext as it is now into every cluster of it that has one, and notes
        /// for each whole cluster the fingerprint of its plaintext and the SHA-256 of what it got.
        func encryptAhead(chunk: Int, from plaintext: RawFile) throws {
            let range = owner.chunkRange(chunk)
            let clusterSize = Int(owner.target.clusterSize)
            let guestStart = owner.targetOffset + range.lowerBound
            let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(range.count)])
            try plaintext.read(into: slice, at: range.lowerBound)
            var hosts: [(slot: Int, host: UInt64, fingerprint: Crypto.Fingerprint)] = []
            for start in stride(from: 0, to: slice.count - clusterSize + 1, by: clusterSize) {
                guard let host = owner.target.hostCluster(ofGuest: guestStart + UInt64(start)) else { continue }
                let cluster = UnsafeRawBufferPointer(rebasing: slice[start..<(start + clusterSize)])
                hosts.append((start, host, try fingerprinter.fingerprint(cluster)))
            }
            try cipher.process(slice, firstSector: range.lowerBound / UInt64(LUKSLayout.sectorSize))
            let noted = hosts.map { cluster in
                (cluster.host, WrittenCluster(fingerprint: cluster.fingerprint,
                                              digest: Crypto.sha256Value(UnsafeRawBufferPointer(rebasing: slice[cluster.slot..<(cluster.slot + clusterSize)]))))
            }
            // Runs of allocated clusters, each written at once.
            var start = 0
            while start < slice.count {
                guard owner.target.isAllocated(guestStart + UInt64(start)) else { start += clusterSize; continue }
                var end = start + clusterSize
                while end < slice.count, owner.target.isAllocated(guestStart + UInt64(end)) { end += clusterSize }
                end = min(end, slice.count)
                try owner.target.write(UnsafeRawBufferPointer(rebasing: slice[start..<end]), at: guestStart + UInt64(start), direct: true)
                start = end
            }
            owner.lock.withLock { for (host, cluster) in noted { owner.written[host] = cluster } }
        }

        /// Completes consecutive host clusters and sets their block digests: a cluster of the data segment whose
        /// final plaintext the follower encrypted is done; the others are encrypted and written; clusters outside
        /// the data segment are read from the file.
        func complete(hostClusters: Range<Int>, guests: [UInt64?], from plaintext: RawFile, leaves: ImageDigest.Leaves) throws {
            let clusterSize = Int(owner.target.clusterSize)
            let sectorSize = UInt64(LUKSLayout.sectorSize)
            var stale: [Bool] = []
            var consumed: [Range<UInt64>] = []
            for (slot, host) in hostClusters.enumerated() {
                let bytes = UnsafeMutableRawBufferPointer(rebasing: buffer[(slot * clusterSize)..<((slot + 1) * clusterSize)])
                guard let guest = guests[host].map({ $0 * UInt64(clusterSize) }),
                      guest >= owner.targetOffset, guest < owner.targetOffset + owner.size else {
                    try owner.target.readHost(into: bytes, cluster: UInt64(host))
                    leaves.set(host, UnsafeRawBufferPointer(bytes))
                    stale.append(false)
                    continue
                }
                let position = guest - owner.targetOffset
                let count = Int(min(UInt64(clusterSize), owner.size - position))
                let used = UnsafeMutableRawBufferPointer(rebasing: bytes[0..<count])
                // A cluster the data segment ends in keeps what the file holds after it.
                if count < clusterSize { try owner.target.readHost(into: bytes, cluster: UInt64(host)) }
                try plaintext.read(into: used, at: position, zerosPastEnd: true)
                // Host order is not guest order: only a cluster that continues the last range extends it.
                if let last = consumed.last, last.upperBound == position {
                    consumed[consumed.count - 1] = last.lowerBound..<(position + UInt64(count))
                } else {
                    consumed.append(position..<(position + UInt64(count)))
                }
                let fingerprint = try fingerprinter.fingerprint(UnsafeRawBufferPointer(used))
                if let known = owner.lock.withLock({ owner.written[UInt64(host)] }), known.fingerprint == fingerprint {
                    leaves.set(host, digest: known.digest)
                    stale.append(false)
                    continue
                }
                try cipher.process(used, firstSector: position / sectorSize)
                leaves.set(host, UnsafeRawBufferPointer(bytes))
                stale.append(true)
            }
            // Runs of clusters the file does not hold yet, each written at once.
            var slot = 0
            while slot < stale.count {
                guard stale[slot] else { slot += 1; continue }
                var end = slot + 1
                while end < stale.count, stale[end] { end += 1 }
                let bytes = UnsafeRawBufferPointer(rebasing: buffer[(slot * clusterSize)..<(end * clusterSize)])
                try owner.target.writeHost(bytes, cluster: UInt64(hostClusters.lowerBound + slot), direct: true)
                slot = end
            }
            for range in consumed { plaintext.punchHole(range) }
        }
    }
}

/// What the follower wrote into a host cluster: the fingerprint of the plaintext and the SHA-256 of the ciphertext.
private struct WrittenCluster {
    var fingerprint: Crypto.Fingerprint
    var digest: Crypto.SHA256Value
}
