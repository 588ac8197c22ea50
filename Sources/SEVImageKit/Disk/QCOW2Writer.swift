import Foundation

/// Writes a new QCOW2 image whose allocated clusters are known in advance, so that the guest data can be
/// written straight into place (by several threads at once) without a raw disk and a `qemu-img convert` pass.
///
///     host cluster:  0        1..          ..            ..           ..
///                  | header | L1 table | refcount table | refcount  | L2 tables | data clusters, in guest order |
///                  |        |          |                | blocks    | (used L1  | (one per allocated guest      |
///                  |        |          |                |           |  slots)   |  cluster)                     |
///
/// The metadata is written once, at creation: every cluster in the file has refcount 1, every L1 and L2
/// entry carries the COPIED flag (so `QCOW2Image` may later rewrite the LUKS header in place), and guest
/// clusters outside `allocated` stay unallocated (they read as zeros). The file is sized to its last data
/// cluster at once; parts of a data cluster that are never written stay holes and read as zeros, exactly as
/// the guest bytes of a sparse raw disk would. Version 3 (`compat=1.1`), 16-bit refcounts, no extensions.
///
/// `@unchecked Sendable`: after `init` the mapping is immutable and writes are pwrite calls on distinct
/// offsets, which the encryption threads rely on.
public final class QCOW2Writer: PositionalWriter, @unchecked Sendable {
    public let path: String
    public let virtualSize: UInt64
    public let clusterSize: UInt64
    /// Length of the finished file (header, metadata and every data cluster).
    public let fileSize: UInt64
    /// Allocated guest clusters as runs: first guest cluster, number of clusters, host offset of the first.
    private let runs: [(guest: UInt64, count: UInt64, host: UInt64)]
    private let file: RawFile

    /// Creates `path` (it must not exist) for a disk of `virtualSize` bytes whose data lies in `allocated`
    /// (guest byte ranges, rounded out to whole clusters here); writes all the metadata.
    public init(creating path: String, virtualSize: UInt64, allocated: [Range<UInt64>], clusterBits: UInt64 = 16) throws {
        precondition((9...21).contains(clusterBits), "QCOW2 cluster sizes are 512 bytes to 2 MiB")
        self.path = path
        self.virtualSize = virtualSize
        let clusterSize: UInt64 = 1 << clusterBits
        self.clusterSize = clusterSize
        let l2Entries = clusterSize / 8
        func clusters(_ bytes: UInt64) -> UInt64 { (bytes + clusterSize - 1) / clusterSize }

        // Guest clusters to allocate, merged into runs.
        var guestRuns: [(first: UInt64, count: UInt64)] = []
        for range in mergeRanges(allocated.map { min($0.lowerBound, virtualSize)..<min($0.upperBound, virtualSize) }) {
            let first = range.lowerBound / clusterSize, end = clusters(range.upperBound)
            if let last = guestRuns.last, first <= last.first + last.count {
                guestRuns[guestRuns.count - 1].count = max(last.count, end - last.first)
            } else {
                guestRuns.append((first, end - first))
            }
        }
        let dataClusters = guestRuns.reduce(0) { $0 + $1.count }
        // L1 slots that need an L2 table.
        var l2Slots: [UInt64] = []
        for run in guestRuns {
            for slot in (run.first / l2Entries)...((run.first + run.count - 1) / l2Entries) where l2Slots.last != slot {
                l2Slots.append(slot)
            }
        }

        // Host layout; the refcount structures must count themselves, so grow them until they fit.
        let l1Size = (virtualSize + clusterSize * l2Entries - 1) / (clusterSize * l2Entries)
        let l1Clusters = max(1, clusters(l1Size * 8))
        let refcountsPerBlock = clusterSize / 2
        var tableClusters: UInt64 = 1, blockCount: UInt64 = 1
        var total: UInt64 = 0
        while true {
            total = 1 + l1Clusters + tableClusters + blockCount + UInt64(l2Slots.count) + dataClusters
            let neededBlocks = (total + refcountsPerBlock - 1) / refcountsPerBlock
            let neededTable = max(1, clusters(neededBlocks * 8))
            if neededBlocks <= blockCount && neededTable <= tableClusters { break }
            blockCount = max(blockCount, neededBlocks)
            tableClusters = max(tableClusters, neededTable)
        }
        let l1Offset = clusterSize
        let tableOffset = l1Offset + l1Clusters * clusterSize
        let blocksOffset = tableOffset + tableClusters * clusterSize
        let l2Offset = blocksOffset + blockCount * clusterSize
        let dataOffset = l2Offset + UInt64(l2Slots.count) * clusterSize
        fileSize = total * clusterSize

        var mapped: [(guest: UInt64, count: UInt64, host: UInt64)] = []
        var next = dataOffset
        for run in guestRuns {
            mapped.append((run.first, run.count, next))
            next += run.count * clusterSize
        }
        runs = mapped

        file = try RawFile(creating: path, size: fileSize)
        let copied: UInt64 = 1 << 63

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

        // L1: one entry per L2 table, in slot order.
        var l1 = [UInt8](repeating: 0, count: Int(l1Size * 8))
        for (index, slot) in l2Slots.enumerated() {
            putBE64(&l1, Int(slot) * 8, (l2Offset + UInt64(index) * clusterSize) | copied)
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

        // L2 tables, one cluster each, built one at a time.
        var l2 = [UInt8](repeating: 0, count: Int(clusterSize))
        var runIndex = 0
        for (index, slot) in l2Slots.enumerated() {
            for i in l2.indices { l2[i] = 0 }
            let first = slot * l2Entries, end = first + l2Entries
            while runIndex < mapped.count, mapped[runIndex].guest + mapped[runIndex].count <= first { runIndex += 1 }
            var r = runIndex
            while r < mapped.count, mapped[r].guest < end {
                let run = mapped[r]
                for cluster in max(run.guest, first)..<min(run.guest + run.count, end) {
                    putBE64(&l2, Int(cluster - first) * 8, (run.host + (cluster - run.guest) * clusterSize) | copied)
                }
                r += 1
            }
            try write(l2, at: l2Offset + UInt64(index) * clusterSize)
        }
    }

    private func write(_ bytes: [UInt8], at offset: UInt64) throws {
        try bytes.withUnsafeBytes { try file.write($0, at: offset) }
    }

    /// The guest byte ranges that have clusters (merged, ascending).
    public var allocatedRanges: [Range<UInt64>] {
        runs.map { ($0.guest * clusterSize)..<min(virtualSize, ($0.guest + $0.count) * clusterSize) }
    }

    /// Writes guest bytes into their clusters; refuses, before writing anything, bytes that fall outside
    /// the allocated clusters. Safe to call from several threads for distinct ranges.
    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        guard offset + UInt64(buffer.count) <= virtualSize else {
            throw QCOW2WriterError.outsideAllocation(path, offset)
        }
        var pieces: [(host: UInt64, range: Range<Int>)] = []
        var done = 0
        while done < buffer.count {
            let position = offset + UInt64(done)
            let cluster = position / clusterSize
            guard let run = run(containing: cluster) else { throw QCOW2WriterError.outsideAllocation(path, position) }
            let runEnd = (run.guest + run.count) * clusterSize
            let count = Int(min(UInt64(buffer.count - done), runEnd - position))
            pieces.append((run.host + position - run.guest * clusterSize, done..<done + count))
            done += count
        }
        for piece in pieces {
            try file.write(UnsafeRawBufferPointer(rebasing: buffer[piece.range]), at: piece.host)
        }
    }

