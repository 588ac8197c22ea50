import Foundation
import Testing
@testable import SEVImageKit

/// QCOW2Writer against qemu-img: `check` finds no error or leak, `compare` sees the raw disk's bytes,
/// `map` shows clusters only where there is data, and our reader can rewrite its clusters in place;
/// clusters allocated in any order, from several threads, while others are being written.
@Suite(.enabled(if: hasTool("qemu-img"), "needs qemu-img (qemu-utils)"))
struct QCOW2WriterTests {
    struct Case: Sendable, CustomStringConvertible {
        var clusterBits: UInt64
        var virtualSize: UInt64
        var extents: [(offset: UInt64, count: Int)]
        var description: String { "2^\(clusterBits)-byte clusters, \(virtualSize) bytes" }
    }

    static let cases: [Case] = [
        // Default clusters: an extent across the 512 MiB reach of one L2 table, unaligned ones, the last byte.
        Case(clusterBits: 16, virtualSize: (1 << 30) + (3 << 20) + 512, extents: [
            (0, 17_408), (1 << 20, 3 << 20), ((512 << 20) - 100_000, 300_000), ((700 << 20) + 4097, 5),
            ((1 << 30) + (3 << 20) - 1000, 1512),
        ]),
        // 512-byte clusters: many L2 tables, several refcount blocks and a refcount table of several clusters.
        Case(clusterBits: 9, virtualSize: 64 << 20, extents: [
            (0, 1 << 20), ((3 << 20) + 77, (9 << 20) + 3), ((40 << 20) - 511, 1024), ((64 << 20) - 512, 512),
        ]),
    ]

    @Test(arguments: cases)
    func matchesTheRawDiskAndStaysSparse(_ test: Case) throws {
        let scratch = try Scratch()
        let rawPath = scratch.file("disk.raw"), qcowPath = scratch.file("disk.qcow2")
        let raw = try RawFile(creating: rawPath, size: test.virtualSize)
        var generator = SystemRandomNumberGenerator()
        var pieces: [(offset: UInt64, bytes: [UInt8])] = []
        for extent in test.extents {
            var bytes = (0..<extent.count).map { _ in UInt8.random(in: 1...255, using: &generator) }
            bytes[bytes.count / 2] = 0
            try bytes.withUnsafeBytes { try raw.write($0, at: extent.offset) }
            pieces.append((extent.offset, bytes))
        }
        let allocated = test.extents.map { $0.offset..<($0.offset + UInt64($0.count)) }
        let writer = try QCOW2Writer(creating: qcowPath, virtualSize: test.virtualSize, clusterBits: test.clusterBits)
        // Allocated and written out of order from several threads, as the encryption does.
        let shuffled = pieces.shuffled()
        let failures = ErrorList()
        DispatchQueue.concurrentPerform(iterations: shuffled.count) { index in
            let piece = shuffled[index]
            writer.allocate(piece.offset..<(piece.offset + UInt64(piece.bytes.count)))
            do { try piece.bytes.withUnsafeBytes { try writer.write($0, at: piece.offset) } } catch { failures.add(error) }
        }
        #expect(failures.isEmpty)
        #expect(writer.fileSize == nil)
        try writer.finish()
        let digest = try writer.digestWhileSyncing()
        #expect(hex(digest) == (try oracleImageDigest(qcowPath)))
        #expect(try RawFile(path: qcowPath, writable: false).size == writer.fileSize)

        let check = try runChecked("qemu-img", ["check", "--output=json", qcowPath]).stdout
        #expect(check.contains("\"check-errors\": 0"))
        #expect(!check.contains("leaks") && !check.contains("corruptions"), "\(check)")
        #expect(try runProgram("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", rawPath, qcowPath]).status == 0)

        // Clusters only where the extents are.
        let cluster = UInt64(1) << test.clusterBits
        let expected = mergeRanges(allocated.map { ($0.lowerBound / cluster * cluster)..<min(test.virtualSize, ($0.upperBound + cluster - 1) / cluster * cluster) })
        #expect(writer.allocatedRanges == expected)
        let map = try runChecked("qemu-img", ["map", "--output=json", "-f", "qcow2", qcowPath]).stdoutData
        let entries = try #require(try JSONSerialization.jsonObject(with: map) as? [[String: Any]])
        let mapped = mergeRanges(entries.compactMap { entry -> Range<UInt64>? in
            guard (entry["data"] as? NSNumber)?.boolValue == true, let start = (entry["start"] as? NSNumber)?.uint64Value,
                  let length = (entry["length"] as? NSNumber)?.uint64Value else { return nil }
            return start..<(start + length)
        })
        #expect(mapped == expected)
        #expect(try #require(writer.fileSize) < expected.reduce(0) { $0 + UInt64($1.count) } + 64 * cluster + (1 << 20))

        // Our reader sees the same bytes and may rewrite every cluster in place (refcount 1, COPIED set).
        let reader = try QCOW2Image(path: qcowPath, writable: true)
        #expect(try reader.allocatedRanges() == expected)
        for piece in pieces {
            #expect(try reader.read(count: piece.bytes.count, at: piece.offset) == piece.bytes)
        }
        let patch = [UInt8](repeating: 0x5A, count: 100)
        try patch.withUnsafeBytes { try reader.write($0, at: pieces[0].offset) }
        try reader.sync()
        try runChecked("qemu-img", ["check", qcowPath])
    }

