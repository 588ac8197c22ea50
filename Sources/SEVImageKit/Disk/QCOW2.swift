import Foundation

/// Reads a QCOW2 image's guest view, and writes in place where the guest data already has a cluster.
///
///     host file:  | header | L1 table | refcount table/blocks | L2 tables | data clusters ... |
///     guest byte g  ->  L1[g >> (cluster_bits + l2_bits)]  ->  L2 table
///                   ->  L2[(g >> cluster_bits) % l2_entries]  ->  host cluster + (g % cluster_size)
///
/// Fields are big-endian (QEMU's docs/interop/qcow2.txt). Unallocated and zero clusters read as zeros.
/// Writes never allocate: they go only to clusters that are allocated, uncompressed and not shared
/// (the L2 entry's COPIED bit, refcount exactly 1), which is how `rotate` updates a LUKS header in
/// place without touching the rest of the file. sevimage writes its images so that the whole LUKS
/// header area is allocated.
public final class QCOW2Image {
    public let path: String
    public let virtualSize: UInt64
    public let clusterSize: UInt64
    private let clusterBits: UInt64
    private let l2Entries: UInt64
    private let l1: [UInt64]
    /// Internal snapshots (`qemu-img snapshot -c`): their clusters are shared, so not writable in place.
    public let snapshots: UInt32
    private let file: RawFile
    /// The file opened again with O_DIRECT for `read`, or -1.
    private let directFD: Int32

    static let offsetMask: UInt64 = 0x00FF_FFFF_FFFF_FE00
    static let copied: UInt64 = 1 << 63
    static let compressed: UInt64 = 1 << 62
    static let zeroFlag: UInt64 = 1

    /// `directReads`: bulk reads bypass the page cache (`O_DIRECT`), for a reader that goes through the data once.
    public init(path: String, writable: Bool = false, directReads: Bool = false) throws {
        self.path = path
        let file = try RawFile(path: path, writable: writable)
        self.file = file
        directFD = directReads ? open(path, O_RDONLY | O_CLOEXEC | GNUCalls.directIO) : -1
        let fileSize = file.size
        guard fileSize >= 104 else { throw DiskError.notAnImage(path, "too short for a QCOW2 header") }
        var header = [UInt8](repeating: 0, count: 104)
        try header.withUnsafeMutableBytes { try file.read(into: $0, at: 0) }
        guard header[0..<4] == [0x51, 0x46, 0x49, 0xFB] else { throw DiskError.notAnImage(path, "not a QCOW2 file (no QFI magic)") }
        let version = header.be32(at: 4)
        guard version == 2 || version == 3 else { throw DiskError.notAnImage(path, "QCOW2 version \(version) is not supported") }
        guard header.be64(at: 8) == 0 else {
            throw DiskError.notAnImage(path, "it has a backing file (QEMU would read another host file as part of the disk)")
        }
        guard header.be32(at: 32) == 0 else { throw DiskError.notAnImage(path, "it uses QCOW2's own encryption") }
        if version == 3 {
            let incompatible = header.be64(at: 72)
            if incompatible & 1 != 0 { throw DiskError.notAnImage(path, "it is marked dirty; run qemu-img check -r all first") }
            if incompatible & 2 != 0 { throw DiskError.notAnImage(path, "QEMU marked it corrupt") }
            if incompatible & 4 != 0 {
                throw DiskError.notAnImage(path, "it has an external data file (QEMU would use another host file as the disk's data)")
            }
            if incompatible & ~UInt64(1 | 2) != 0 {
                throw DiskError.notAnImage(path, "it uses QCOW2 features this reader does not know (0x\(String(incompatible, radix: 16)))")
            }
        }
        let bits = UInt64(header.be32(at: 20))
        guard (9...21).contains(bits) else { throw DiskError.notAnImage(path, "cluster size 2^\(bits) is out of range") }
        clusterBits = bits
        clusterSize = 1 << bits
        l2Entries = clusterSize / 8
        virtualSize = header.be64(at: 24)
        snapshots = header.be32(at: 60)
        let l1Size = UInt64(header.be32(at: 36))
        let l1Offset = header.be64(at: 40)
        // Without overflow for any header values (found by Fuzz/FuzzQCOW2).
        let perL1Entry = clusterSize * l2Entries
        let needed = virtualSize / perL1Entry + (virtualSize % perL1Entry == 0 ? 0 : 1)
        guard l1Size >= needed, l1Size <= 32 << 20, l1Offset % clusterSize == 0, l1Offset <= fileSize, l1Size * 8 <= fileSize - l1Offset else {
            throw DiskError.notAnImage(path, "its L1 table is damaged or truncated")
        }
        var table = [UInt8](repeating: 0, count: Int(l1Size * 8))
        try table.withUnsafeMutableBytes { try file.read(into: $0, at: l1Offset) }
        l1 = (0..<Int(l1Size)).map { table.be64(at: $0 * 8) }
        // The refcount table and its blocks must lie inside the file: sevimage and qemu-img write them at the
        // end, so a cut-off copy shows here first.
        let refcountOffset = header.be64(at: 48), refcountClusters = UInt64(header.be32(at: 56))
        guard refcountOffset % clusterSize == 0, refcountClusters <= fileSize / clusterSize, refcountOffset <= fileSize,
              refcountClusters * clusterSize <= fileSize - refcountOffset else {
            throw DiskError.notAnImage(path, "its refcount table is damaged or truncated")
        }
        var refcounts = [UInt8](repeating: 0, count: Int(refcountClusters * clusterSize))
        try refcounts.withUnsafeMutableBytes { try file.read(into: $0, at: refcountOffset) }
        for index in 0..<refcounts.count / 8 {
            let block = refcounts.be64(at: index * 8)
            guard block == 0 || (block % clusterSize == 0 && block <= fileSize - clusterSize) else {
                throw DiskError.notAnImage(path, "a refcount block lies outside the file (truncated?)")
            }
        }
    }

