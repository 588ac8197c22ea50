import Foundation
import Testing
@testable import SEVImageKit

/// The volume key `cryptsetup luksDump --dump-volume-key` recovers from a LUKS partition file.
private func reencryptVolumeKey(_ partition: String, passphraseFile: String, scratch: Scratch, name: String) throws -> Data {
    let keyFile = scratch.file(name)
    try runChecked("cryptsetup", ["luksDump", "--dump-volume-key", "--batch-mode", "--key-file", passphraseFile,
                                  "--volume-key-file", keyFile, partition])
    return try Data(contentsOf: URL(fileURLWithPath: keyFile))
}

/// Compares two decryptions of a root sector by sector over what was written: where the old ciphertext
/// holds data, the plaintexts must be equal; where it was never written (zeros), the new image must have
/// zeros too (it stayed a hole). Returns the number of data sectors compared.
private func compareWrittenSectors(oldCipher: String, newCipher: String, oldPlain: String, newPlain: String) throws -> Int {
    let sector = Int(LUKSLayout.sectorSize), chunk = 1 << 20
    let handles = try [oldCipher, newCipher].map { try FileHandle(forReadingFrom: URL(fileURLWithPath: $0)) }
    try handles.forEach { try $0.seek(toOffset: LUKSLayout.headerSize) }
    let plains = try [oldPlain, newPlain].map { try FileHandle(forReadingFrom: URL(fileURLWithPath: $0)) }
    var compared = 0, index = 0
    while true {
        let oc = try handles[0].read(upToCount: chunk) ?? Data(), nc = try handles[1].read(upToCount: chunk) ?? Data()
        let op = try plains[0].read(upToCount: chunk) ?? Data(), np = try plains[1].read(upToCount: chunk) ?? Data()
        if oc.isEmpty { break }
        #expect(oc.count == nc.count && op.count == np.count)
        for start in stride(from: 0, to: oc.count, by: sector) {
            let range = start..<min(oc.count, start + sector)
            if oc[oc.startIndex + range.lowerBound..<oc.startIndex + range.upperBound].allSatisfy({ $0 == 0 }) {
                #expect(nc[nc.startIndex + range.lowerBound..<nc.startIndex + range.upperBound].allSatisfy { $0 == 0 }, "sector \(index + start / sector) was a hole")
            } else {
                #expect(op[op.startIndex + range.lowerBound..<op.startIndex + range.upperBound]
                        == np[np.startIndex + range.lowerBound..<np.startIndex + range.upperBound], "sector \(index + start / sector) differs")
                compared += 1
            }
        }
        index += oc.count / sector
    }
    return compared
}