    @Test func refusesBytesOutsideItsClusters() throws {
        let scratch = try Scratch()
        let writer = try QCOW2Writer(creating: scratch.file("d.qcow2"), virtualSize: 8 << 20, allocated: [(1 << 20)..<(1 << 20) + 10])
        let bytes = [UInt8](repeating: 1, count: 4096)
        try bytes.withUnsafeBytes { try writer.write($0, at: 1 << 20) }
        let back = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 8)
        defer { back.deallocate() }
        try writer.read(into: back, at: 1 << 20)
        #expect(Array(back) == bytes)
        try writer.read(into: back, at: (1 << 20) + 8192)  // allocated, never written: zeros
        #expect(back.allSatisfy { $0 == 0 })
        try bytes.withUnsafeBytes { try writer.write($0, at: (1 << 20) + 65536 - 4096) }
        #expect(throws: QCOW2WriterError.self) { try bytes.withUnsafeBytes { try writer.write($0, at: (1 << 20) + 65536 - 4095) } }
        #expect(throws: QCOW2WriterError.self) { try bytes.withUnsafeBytes { try writer.write($0, at: 0) } }
        #expect(throws: QCOW2WriterError.self) { try bytes.withUnsafeBytes { try writer.write($0, at: (8 << 20) - 100) } }
    }

    /// Direct writes (aligned: straight to the disk; unaligned: through the page cache after all), mixed with
    /// buffered ones in neighbouring clusters, read back as written, by the writer and by qemu-img.
    @Test func directAndBufferedWritesMix() throws {
        let scratch = try Scratch()
        let size: UInt64 = 4 << 20
        let raw = try RawFile(creating: scratch.file("r"), size: size)
        let writer = try QCOW2Writer(creating: scratch.file("d.qcow2"), virtualSize: size)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 256 << 10, alignment: 4096)
        defer { buffer.deallocate() }
        let pieces: [(offset: UInt64, count: Int, direct: Bool)] = [
            (0, 256 << 10, true), (256 << 10, 4096, false), ((256 << 10) + 8192, 100_000, true),
            (1 << 20, 64 << 10, true), ((1 << 20) + (64 << 10), 512, true), (3 << 20, 12_288, false),
        ]
        for piece in pieces {
            let bytes = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<piece.count])
            for index in bytes.indices { bytes[index] = UInt8.random(in: 1...255) }
            writer.allocate(piece.offset..<(piece.offset + UInt64(piece.count)))
            try writer.write(UnsafeRawBufferPointer(bytes), at: piece.offset, direct: piece.direct)
            try raw.write(UnsafeRawBufferPointer(bytes), at: piece.offset)
            let back = UnsafeMutableRawBufferPointer.allocate(byteCount: piece.count, alignment: 8)
            defer { back.deallocate() }
            try writer.read(into: back, at: piece.offset)
            #expect(sameBytes(Data(back), Data(bytes)), "\(piece)")
        }
        try writer.finish()
        try writer.sync()
        try runChecked("qemu-img", ["check", scratch.file("d.qcow2")])
        #expect(try runProgram("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", scratch.file("r"), scratch.file("d.qcow2")]).status == 0)
    }

    /// The fingerprints that tell the image's completion whether a cluster changed: equal for equal bytes,
    /// different for a single changed bit, and keyed.
    @Test func fingerprintsTellChangedBytesApart() throws {
        var bytes = [UInt8](repeating: 7, count: 65536)
        let key = try SecretBytes(randomCount: 16)
        let one = try Crypto.Fingerprinter(key: key), two = try Crypto.Fingerprinter(key: key)
        let print = try bytes.withUnsafeBytes { try one.fingerprint($0) }
        #expect(try bytes.withUnsafeBytes { try two.fingerprint($0) } == print)
        #expect(try bytes.withUnsafeBytes { try one.fingerprint($0) } == print)
        bytes[40_000] ^= 0x10
        #expect(try bytes.withUnsafeBytes { try one.fingerprint($0) } != print)
        bytes[40_000] ^= 0x10
        #expect(try bytes.withUnsafeBytes { try Crypto.Fingerprinter(key: SecretBytes(randomCount: 16)).fingerprint($0) } != print)
        #expect(try bytes.withUnsafeBytes { try one.fingerprint(UnsafeRawBufferPointer(rebasing: $0[0..<4096])) } != print)
    }

    @Test func leavesZeroClustersOutOfTheRawDisksData() throws {
        let scratch = try Scratch()
        let raw = try RawFile(creating: scratch.file("r"), size: 4 << 20)
        let zeros = [UInt8](repeating: 0, count: 300_000), ones = [UInt8](repeating: 1, count: 10)
        try zeros.withUnsafeBytes { try raw.write($0, at: 0) }
        try ones.withUnsafeBytes { try raw.write($0, at: 200_000) }
        try ones.withUnsafeBytes { try raw.write($0, at: (3 << 20) + 5) }
        let ranges = try QCOW2Writer.nonZeroRanges(of: raw, excluding: (3 << 20)..<(4 << 20))
        #expect(ranges == [196_608..<262_144])
    }

    /// Block digests taken from the writes (reencrypt's) equal the oracle's over the finished file: whole
    /// clusters hashed as written (holes in them as zeros), clusters written in pieces and the metadata read back.
    @Test func digestsRecordedWhileWritingAreTheFilesOwn() throws {
        let scratch = try Scratch()
        let path = scratch.file("d.qcow2"), cluster = 1 << 16
        let writer = try QCOW2Writer(creating: path, virtualSize: 64 << 20, allocated: [(1 << 20)..<(3 << 20), (40 << 20)..<(40 << 20) + 1])
        let digests = WrittenClusterDigests(writer: writer)
        // 2 MiB from an unaligned start: 31 whole clusters recorded; the first and last are written in pieces.
        var bytes = (0..<(2 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        for hole in stride(from: 4096, to: bytes.count, by: 3 * 4096) { bytes.replaceSubrange(hole..<hole + 4096, with: repeatElement(0, count: 4096)) }
        try bytes.withUnsafeBytes { all in
            let start = UInt64(1 << 20) + 512
            let body = UnsafeRawBufferPointer(rebasing: all[0..<all.count - 512])
            // The zero sectors are left as holes, as reencrypt leaves sectors that were never written.
            for sector in stride(from: 0, to: body.count, by: 4096) {
                let piece = UnsafeRawBufferPointer(rebasing: body[sector..<min(body.count, sector + 4096)])
                if piece.contains(where: { $0 != 0 }) { try writer.write(piece, at: start + UInt64(sector)) }
            }
            digests.record(body, atGuest: start)
            try writer.write(UnsafeRawBufferPointer(rebasing: all[all.count - 512..<all.count]), at: 1 << 20)
            digests.record(UnsafeRawBufferPointer(rebasing: all[all.count - 512..<all.count]), atGuest: 1 << 20)
        }
        #expect(digests.recordedCount == 31)
        try writer.finish()
        let leaves = try digests.leavesWhileSyncing()
        #expect(Data(leaves.bytes) == (try oracleBlockDigests(path)))
        #expect(hex(leaves.combined()) == (try oracleImageDigest(path)))
        #expect(leaves.count * cluster == Int(try RawFile(path: path, writable: false).size))
    }
}

private final class ErrorList: @unchecked Sendable {
    private let lock = NSLock()
    private var errors: [Error] = []
    func add(_ error: Error) { lock.withLock { errors.append(error) } }
    var isEmpty: Bool { lock.withLock { errors.isEmpty } }
}