    deinit { if directFD >= 0 { close(directFD) } }

    /// Where guest offset `offset` lives in the host file: nil for unallocated or zero clusters.
    /// `writable` says whether the cluster may be written in place.
    func hostOffset(_ offset: UInt64) throws -> (host: UInt64, writable: Bool)? {
        guard offset < virtualSize else { throw DiskError.notAnImage(path, "read past the end of the virtual disk") }
        let cluster = offset >> clusterBits
        let l1Entry = l1[Int(cluster / l2Entries)]
        let l2Offset = l1Entry & Self.offsetMask
        guard l2Offset != 0 else { return nil }
        guard l2Offset % clusterSize == 0, l2Offset + clusterSize <= file.size else {
            throw DiskError.notAnImage(path, "an L2 table points outside the file")
        }
        var raw = [UInt8](repeating: 0, count: 8)
        try raw.withUnsafeMutableBytes { try file.read(into: $0, at: l2Offset + (cluster % l2Entries) * 8) }
        let entry = raw.be64(at: 0)
        if entry & Self.compressed != 0 { throw DiskError.notAnImage(path, "it holds compressed clusters; convert it without -c") }
        let host = entry & Self.offsetMask
        guard host != 0, entry & Self.zeroFlag == 0 else { return nil }
        guard host < file.size, host % clusterSize == 0 else {
            throw DiskError.notAnImage(path, "a data cluster lies outside the file")
        }
        return (host + offset % clusterSize, entry & Self.copied != 0 && l1Entry & Self.copied != 0)
    }