/// `sevimage reencrypt`, checked with cryptsetup, Python's AES-XTS, e2fsck and qemu-img.
@Suite(.enabled(if: canCheckImages, "needs the image tools, cryptsetup-bin, qemu-utils and Python's cryptography"))
struct ReencryptTests {
    @Test func newVolumeKeySameDataStillSparse() throws {
        let fixture = try KeysFixture()
        let before = try OpenedImage(image: fixture.image)
        let oldPlain = try before.decryptRoot(passphraseFile: fixture.passphraseFile)
        let oldKey = try reencryptVolumeKey(before.luksPartition, passphraseFile: fixture.passphraseFile, scratch: before.scratch, name: "old.key")
        let oldHeader = fixture.scratch.file("old-header.bin")
        try Data(contentsOf: URL(fileURLWithPath: before.luksPartition)).prefix(Int(LUKSLayout.headerSize))
            .write(to: URL(fileURLWithPath: oldHeader))
        let allocatedBefore = try runChecked("qemu-img", ["check", "--output=json", fixture.image]).stdout

        let result = try sevimage(["reencrypt", fixture.image, "--passphrase-file", fixture.passphraseFile, "--json"])
        try #require(result.status == 0, "\(result)")
        let json = try #require(try JSONSerialization.jsonObject(with: result.stdoutData) as? [String: Any])
        #expect(json["image"] as? String == fixture.image)
        #expect((json["reencryptedBytes"] as? Int ?? 0) > 3_000_000)

        // New passphrase opens, the old does not; a new volume key, same UUID.
        let opens = try fixture.opening([fixture.passphraseFile, fixture.originalPassphrase])
        #expect(opens[fixture.passphraseFile] == true && opens[fixture.originalPassphrase] == false)
        let after = try OpenedImage(image: fixture.image)
        let newKey = try reencryptVolumeKey(after.luksPartition, passphraseFile: fixture.passphraseFile, scratch: after.scratch, name: "new.key")
        #expect(newKey.count == 64 && newKey != oldKey)
        let uuid = { (path: String) in try runChecked("cryptsetup", ["luksUUID", path]).stdout }
        #expect(try uuid(after.luksPartition) == uuid(before.luksPartition))

        // The data: every written sector decrypts to what it held; holes stayed holes; ext4 is clean and holds the file.
        let newPlain = try after.decryptRoot(passphraseFile: fixture.passphraseFile)
        let compared = try compareWrittenSectors(oldCipher: before.luksPartition, newCipher: after.luksPartition, oldPlain: oldPlain, newPlain: newPlain)
        #expect(compared > 750)
        try runChecked("e2fsck", ["-fn", newPlain])
        let payload = try runChecked("debugfs", ["-R", "cat /etc/payload.bin", newPlain]).stdoutData
        #expect(sameBytes(payload, try Data(contentsOf: URL(fileURLWithPath: fixture.scratch.file("tree/etc/payload.bin")))))

        // The old header copy with the old passphrase yields the old key, which does not decrypt the new data.
        let spliced = fixture.scratch.file("spliced.luks")
        try runChecked("/bin/sh", ["-c", "cat '\(oldHeader)' > '\(spliced)' && tail -c +\(LUKSLayout.headerSize + 1) '\(after.luksPartition)' >> '\(spliced)'"])
        let splicedKey = try reencryptVolumeKey(spliced, passphraseFile: fixture.originalPassphrase, scratch: fixture.scratch, name: "spliced.key")
        #expect(splicedKey == oldKey)
        let garbage = fixture.scratch.file("garbage.ext4")
        try runChecked(python3, [repositoryRoot.path + "/Tests/Oracles/luks_decrypt.py", spliced, fixture.scratch.file("spliced.key"),
                                 String(LUKSLayout.headerSize), "4096", garbage])
        #expect(try runProgram("e2fsck", ["-fn", garbage]).status != 0)
        #expect(try runProgram("debugfs", ["-R", "cat /etc/payload.bin", garbage]).stdoutData != payload)

        // QCOW2 sound and still sparse; manifest updated, no secrets, nothing left behind.
        let check = try runChecked("qemu-img", ["check", "--output=json", fixture.image]).stdout
        func allocated(_ text: String) -> Int {
            let json = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any]
            return json?["allocated-clusters"] as? Int ?? -1
        }
        #expect(check.contains("\"check-errors\": 0"))
        #expect(allocated(check) <= allocated(allocatedBefore) + 2, "before \(allocated(allocatedBefore)), after \(allocated(check))")
        let manifest = try fixture.readManifest()
        #expect(manifest.rotations.last?.kind == "reencrypt")
        let oracleDigest = try oracleImageDigest(fixture.image)
        #expect(manifest.image.blockSHA256 == oracleDigest && manifest.image.sha256 == nil)
        #expect(manifest.luks.keyslots.map(\.role) == ["generated"])
        try expectDigestsHold(image: fixture.image, "reencrypt")
        let manifestText = try String(contentsOfFile: fixture.manifest, encoding: .utf8)
        let newPassphrase = try String(contentsOfFile: fixture.passphraseFile, encoding: .utf8)
        #expect(!manifestText.contains(newPassphrase) && !result.stdout.contains(newPassphrase) && !result.stderr.contains(newPassphrase))
        #expect(fixture.leftovers().isEmpty, "\(fixture.leftovers())")
    }

    /// SIGKILL after every durable step: before the new image is in place the original opens with the old
    /// passphrase, after it the new passphrase is on disk; a rerun finishes; the data survives every round.
    @Test func killedAfterEveryStepLosesNothing() throws {
        let fixture = try KeysFixture()
        let payload = try Data(contentsOf: URL(fileURLWithPath: fixture.scratch.file("tree/etc/payload.bin")))
        var step = 1
        var completedWithoutCrash = false
        while !completedWithoutCrash && step < 20 {
            let old = fixture.scratch.file("before-\(step).passphrase")
            try FileManager.default.copyItem(atPath: fixture.passphraseFile, toPath: old)
            let run = try sevimage(["reencrypt", fixture.image, "--passphrase-file", fixture.passphraseFile, "--quiet"],
                                   environment: ["SEVIMAGE_TEST_CRASH_AFTER": String(step)])
            if run.status == 0 {
                completedWithoutCrash = true
            } else {
                #expect(run.status == SIGKILL, "step \(step): \(run)")
                let newFile = fixture.scratch.file("vm.passphrase.new")
                let opens = try fixture.opening([old, fixture.passphraseFile, newFile])
                #expect(opens[old] == true || opens[fixture.passphraseFile] == true || opens[newFile] == true, "step \(step): nothing opens the image")
                let rerun = try sevimage(["reencrypt", fixture.image, "--passphrase-file", fixture.passphraseFile, "--quiet"])
                #expect(rerun.status == 0, "step \(step): \(rerun)")
            }
            #expect(try fixture.opens(fixture.passphraseFile), "step \(step)")
            #expect(try !fixture.opens(old), "step \(step): the old passphrase still opens")
            #expect(fixture.leftovers().isEmpty, "step \(step): \(fixture.leftovers())")
            try expectDigestsHold(image: fixture.image, "step \(step)")
            step += 1
        }
        #expect(completedWithoutCrash)
        #expect(step > 5)
        let opened = try OpenedImage(image: fixture.image)
        let plain = try opened.decryptRoot(passphraseFile: fixture.passphraseFile)
        try runChecked("e2fsck", ["-fn", plain])
        #expect(sameBytes(try runChecked("debugfs", ["-R", "cat /etc/payload.bin", plain]).stdoutData, payload))
        try runChecked("qemu-img", ["check", fixture.image])
        #expect(try fixture.readManifest().image.blockSHA256 == hex(try ImageDigest.of(file: fixture.image)))
    }

    @Test func wrongPassphraseOrLockLeavesEverythingAsItWas() throws {
        let fixture = try KeysFixture()
        let before = try Crypto.hashFile(fixture.image)
        let files = entries(of: fixture.scratch.path)
        let wrong = fixture.scratch.file("wrong.passphrase")
        try writePassphraseFile(wrong, "not it")
        let refused = try sevimage(["reencrypt", fixture.image, "--passphrase-file", wrong])
        #expect(refused.status == ExitStatus.wrongPassphrase.rawValue, "\(refused)")
        #expect(refused.stderr == "sevimage: error: the passphrase opens no keyslot of \(fixture.image)\n")
        unlink(wrong)
        let holder = open(fixture.image, O_RDONLY)
        #expect(flock(holder, LOCK_SH) == 0)
        let locked = try sevimage(["reencrypt", fixture.image, "--passphrase-file", fixture.passphraseFile])
        close(holder)
        #expect(locked.status == ExitStatus.conflict.rawValue, "\(locked)")
        #expect(try Crypto.hashFile(fixture.image) == before)
        #expect(entries(of: fixture.scratch.path) == files)
    }
}

