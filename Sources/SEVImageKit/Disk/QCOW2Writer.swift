import Foundation

/// Writes a new QCOW2 image, allocating clusters as guest data arrives, so that data can be written straight
/// into place (by several threads at once, while it is still being produced) without a raw disk and a
/// `qemu-img convert` pass.
///
///     host cluster:  0        1 ..                                 ..          ..         ..
///                  | header | data clusters, in allocation order | L2 tables | L1 table | refcount table, blocks |
///
/// `allocate` gives guest clusters the next host clusters; `write` puts guest bytes into allocated clusters;
/// `finish` appends the metadata and writes the header. Every cluster in the file has refcount 1 and every
/// L1 and L2 entry carries the COPIED flag (so `QCOW2Image` may later rewrite the LUKS header in place);
/// guest clusters never allocated read as zeros, and parts of an allocated cluster never written stay holes
/// in the file and read as zeros too, exactly as the guest bytes of a sparse raw disk would. Version 3
/// (`compat=1.1`), 16-bit refcounts, no extensions. The allocation map is kept per L2 table (4 bytes per
/// guest cluster of a table in use), so memory follows the data, not the disk.
///
/// Writes are buffered (and their write-out started every 32 MiB), or with `direct`, go straight to the disk
/// (`O_DIRECT`) where the filesystem allows it: bulk data that nothing reads back then costs no copy into the
/// page cache, and the closing fsync has nothing left to write.
///
/// `@unchecked Sendable`: the allocation map is guarded by a lock, and writes are pwrite calls on distinct
/// offsets, which the encryption threads rely on.
public final class QCOW2Writer: PositionalWriter, @unchecked Sendable {
    public let path: String
    public let virtualSize: UInt64
    public let clusterSize: UInt64
    private let clusterBits: UInt64
    private let l2Entries: UInt64
    private let file: RawFile
    /// The file opened again with O_DIRECT, or -1 where its filesystem has no direct I/O.
    private let directFD: Int32
    private let writeback = WritebackStarter()
    private let lock = NSLock()
    /// L1 slot -> host cluster number of each guest cluster the slot's L2 table covers (0: not allocated).
    private var tables: [UInt64: [UInt32]] = [:]
    private var nextCluster: UInt64 = 1
    private var finishedSize: UInt64?

    /// Creates `path` (it must not exist) for a disk of `virtualSize` bytes, with no cluster allocated yet.
    public init(creating path: String, virtualSize: UInt64, clusterBits: UInt64 = 16) throws {
        precondition((9...21).contains(clusterBits), "QCOW2 cluster sizes are 512 bytes to 2 MiB")
        self.path = path
        self.virtualSize = virtualSize
        self.clusterBits = clusterBits
        clusterSize = 1 << clusterBits
        l2Entries = clusterSize / 8
        file = try RawFile(creating: path, size: 0)
        directFD = open(path, O_WRONLY | O_CLOEXEC | GNUCalls.directIO)
    }

    deinit { if directFD >= 0 { close(directFD) } }

    /// Creates `path` with clusters for `allocated` (guest byte ranges), given in guest order.
    public convenience init(creating path: String, virtualSize: UInt64, allocated: [Range<UInt64>], clusterBits: UInt64 = 16) throws {
        try self.init(creating: path, virtualSize: virtualSize, clusterBits: clusterBits)
        for range in mergeRanges(allocated) { allocate(range) }
    }

    /// The host cluster number the next allocation would get: every allocated cluster lies below it.
    public var allocatedClusterEnd: UInt64 { lock.withLock { nextCluster } }

    /// Length of the finished file (header, data clusters and metadata); nil before `finish`.
    public var fileSize: UInt64? { lock.withLock { finishedSize } }

    /// Gives every guest cluster that `range` touches (clamped to the disk) a host cluster, if it has none yet.
    public func allocate(_ range: Range<UInt64>) {
        let end = min(range.upperBound, virtualSize)
        guard range.lowerBound < end else { return }
        lock.withLock {
            precondition(finishedSize == nil, "QCOW2Writer: allocation after finish")
            for cluster in (range.lowerBound >> clusterBits)...((end - 1) >> clusterBits) {
                let slot = cluster / l2Entries, index = Int(cluster % l2Entries)
                if tables[slot]?[index] ?? 0 != 0 { continue }
                tables[slot, default: [UInt32](repeating: 0, count: Int(l2Entries))][index] = UInt32(nextCluster)
                nextCluster += 1
            }
        }
    }

    /// Whether the guest cluster holding byte `offset` has a host cluster.
    public func isAllocated(_ offset: UInt64) -> Bool {
        lock.withLock { hostCluster(offset >> clusterBits) != 0 }
    }

