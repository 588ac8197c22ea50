import Foundation
import Testing
@testable import SEVImageKit

/// RootEncryption follows a file while it is being written (as mke2fs writes the root filesystem), and the
/// finished QCOW2 must be exactly what encrypting the final file at the end would give: checked by qemu-img
/// and an independent decryption (Python's `cryptography`), also for chunks changed or emptied after they
/// were encrypted ahead and for data added after the follower stopped.
@Suite(.enabled(if: hasTool("qemu-img"), "needs qemu-img (qemu-utils)"))
struct RootEncryptionTests {
    static let mib: UInt64 = 1 << 20

    @Test func endsExactlyAsIfEverythingWereEncryptedAtTheEnd() throws {
        let scratch = try Scratch()
        let size = 40 * Self.mib, offset = 2 * Self.mib
        let plainPath = scratch.file("plain"), qcowPath = scratch.file("out.qcow2")
        let plain = try RawFile(creating: plainPath, size: size)
        let keyBytes = (0..<64).map { _ in UInt8.random(in: 0...255) }
        let qcow = try QCOW2Writer(creating: qcowPath, virtualSize: offset + size)
        let encryption = try RootEncryption(plaintext: plainPath, size: size, key: SecretBytes(keyBytes), target: qcow, targetOffset: offset)
        func write(_ count: Int, at position: UInt64) throws {
            let bytes = (0..<count).map { _ in UInt8.random(in: 1...255) }
            try bytes.withUnsafeBytes { try plain.write($0, at: position) }
        }
        func waitUntilWrittenAhead(_ chunk: Int) throws {
            let deadline = Date().addingTimeInterval(20)
            while !encryption.wasWrittenAhead(chunk) && Date() < deadline { Thread.sleep(forTimeInterval: 0.005) }
            try #require(encryption.wasWrittenAhead(chunk), "chunk \(chunk) was not encrypted ahead")
        }

        encryption.startFollowing(interval: 0.01)
        // Like mke2fs: chunks filled front to back, some only partly (a hole in a cluster, clusters left empty).
        for chunk in 0..<8 { try write(Int(Self.mib), at: UInt64(chunk) * Self.mib) }
        try write(10_000, at: 9 * Self.mib + 70_000)
        try waitUntilWrittenAhead(2)
        try waitUntilWrittenAhead(3)
        try waitUntilWrittenAhead(9)
        // Then it comes back: a block rewritten in a chunk already encrypted, another chunk emptied, a partly
        // used one given a new cluster.
        try write(4096, at: 2 * Self.mib + 8192)
        try runChecked("fallocate", ["--punch-hole", "--offset", String(3 * Self.mib), "--length", String(Self.mib), plainPath])
        try write(512, at: 9 * Self.mib + 900_000)
        for chunk in 12..<20 { try write(Int(Self.mib) - 4096, at: UInt64(chunk) * Self.mib) }
        try encryption.stopFollowing()
        // Like debugfs afterwards: a few blocks in a chunk nobody has seen.
        try write(4096, at: 33 * Self.mib + 4096)

        // The final plaintext, kept aside: completing frees the work file's space as it goes.
        let finalPath = scratch.file("final")
        try runChecked("cp", ["--sparse=always", plainPath, finalPath])
        let (encrypted, digest) = try encryption.complete(wipeFreeSpace: false)
        let left = try plain.dataExtents()
        #expect(left.isEmpty, "the plaintext's space was not given back: \(left)")
        #expect(hex(digest) == (try oracleImageDigest(qcowPath)))
        try runChecked("qemu-img", ["check", qcowPath])

        // Every allocated cluster of the data segment decrypts to the final plaintext (zeros where it has
        // holes), and every byte of data has a cluster.
        let map = try runChecked("qemu-img", ["map", "--output=json", "-f", "qcow2", qcowPath]).stdoutData
        let entries = try #require(try JSONSerialization.jsonObject(with: map) as? [[String: Any]])
        let allocated = mergeRanges(entries.compactMap { entry -> Range<UInt64>? in
            guard (entry["data"] as? NSNumber)?.boolValue == true, let start = (entry["start"] as? NSNumber)?.uint64Value,
                  let length = (entry["length"] as? NSNumber)?.uint64Value, start >= offset else { return nil }
            return (start - offset)..<(start - offset + length)
        })
        #expect(encrypted == allocated.reduce(0) { $0 + UInt64($1.count) })
        for extent in try RawFile(path: finalPath, writable: false).dataExtents() {
            #expect(allocated.contains { $0.lowerBound <= extent.lowerBound && extent.upperBound <= $0.upperBound }, "\(extent) has no cluster")
        }
        let raw = scratch.file("disk.raw"), keyFile = scratch.file("key"), decrypted = scratch.file("decrypted")
        try runChecked("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", qcowPath, raw])
        try Data(keyBytes).write(to: URL(fileURLWithPath: keyFile))
        try runChecked(python3, [repositoryRoot.path + "/Tests/Oracles/luks_decrypt.py", raw, keyFile, String(offset), "4096", decrypted])
        let clear = try Data(contentsOf: URL(fileURLWithPath: decrypted))
        let expected = try Data(contentsOf: URL(fileURLWithPath: finalPath))
        for range in allocated {
            let bounds = Int(range.lowerBound)..<Int(range.upperBound)
            #expect(sameBytes(clear[bounds], expected[bounds]), "cluster range \(range) does not decrypt to the final plaintext")
        }
        // The emptied chunk kept its clusters (they were written ahead) and decrypts to its zeros.
        #expect(allocated.contains { $0.contains(3 * Self.mib) })
    }
}