/// The initramfs keyslot through the key operations: rotate and keys leave it (its key is inside the root, as safe
/// as the volume key), reencrypt renews it: a new key in /boot/sevimage-unlock.img and a keyslot for it, the old key
/// opening nothing.
@Suite(.serialized, .enabled(if: canCheckImages, "needs the image tools, cryptsetup and Python's cryptography"))
struct InitramfsKeyslotTests {
    /// The key in the image's unlock archive, read through cryptsetup and debugfs, and the raw view that owns the LUKS partition.
    static func archiveKey(_ fixture: KeysFixture) throws -> (key: String, opened: OpenedImage) {
        let opened = try OpenedImage(image: fixture.image)
        let plain = try opened.decryptRoot(passphraseFile: fixture.passphraseFile)
        let archive = opened.scratch.file("unlock.img"), key = fixture.scratch.file("initramfs-\(UUID().uuidString.prefix(8)).key")
        try runChecked("debugfs", ["-R", "dump /boot/sevimage-unlock.img \(archive)", plain])
        try runChecked("/bin/sh", ["-c", "cpio -i --quiet --to-stdout cryptroot/keyfiles/root.key < '\(archive)' > '\(key)'"])
        let uuid = try runChecked("cryptsetup", ["luksUUID", opened.luksPartition]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let systemd = try runChecked("/bin/sh", ["-c", "cpio -i --quiet --to-stdout etc/cryptsetup-keys.d/luks-\(uuid).key < '\(archive)'"]).stdoutData
        #expect(try Data(contentsOf: URL(fileURLWithPath: key)) == systemd && systemd.count == 64)
        return (key, opened)
    }

    static func opens(_ key: String, _ opened: OpenedImage) throws -> Bool {
        try runProgram("cryptsetup", ["open", "--test-passphrase", "--key-file", key, opened.luksPartition]).status == 0
    }

    @Test func rotateKeepsItAndReencryptRenewsIt() throws {
        let fixture = try KeysFixture(unlockArchive: true)
        #expect(try fixture.readManifest().luks.keyslots.map(\.role) == ["generated", "initramfs"])
        let (first, opened) = try Self.archiveKey(fixture)
        let firstBytes = try Data(contentsOf: URL(fileURLWithPath: first))
        #expect(try Self.opens(first, opened), "\(firstBytes.count) bytes")

        let rotated = try sevimage(["rotate", fixture.image, "--passphrase-file", fixture.passphraseFile, "--quiet"])
        #expect(rotated.status == 0, "\(rotated)")
        let afterRotate = try Self.archiveKey(fixture)
        #expect(try Data(contentsOf: URL(fileURLWithPath: afterRotate.key)) == Data(contentsOf: URL(fileURLWithPath: first)))
        #expect(try Self.opens(first, afterRotate.opened))
        #expect(try fixture.readManifest().luks.keyslots.map(\.role).sorted() == ["generated", "initramfs"])

        let reencrypted = try sevimage(["reencrypt", fixture.image, "--passphrase-file", fixture.passphraseFile, "--json"])
        #expect(reencrypted.status == 0, "\(reencrypted)")
        let result = try JSONSerialization.jsonObject(with: reencrypted.stdoutData) as? [String: Any]
        #expect((result?["droppedKeyslots"] as? [Int]) == [])
        let renewed = try Self.archiveKey(fixture)
        #expect(try Data(contentsOf: URL(fileURLWithPath: renewed.key)) != Data(contentsOf: URL(fileURLWithPath: first)))
        #expect(try Self.opens(renewed.key, renewed.opened))
        #expect(try !Self.opens(first, renewed.opened), "the old initramfs key opens nothing")
        let manifest = try fixture.readManifest()
        #expect(manifest.luks.keyslots.map(\.role).sorted() == ["generated", "initramfs"])
        #expect(manifest.boot?.unlockArchiveBlock != nil)
        #expect(try sevimage(["verify", fixture.image, "--passphrase-file", fixture.passphraseFile]).status == 0)
    }
}