    /// Reads guest bytes; holes read as zeros. Clusters that follow each other in the host file are read with one
    /// call, with `O_DIRECT` where `directReads` was asked for and the filesystem and the buffer's alignment allow.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        var done = 0
        while done < buffer.count {
            let position = offset + UInt64(done)
            var count = min(buffer.count - done, Int(clusterSize - position % clusterSize))
            guard let (host, _) = try hostOffset(position) else {
                UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + count]).initializeMemory(as: UInt8.self, repeating: 0)
                done += count
                continue
            }
            while done + count < buffer.count, let (next, _) = try hostOffset(position + UInt64(count)), next == host + UInt64(count) {
                count += min(buffer.count - done - count, Int(clusterSize))
            }
            let run = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + count])
            let direct = try directFD >= 0 && RawFile.readDirect(directFD, path: path, into: run, at: host)
            if !direct {
                try file.read(into: run, at: host)
            }
            done += count
        }
    }

    public func read(count: Int, at offset: UInt64) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        try bytes.withUnsafeMutableBytes { try read(into: $0, at: offset) }
        return bytes
    }

    /// Writes guest bytes in place; refuses (before writing anything) if any cluster is unallocated or shared.
    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        for (host, range) in try plan(count: buffer.count, at: offset) {
            try file.write(UnsafeRawBufferPointer(rebasing: buffer[range]), at: host)
        }
    }

    /// Refuses, writing nothing, when `count` guest bytes at `offset` cannot all be updated in place: a hole,
    /// or a cluster shared with an internal snapshot.
    public func checkWritable(count: Int, at offset: UInt64) throws { _ = try plan(count: count, at: offset) }

    /// The host file's byte ranges that a write of `count` guest bytes at `offset` changes (and nothing else
    /// in the file changes: writes never allocate). Refuses as `write` does.
    public func hostRanges(count: Int, at offset: UInt64) throws -> [Range<UInt64>] {
        try plan(count: count, at: offset).map { $0.host..<($0.host + UInt64($0.range.count)) }
    }

    /// Where each piece of a guest write goes in the file.
    private func plan(count total: Int, at offset: UInt64) throws -> [(host: UInt64, range: Range<Int>)] {
        var plan: [(host: UInt64, range: Range<Int>)] = []
        var done = 0
        while done < total {
            let position = offset + UInt64(done)
            let count = min(total - done, Int(clusterSize - position % clusterSize))
            guard let (host, writable) = try hostOffset(position), writable else {
                if snapshots > 0 {
                    throw DiskError.notAnImage(path, "its internal snapshots (\(snapshots)) share the clusters of the LUKS header; delete them (qemu-img snapshot -l, qemu-img snapshot -d NAME) or keep a copy elsewhere, then run again")
                }
                throw DiskError.notAnImage(path, "guest offset \(position) has no private cluster to update in place")
            }
            plan.append((host, done..<done + count))
            done += count
        }
        return plan
    }

    public func sync() throws { try file.sync() }

    /// The guest byte ranges backed by data clusters (merged, ascending); holes and zero clusters are left out.
    /// Reads only the L2 tables that exist, so the cost grows with the data, not with the virtual size.
    public func allocatedRanges() throws -> [Range<UInt64>] {
        var ranges: [Range<UInt64>] = []
        var table = [UInt8](repeating: 0, count: Int(clusterSize))
        for (index, l1Entry) in l1.enumerated() {
            guard UInt64(index) * clusterSize * l2Entries < virtualSize else { break }  // entries past the disk: unused
            let l2Offset = l1Entry & Self.offsetMask
            guard l2Offset != 0 else { continue }
            guard l2Offset % clusterSize == 0, l2Offset + clusterSize <= file.size else {
                throw DiskError.notAnImage(path, "an L2 table points outside the file")
            }
            try table.withUnsafeMutableBytes { try file.read(into: $0, at: l2Offset) }
            for slot in 0..<Int(l2Entries) {
                let entry = table.be64(at: slot * 8)
                guard entry & Self.offsetMask != 0, entry & Self.zeroFlag == 0 || entry & Self.compressed != 0 else { continue }
                let start = (UInt64(index) * l2Entries + UInt64(slot)) * clusterSize
                guard start < virtualSize else { break }
                ranges.appendMerging(start..<min(virtualSize, start + clusterSize))
            }
        }
        return ranges
    }
}
