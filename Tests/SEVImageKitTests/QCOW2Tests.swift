import Foundation
import Testing
@testable import SEVImageKit

@Suite(.enabled(if: canCheckImages, "needs qemu-img and the image tools"))
struct QCOW2Tests {
    /// Our reader against qemu-img's raw conversion; in-place writes land where qemu-img sees them.
    @Test func readsAndWritesLikeQemuImg() throws {
        let scratch = try Scratch()
        let tree = scratch.file("tree")
        try makeRichTree(at: tree, owners: false)
        let image = scratch.file("vm.qcow2")
        try #require(try sevimage(["create", "--rootfs", tree, "--output", image, "--size", "200M", "--quiet"]).status == 0)
        let raw = scratch.file("vm.raw")
        try runChecked("qemu-img", ["convert", "-O", "raw", image, raw])
        let expected = try Data(contentsOf: URL(fileURLWithPath: raw))
        let qcow = try QCOW2Image(path: image)
        #expect(qcow.virtualSize == UInt64(expected.count))
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<300 {
            let offset = UInt64.random(in: 0..<(qcow.virtualSize - 300_000), using: &generator)
            let count = Int.random(in: 1...300_000, using: &generator)
            #expect(try qcow.read(count: count, at: offset) == Array(expected[Int(offset)..<Int(offset) + count]))
        }
        // The whole LUKS header area is allocated: it can be rewritten in place.
        let manifest = try Manifest.decode(Data(contentsOf: URL(fileURLWithPath: scratch.file("vm.manifest.json"))), path: "m")
        let headerStart = manifest.partitions[1].firstLBA * 512
        let writer = try QCOW2Image(path: image, writable: true)
        let patch = [UInt8](repeating: 0xA5, count: 200_000)
        try patch.withUnsafeBytes { try writer.write($0, at: headerStart + 100_000) }
        try writer.sync()
        try runChecked("qemu-img", ["check", image])
        try runChecked("qemu-img", ["convert", "-O", "raw", image, raw + "2"])
        let after = try Data(contentsOf: URL(fileURLWithPath: raw + "2"))
        #expect(Array(after[Int(headerStart) + 100_000..<Int(headerStart) + 300_000]) == patch)
        // A hole cannot be written in place.
        #expect(throws: DiskError.self) { try patch.withUnsafeBytes { try writer.write($0, at: qcow.virtualSize - 300_000) } }
    }

    @Test(arguments: [Data(), Data("QFI".utf8), Data(repeating: 0, count: 512), Data([0x51, 0x46, 0x49, 0xFB] + [UInt8](repeating: 0, count: 200))])
    func rejectsWhatIsNotQCOW2(_ bytes: Data) throws {
        let scratch = try Scratch()
        try bytes.write(to: URL(fileURLWithPath: scratch.file("bad.qcow2")))
        #expect(throws: DiskError.self) { try QCOW2Image(path: scratch.file("bad.qcow2")) }
    }
}

@Suite(.enabled(if: canCheckImages, "needs qemu-img and qemu-io"))
struct QCOW2DirectReadTests {
    /// Reads that bypass the page cache (reencrypt's) return what qemu-img converts the image to, whatever the
    /// cluster size (512-byte clusters are smaller than O_DIRECT's alignment), the order of the clusters in the
    /// file (written backwards here, so guest neighbours are not host neighbours), and on a filesystem without
    /// direct I/O (tmpfs).
    @Test(arguments: [9, 12, 16])
    func directReadsMatchQemuImg(clusterBits: Int) throws {
        let scratch = try Scratch()
        var places = [scratch.path]
        let tmpfs = "/dev/shm/sevimage-test-\(getpid())-\(clusterBits)"
        if mkdir(tmpfs, 0o700) == 0 { places.append(tmpfs) }
        defer { try? FileManager.default.removeItem(atPath: tmpfs) }
        for place in places {
            let image = place + "/d.qcow2", raw = place + "/d.raw"
            try runChecked("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=\(1 << clusterBits)", image, "8M"])
            var writes: [String] = []
            for (index, offset) in stride(from: 7 << 20, through: 0, by: -(3 << 18)).enumerated() {
                writes += ["-c", "write -P \(0x11 + index) \(offset) \(200_000 + index * 4096)"]
            }
            try runChecked("qemu-io", ["-f", "qcow2"] + writes + [image])
            try runChecked("qemu-img", ["convert", "-O", "raw", image, raw])
            let expected = try Data(contentsOf: URL(fileURLWithPath: raw))
            let direct = try QCOW2Image(path: image, directReads: true)
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
            defer { buffer.deallocate() }
            for offset in stride(from: UInt64(0), to: 8 << 20, by: 1 << 20) {
                try direct.read(into: buffer, at: offset)
                #expect(sameBytes(Data(buffer), expected[Int(offset)..<Int(offset) + (1 << 20)]), "\(place), 2^\(clusterBits)-byte clusters, at \(offset)")
            }
            // Unaligned pieces go through the page cache.
            #expect(try direct.read(count: 10_000, at: 1_234_567) == Array(expected[1_234_567..<1_244_567]))
        }
    }
}