    /// The host cluster (its number in the file) of the guest cluster holding byte `offset`, if it has one.
    public func hostCluster(ofGuest offset: UInt64) -> UInt64? {
        let host = lock.withLock { hostCluster(offset >> clusterBits) }
        return host == 0 ? nil : host
    }

    /// The guest byte ranges that have clusters (merged, ascending).
    public var allocatedRanges: [Range<UInt64>] {
        lock.withLock {
            var ranges: [Range<UInt64>] = []
            for slot in tables.keys.sorted() {
                for (index, host) in tables[slot]!.enumerated() where host != 0 {
                    let start = (slot * l2Entries + UInt64(index)) * clusterSize
                    ranges.appendMerging(start..<min(virtualSize, start + clusterSize))
                }
            }
            return ranges
        }
    }

    /// Writes guest bytes into their clusters; refuses, before writing anything, bytes that fall outside
    /// the allocated clusters. Safe to call from several threads for distinct ranges. `direct`: see the type.
    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        try write(buffer, at: offset, direct: false)
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, direct: Bool) throws {
        for piece in try hostPieces(offset, buffer.count) {
            try writeFile(UnsafeRawBufferPointer(rebasing: buffer[piece.range]), at: piece.host, direct: direct)
        }
    }

    /// Writes whole host clusters from `cluster` on (their final bytes, after `finish`).
    func writeHost(_ buffer: UnsafeRawBufferPointer, cluster: UInt64, direct: Bool) throws {
        try writeFile(buffer, at: cluster << clusterBits, direct: direct)
    }

    /// Reads host clusters from `cluster` on as the file holds them now (holes and the end of the file read as zeros).
    func readHost(into buffer: UnsafeMutableRawBufferPointer, cluster: UInt64) throws {
        try file.read(into: buffer, at: cluster << clusterBits, zerosPastEnd: true)
    }

    private func writeFile(_ bytes: UnsafeRawBufferPointer, at offset: UInt64, direct: Bool) throws {
        // O_DIRECT wants the memory, the offset and the length aligned to the device's blocks (4096 covers them all).
        if direct, directFD >= 0, Int(bitPattern: bytes.baseAddress) % 4096 == 0, offset % 4096 == 0, bytes.count % 4096 == 0 {
            var done = 0
            while done < bytes.count {
                let n = pwrite(directFD, bytes.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done))
                if n < 0 && errno == EINTR { continue }
                if n < 0 && errno == EINVAL { break }  // stricter alignment than 4096: the buffered write below
                guard n > 0 else { throw GeneralError.io("write", path: path, errno: errno) }
                done += n
            }
            if done == bytes.count { return }
            try file.write(UnsafeRawBufferPointer(rebasing: bytes[done...]), at: offset + UInt64(done))
            return
        }
        try file.write(bytes, at: offset)
        writeback.wrote(bytes.count, to: file.fd)
    }

    /// After `finish`: for each host cluster of the file, the guest cluster it holds (nil for the header and the metadata).
    func guestClusters() -> [UInt64?] {
        lock.withLock {
            precondition(finishedSize != nil, "QCOW2Writer: layout before finish")
            var guests = [UInt64?](repeating: nil, count: Int(finishedSize! >> clusterBits))
            for (slot, hosts) in tables {
                for (index, host) in hosts.enumerated() where host != 0 { guests[Int(host)] = slot * l2Entries + UInt64(index) }
            }
            return guests
        }
    }

    /// Reads guest bytes back from their clusters (all of them must be allocated); what was never written reads as zeros.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        for piece in try hostPieces(offset, buffer.count) {
            try file.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[piece.range]), at: piece.host, zerosPastEnd: true)
        }
    }

    /// Where `count` guest bytes from `offset` lie in the file, as runs that are contiguous there.
    private func hostPieces(_ offset: UInt64, _ count: Int) throws -> [(host: UInt64, range: Range<Int>)] {
        guard offset + UInt64(count) <= virtualSize else { throw QCOW2WriterError.outsideAllocation(path, offset) }
        return try lock.withLock {
            var pieces: [(host: UInt64, range: Range<Int>)] = []
            var done = 0
            while done < count {
                let position = offset + UInt64(done)
                let host = hostCluster(position >> clusterBits)
                guard host != 0 else { throw QCOW2WriterError.outsideAllocation(path, position) }
                let within = position & (clusterSize - 1)
                let length = Int(min(UInt64(count - done), clusterSize - within))
                let hostOffset = host << clusterBits + within
                if let last = pieces.last, last.host + UInt64(last.range.count) == hostOffset {
                    pieces[pieces.count - 1].range = last.range.lowerBound..<(done + length)
                } else {
                    pieces.append((hostOffset, done..<done + length))
                }
                done += length
            }
            return pieces
        }
    }

    /// Host cluster number of a guest cluster, 0 if none (call with the lock held).
    private func hostCluster(_ cluster: UInt64) -> UInt64 {
        UInt64(tables[cluster / l2Entries]?[Int(cluster % l2Entries)] ?? 0)
    }

    /// Appends the L2 tables, the L1 table and the refcounts after the data clusters and writes the header.
    /// No allocation may follow; writes into allocated clusters still may.
    public func finish() throws {
        let (slots, dataEnd): ([(UInt64, [UInt32])], UInt64) = lock.withLock {
            (tables.keys.sorted().map { ($0, tables[$0]!) }, nextCluster)
        }
        func clusters(_ bytes: UInt64) -> UInt64 { (bytes + clusterSize - 1) / clusterSize }
        let l1Size = (virtualSize + clusterSize * l2Entries - 1) / (clusterSize * l2Entries)
        let l1Clusters = max(1, clusters(l1Size * 8))
        // The refcount structures must count themselves, so grow them until they fit.
        let refcountsPerBlock = clusterSize / 2
        var tableClusters: UInt64 = 1, blockCount: UInt64 = 1, total: UInt64 = 0
        while true {
            total = dataEnd + UInt64(slots.count) + l1Clusters + tableClusters + blockCount
            let neededBlocks = (total + refcountsPerBlock - 1) / refcountsPerBlock
            let neededTable = max(1, clusters(neededBlocks * 8))
            if neededBlocks <= blockCount && neededTable <= tableClusters { break }
            blockCount = max(blockCount, neededBlocks)
            tableClusters = max(tableClusters, neededTable)
        }
        let l2Offset = dataEnd * clusterSize
        let l1Offset = l2Offset + UInt64(slots.count) * clusterSize
        let tableOffset = l1Offset + l1Clusters * clusterSize
        let blocksOffset = tableOffset + tableClusters * clusterSize
        let copied: UInt64 = 1 << 63

        // L2 tables, one cluster each, in slot order; the L1 table points at them.
        var l1 = [UInt8](repeating: 0, count: Int(l1Size * 8))
        var l2 = [UInt8](repeating: 0, count: Int(clusterSize))
        for (index, (slot, hosts)) in slots.enumerated() {
            for (entry, host) in hosts.enumerated() {
                putBE64(&l2, entry * 8, host == 0 ? 0 : (UInt64(host) << clusterBits) | copied)
            }
            let offset = l2Offset + UInt64(index) * clusterSize
            try write(l2, at: offset)
            putBE64(&l1, Int(slot) * 8, offset | copied)
        }
        try write(l1, at: l1Offset)

        // Refcount table and blocks: every host cluster up to the end of the file is used once.
        var table = [UInt8](repeating: 0, count: Int(tableClusters * clusterSize))
        for block in 0..<blockCount {
            putBE64(&table, Int(block) * 8, blocksOffset + block * clusterSize)
        }
        try write(table, at: tableOffset)
        var block = [UInt8](repeating: 0, count: Int(clusterSize))
        for index in 0..<blockCount {
            let first = index * refcountsPerBlock
            let used = min(refcountsPerBlock, total - first)
            for entry in 0..<Int(refcountsPerBlock) { putBE16(&block, entry * 2, UInt64(entry) < used ? 1 : 0) }
            try write(block, at: blocksOffset + index * clusterSize)
        }

        // Header (QEMU's docs/interop/qcow2.txt), big-endian; the zero bytes after it end the (empty) extension list.
        var header = [UInt8](repeating: 0, count: 112)
        putBE32(&header, 0, 0x5146_49FB)             // "QFI\xfb"
        putBE32(&header, 4, 3)                       // version
        putBE32(&header, 20, UInt32(clusterBits))
        putBE64(&header, 24, virtualSize)
        putBE32(&header, 36, UInt32(l1Size))
        putBE64(&header, 40, l1Offset)
        putBE64(&header, 48, tableOffset)
        putBE32(&header, 56, UInt32(tableClusters))
        putBE32(&header, 96, 4)                      // refcount_order: 16-bit refcounts
        putBE32(&header, 100, 104)                   // header_length
        try write(header, at: 0)
        lock.withLock { finishedSize = total * clusterSize }
    }

    private func write(_ bytes: [UInt8], at offset: UInt64) throws {
        try bytes.withUnsafeBytes { try file.write($0, at: offset) }
    }

    /// Copies guest bytes from a positional reader (e.g. a sparse raw file's data extents), allocating their clusters.
    public func copy(from source: RawFile, ranges: [Range<UInt64>], sourceOffset: UInt64 = 0) throws {
        for range in ranges { allocate(range) }
        let chunk = 1 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buffer.deallocate() }
        for range in ranges {
            var position = range.lowerBound
            while position < range.upperBound {
                let count = Int(min(UInt64(chunk), range.upperBound - position))
                let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count])
                try source.read(into: slice, at: position + sourceOffset)
                try write(UnsafeRawBufferPointer(slice), at: position)
                position += UInt64(count)
            }
        }
    }

    public func sync() throws { try file.sync() }

    /// The finished file's `ImageDigest`, read back (from the page cache) while another thread flushes it to
    /// disk, so that the hash costs no time of its own when the flush is the slower of the two.
    public func digestWhileSyncing() throws -> [UInt8] {
        precondition(fileSize != nil, "QCOW2Writer: hash before finish")
        let flushing = BackgroundWork("sevimage image flush") { [file] in try file.sync() }
        let digest = Result { try ImageDigest.of(file: path) }
        try flushing.wait().get()
        return try digest.get()
    }

    /// The data ranges of `file` outside `excluding`, at cluster granularity, without the clusters that are
    /// all zeros (mkfs.vfat writes zero-filled FATs; they need no cluster, as with `qemu-img convert`).
    public static func nonZeroRanges(of file: RawFile, excluding: Range<UInt64>, clusterSize: UInt64 = 1 << 16) throws -> [Range<UInt64>] {
        var ranges: [Range<UInt64>] = []
        var buffer = [UInt8](repeating: 0, count: Int(clusterSize))
        for extent in try file.dataExtents() {
            var cluster = extent.lowerBound / clusterSize * clusterSize
            while cluster < extent.upperBound {
                let piece = max(cluster, extent.lowerBound)..<min(cluster + clusterSize, extent.upperBound)
                cluster += clusterSize
                let below = piece.lowerBound..<max(piece.lowerBound, min(piece.upperBound, excluding.lowerBound))
                let above = min(piece.upperBound, max(piece.lowerBound, excluding.upperBound))..<piece.upperBound
                for part in [below, above] where !part.isEmpty {
                    let nonZero = try buffer.withUnsafeMutableBytes { raw -> Bool in
                        let slice = UnsafeMutableRawBufferPointer(rebasing: raw[0..<part.count])
                        try file.read(into: slice, at: part.lowerBound)
                        return slice.contains { $0 != 0 }
                    }
                    if nonZero { ranges.appendMerging(part) }
                }
            }
        }
        return ranges
    }
}

