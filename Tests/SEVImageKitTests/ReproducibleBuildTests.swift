import Foundation
import Testing
@testable import SEVImageKit

/// Two `create` runs with the same `--seed` and `SOURCE_DATE_EPOCH` (at different times, from different
/// directories, in different time zones) give a byte-identical ESP, the same plaintext root filesystem and the same manifest but
/// for the image hash. The LUKS header differs by design: salts and the volume key come from the CSPRNG.
@Suite(.enabled(if: canCheckImages, "needs the image tools, cryptsetup and Python's cryptography"))
struct ReproducibleBuildTests {
    @Test func twoSeededBuildsGiveTheSameESPAndPlaintextRoot() throws {
        let scratch = try Scratch()
        let tree = scratch.file("tree")
        try makeRichTree(at: tree, owners: getuid() == 0)
        var opened: [OpenedImage] = [], manifests: [[String: Any]] = [], plains: [String] = []
        for run in 1...2 {
            let directory = scratch.file("run\(run)")
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let image = directory + "/vm.qcow2"
            let result = try sevimage(["create", "--rootfs", tree, "--output", image, "--size", "200M", "--seed", "pipeline-42"],
                                      // Two time zones: FAT holds local time, the ESP must not.
                                      environment: ["SOURCE_DATE_EPOCH": "1700000000", "TZ": run == 1 ? "UTC0" : "JST-9"])
            try #require(result.status == 0, "\(result)")
            // Captured without a terminal: plain step lines, no progress bar escapes or carriage returns.
            #expect(result.stdout.isEmpty && !result.stderr.contains("\r") && !result.stderr.contains("\u{1B}"))
            #expect(result.stderr.split(separator: "\n").allSatisfy { $0.hasPrefix("sevimage: ") })
            let image1 = try OpenedImage(image: image)
            opened.append(image1)
            plains.append(try image1.decryptRoot(passphraseFile: directory + "/vm.passphrase"))
            let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: directory + "/vm.manifest.json")))
            manifests.append(try #require(manifest as? [String: Any]))
            if run == 1 { sleep(2) }  // FAT and tar times have 2-second and 1-second resolution
        }

        // The ESP, byte for byte (GRUB's memdisk, FAT times and volume id included).
        #expect(try runProgram("cmp", [opened[0].espPartition, opened[1].espPartition]).status == 0)

        // The manifests, but for the image digest.
        var stripped = manifests.map { manifest -> NSDictionary in
            var copy = manifest
            var image = copy["image"] as? [String: Any] ?? [:]
            image["blockSHA256"] = nil
            copy["image"] = image
            return copy as NSDictionary
        }
        #expect(stripped[0] == stripped[1])
        #expect((manifests[0]["reproducible"] as? [String: Any])?["seeded"] as? Bool == true)
        #expect(manifests[0]["createdAt"] as? String == "2023-11-14T22:13:20Z")
        stripped.removeAll()

        // The plaintext root: both clean, and equal wherever either image holds data. Sectors whose
        // ciphertext is all zeros were never written (holes): they decrypt to key-dependent noise that
        // ext4 never reads, and must be the same sectors in both images.
        for plain in plains { try runChecked("e2fsck", ["-fn", plain]) }
        // But for the one block that must differ: /boot/sevimage-unlock.img holds a key from the CSPRNG (a key
        // derived from the seed, which is no secret, would open the disk for anyone who knows it).
        let archives = try plains.map { plain -> Data in
            let block = try #require(UInt64(try runChecked("debugfs", ["-R", "blocks /boot/sevimage-unlock.img", plain]).stdout
                .trimmingCharacters(in: .whitespacesAndNewlines)), "the archive fits one block")
            let handle = try FileHandle(forUpdating: URL(fileURLWithPath: plain))
            try handle.seek(toOffset: block * 4096)
            let contents = try handle.read(upToCount: 4096) ?? Data()
            try handle.seek(toOffset: block * 4096)
            try handle.write(contentsOf: Data(count: 4096))
            try handle.close()
            return contents
        }
        #expect(archives[0].count == 4096 && archives[0] != archives[1])
        let comparison = try compareWrittenSectors(ciphertexts: [opened[0].luksPartition, opened[1].luksPartition], plaintexts: plains)
        #expect(comparison.differing == 0 && comparison.writtenInOnlyOne == 0)
        #expect(comparison.written > 100, "the comparison covered \(comparison.written) sectors")
        // And the same through debugfs: the inode of a file and the tree listing.
        let listings = try plains.map { try runChecked("debugfs", ["-R", "ls -l /etc", $0]).stdout }
        #expect(listings[0] == listings[1])
    }

    /// FAT entries hold 1980 to 2107: a SOURCE_DATE_EPOCH outside is clamped, never wrapped (mtools turns 1970
    /// into 2098, 2128 into 2000), and the times read back in UTC whatever zone the build ran in.
    @Test(arguments: [(Int64(0), "1980-01-01   0:00"), (Int64(1_700_000_000), "2023-11-14  22:13"), (Int64(5_000_000_000), "2107-12-31  23:59")])
    func espTimesAreClampedToFAT(_ timestamp: Int64, _ shown: String) throws {
        let scratch = try Scratch()
        let file = scratch.file("f")
        try Data("x".utf8).write(to: URL(fileURLWithPath: file))
        let esp = scratch.file("esp.img")
        try ESPBuilder(volumeID: 0x1234_5678).build(path: esp, size: 34 << 20, files: [("EFI/BOOT/x.txt", file)], timestamp: timestamp)
        for directory in ["::/EFI/BOOT", "::/EFI"] {
            let listing = try runProgram("mdir", ["-i", esp, directory], environment: ["TZ": "UTC0", "MTOOLSRC": "/dev/null", "MTOOLS_SKIP_CHECK": "1"])
            #expect(listing.status == 0, "\(listing)")
            // Every entry, "." and ".." included (their times are the directories').
            let entries = listing.stdout.split(separator: "\n").filter { $0.contains(/\d{4}-\d\d-\d\d/) }
            #expect(entries.count == 3 && entries.allSatisfy { $0.contains(shown) }, "\(listing.stdout)")
        }
    }

    struct Comparison { var written = 0, differing = 0, writtenInOnlyOne = 0 }

    /// Walks the data segments 4 KiB at a time: a sector is written when its ciphertext is not all zeros.
    func compareWrittenSectors(ciphertexts: [String], plaintexts: [String]) throws -> Comparison {
        let sector = 4096, header = UInt64(LUKSLayout.headerSize)
        let handles = try (ciphertexts + plaintexts).map { try FileHandle(forReadingFrom: URL(fileURLWithPath: $0)) }
        defer { for handle in handles { try? handle.close() } }
        try handles[0].seek(toOffset: header)
        try handles[1].seek(toOffset: header)
        var result = Comparison()
        let zero = Data(count: sector)
        while true {
            let chunks = try handles.map { try $0.read(upToCount: 1 << 20) ?? Data() }
            if chunks.contains(where: \.isEmpty) { break }
            let count = chunks.map(\.count).min() ?? 0
            for start in stride(from: 0, to: count - sector + 1, by: sector) {
                let range = start..<(start + sector)
                let written = [chunks[0][chunks[0].startIndex + range.lowerBound..<chunks[0].startIndex + range.upperBound] != zero,
                               chunks[1][chunks[1].startIndex + range.lowerBound..<chunks[1].startIndex + range.upperBound] != zero]
                if written[0] != written[1] { result.writtenInOnlyOne += 1; continue }
                guard written[0] else { continue }
                result.written += 1
                if chunks[2][chunks[2].startIndex + range.lowerBound..<chunks[2].startIndex + range.upperBound]
                    != chunks[3][chunks[3].startIndex + range.lowerBound..<chunks[3].startIndex + range.upperBound] {
                    result.differing += 1
                }
            }
        }
        return result
    }
}