    /// Copies guest bytes from a positional reader (e.g. a sparse raw file's data extents).
    public func copy(from source: RawFile, ranges: [Range<UInt64>], sourceOffset: UInt64 = 0) throws {
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

    /// SHA-256 of the finished file, read back (from the page cache) while another thread flushes it to disk,
    /// so that the hash costs no time of its own when the flush is the slower of the two.
    public func hashWhileSyncing() throws -> [UInt8] {
        let flushed = ResultBox()
        let group = DispatchGroup()
        DispatchQueue.global().async(group: group) { [file] in
            do { try file.sync() } catch { flushed.set(error) }
        }
        let digest = Result { try Crypto.hashFile(path) }
        group.wait()
        if let error = flushed.error { throw error }
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
                    guard nonZero else { continue }
                    if let last = ranges.last, last.upperBound == part.lowerBound {
                        ranges[ranges.count - 1] = last.lowerBound..<part.upperBound
                    } else {
                        ranges.append(part)
                    }
                }
            }
        }
        return ranges
    }

    /// Plaintext regions as `DataEncryption.run` writes them (whole sectors, at most `limit`), moved by `offset`.
    public static func sectorRanges(_ regions: [Range<UInt64>], limit: UInt64, offset: UInt64) -> [Range<UInt64>] {
        let sector = UInt64(LUKSLayout.sectorSize)
        return regions.map {
            let start = $0.lowerBound / sector * sector, end = min(limit, ($0.upperBound + sector - 1) / sector * sector)
            return (offset + start)..<(offset + max(start, end))
        }
    }

    private func run(containing cluster: UInt64) -> (guest: UInt64, count: UInt64, host: UInt64)? {
        var low = 0, high = runs.count
        while low < high {
            let middle = (low + high) / 2
            if runs[middle].guest + runs[middle].count <= cluster { low = middle + 1 } else { high = middle }
        }
        guard low < runs.count, runs[low].guest <= cluster else { return nil }
        return runs[low]
    }
}

/// Something guest bytes can be written to by offset: a raw disk file or a QCOW2 being written.
public protocol PositionalWriter: AnyObject, Sendable {
    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws
}

extension RawFile: PositionalWriter {}

private final class ResultBox: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Error?
    func set(_ error: Error) { lock.withLock { stored = error } }
    var error: Error? { lock.withLock { stored } }
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