/// Something guest bytes can be written to by offset: a raw disk file or a QCOW2 being written.
public protocol PositionalWriter: AnyObject, Sendable {
    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws
}

extension RawFile: PositionalWriter {}

/// Starts the disk write of what was written so far every `stride` bytes (`sync_file_range` with
/// SYNC_FILE_RANGE_WRITE queues the dirty pages without waiting for them), so that the disk works while
/// the image is still being encrypted and the closing fsync finds little left to do. Without it the kernel
/// would hold the whole image dirty in the page cache (up to `dirty_background_ratio` of memory) and write
/// it only once fsync asks.
private final class WritebackStarter: @unchecked Sendable {
    private let lock = NSLock()
    private var pending = 0
    private let stride = 32 << 20

    func wrote(_ count: Int, to fd: Int32) {
        let start = lock.withLock {
            pending += count
            guard pending >= stride else { return false }
            pending = 0
            return true
        }
        if start, let syncFileRange = GNUCalls.syncFileRange { _ = syncFileRange(fd, 0, 0, GNUCalls.syncFileRangeWrite) }
    }
}

public enum QCOW2WriterError: SEVImageError {
    case outsideAllocation(String, UInt64)

    public var exitStatus: ExitStatus { .failure }

    public var description: String {
        switch self {
        case .outsideAllocation(let path, let offset):
            "internal: guest offset \(offset) of \(path) has no cluster planned for it"
        }
    }
}

@inline(__always) private func putBE16(_ b: inout [UInt8], _ o: Int, _ v: UInt64) {
    b[o] = UInt8(truncatingIfNeeded: v >> 8)
    b[o + 1] = UInt8(truncatingIfNeeded: v)
}
@inline(__always) private func putBE32(_ b: inout [UInt8], _ o: Int, _ v: UInt32) {
    for i in 0..<4 { b[o + i] = UInt8(truncatingIfNeeded: v >> (24 - 8 * UInt32(i))) }
}
@inline(__always) private func putBE64(_ b: inout [UInt8], _ o: Int, _ v: UInt64) {
    for i in 0..<8 { b[o + i] = UInt8(truncatingIfNeeded: v >> (56 - 8 * UInt64(i))) }
}
