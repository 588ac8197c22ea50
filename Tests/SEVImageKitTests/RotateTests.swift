import Foundation
import Testing
@testable import SEVImageKit

/// A small image from `sevimage create` (a rich tree plus 3 MB of random data) for the key-operation tests.
final class KeysFixture {
    let scratch: Scratch
    let image: String
    let passphraseFile: String
    let manifest: String
    /// A copy of the passphrase `create` generated (IMAGE.passphrase itself gets replaced).
    let originalPassphrase: String

    /// `unlockArchive`: with the initramfs keyslot and /boot/sevimage-unlock.img that `create` adds by default
    /// (the rich tree has an initrd); without, the image has the generated passphrase's keyslot alone.
    init(unlockArchive: Bool = false) throws {
        scratch = try Scratch()
        let tree = scratch.file("tree")
        try makeRichTree(at: tree, owners: false)
        try Data((0..<3_000_000).map { UInt8(truncatingIfNeeded: $0 &* 7919 >> 5 ^ $0) })
            .write(to: URL(fileURLWithPath: tree + "/etc/payload.bin"))
        image = scratch.file("vm.qcow2")
        let result = try sevimage(["create", "--rootfs", tree, "--output", image, "--size", "160M", "--quiet"]
                                  + (unlockArchive ? [] : ["--no-initramfs-unlock"]))
        guard result.status == 0 else { throw GeneralError.toolFailed("sevimage create", status: result.status, stderr: result.stderr) }
        passphraseFile = scratch.file("vm.passphrase")
        manifest = scratch.file("vm.manifest.json")
        originalPassphrase = scratch.file("original.passphrase")
        try FileManager.default.copyItem(atPath: passphraseFile, toPath: originalPassphrase)
    }

    func readManifest() throws -> Manifest {
        try Manifest.decode(Data(contentsOf: URL(fileURLWithPath: manifest)), path: manifest)
    }

    /// Which of these passphrase files open the image, by `cryptsetup open --test-passphrase` on the raw view.
    func opening(_ files: [String]) throws -> [String: Bool] {
        let opened = try OpenedImage(image: image)
        var result: [String: Bool] = [:]
        for file in files where FileManager.default.fileExists(atPath: file) {
            result[file] = try runProgram("cryptsetup", ["open", "--test-passphrase", "--key-file", file, opened.luksPartition]).status == 0
        }
        return result
    }

    func opens(_ file: String) throws -> Bool { try opening([file])[file] ?? false }

    /// SHA-256 of the encrypted data segment (the root partition after its 16 MiB header), from qemu-img's raw view.
    func dataDigest() throws -> String {
        let opened = try OpenedImage(image: image)
        let result = try runChecked("/bin/sh", ["-c", "tail -c +\(LUKSLayout.headerSize + 1) '\(opened.luksPartition)' | sha256sum"])
        return String(result.stdout.prefix(64))
    }

    /// Files a finished operation must not leave behind.
    func leftovers() -> [String] {
        entries(of: scratch.path).filter {
            $0.contains(".sevimage-") || $0.hasSuffix(".new") || $0.hasSuffix(".tmp") || $0.hasSuffix("-journal") || $0.hasSuffix("-rotate")
        }
    }
}

/// `sevimage rotate`, checked with cryptsetup on qemu-img's raw view of the image.
@Suite(.enabled(if: canCheckImages, "needs the image tools, cryptsetup-bin and qemu-utils"))
struct RotateTests {
    @Test func rotatesInPlaceAndKeepsTheData() throws {
        let fixture = try KeysFixture()
        let opened = try OpenedImage(image: fixture.image)
        let rootBefore = try Data(contentsOf: URL(fileURLWithPath: opened.decryptRoot(passphraseFile: fixture.passphraseFile)))
        let sizeBefore = try FileManager.default.attributesOfItem(atPath: fixture.image)[.size] as? Int
        let manifestBefore = try fixture.readManifest()

        let result = try sevimage(["rotate", fixture.image, "--passphrase-file", fixture.passphraseFile, "--json", "--keep-old-passphrase"])
        try #require(result.status == 0, "\(result)")
        let json = try #require(try JSONSerialization.jsonObject(with: result.stdoutData) as? [String: Any])
        #expect(json["volumeKeyKept"] as? Bool == true)
        #expect((json["note"] as? String)?.contains("sevimage reencrypt") == true)
        #expect(result.stderr.contains("kept the volume key") && result.stderr.contains("run sevimage reencrypt"))

        // The new passphrase opens, the old one does not; the old one was kept as asked.
        let newPassphrase = try String(contentsOfFile: fixture.passphraseFile, encoding: .utf8)
        let oldPassphrase = try String(contentsOfFile: fixture.originalPassphrase, encoding: .utf8)
        #expect(newPassphrase != oldPassphrase && newPassphrase.count == 43)
        #expect(try String(contentsOfFile: fixture.scratch.file("vm.passphrase.old"), encoding: .utf8) == oldPassphrase)
        #expect((try FileManager.default.attributesOfItem(atPath: fixture.passphraseFile)[.posixPermissions] as? Int) == 0o600)
        let opens = try fixture.opening([fixture.passphraseFile, fixture.originalPassphrase])
        #expect(opens[fixture.passphraseFile] == true)
        #expect(opens[fixture.originalPassphrase] == false)

        // Same volume key and data: the decrypted root is byte for byte what it was; the file did not grow.
        let after = try OpenedImage(image: fixture.image)
        let rootAfter = try Data(contentsOf: URL(fileURLWithPath: after.decryptRoot(passphraseFile: fixture.passphraseFile)))
        #expect(rootAfter == rootBefore)
        #expect(try FileManager.default.attributesOfItem(atPath: fixture.image)[.size] as? Int == sizeBefore)
        try runChecked("qemu-img", ["check", fixture.image])
        let dump = try runChecked("cryptsetup", ["luksDump", after.luksPartition]).stdout
        #expect(dump.contains("PBKDF:      pbkdf2") && !dump.contains("argon2"))
        #expect(dump.components(separatedBy: ": luks2").count - 1 == 1, "one keyslot left:\n\(dump)")

        // The manifest: the new keyslot, a rotation record, the image's new hash; no secret anywhere.
        let manifest = try fixture.readManifest()
        #expect(manifest.luks.keyslots.count == 1)
        #expect(manifest.luks.keyslots.first?.role == "generated")
        #expect(manifest.luks.keyslots.first?.slot != manifestBefore.luks.keyslots.first?.slot)
        let record = try #require(manifest.rotations.last)
        #expect(record.kind == "rotate" && record.removedKeyslots == [0] && record.addedKeyslots == [manifest.luks.keyslots[0].slot])
        #expect(manifest.image.blockSHA256 == (try oracleImageDigest(fixture.image)))
        // Only the LUKS header area's blocks were hashed again (the rest came from vm.blockdigests).
        #expect(json["hashedBytes"] as? Int == Int(LUKSLayout.headerSize), "\(json)")
        try expectDigestsHold(image: fixture.image, "rotate")
        let manifestText = try String(contentsOfFile: fixture.manifest, encoding: .utf8)
        for secret in [newPassphrase, oldPassphrase] {
            #expect(!manifestText.contains(secret) && !result.stdout.contains(secret) && !result.stderr.contains(secret))
        }
        #expect(fixture.leftovers().isEmpty, "\(fixture.leftovers())")

        // A second rotation with a given passphrase.
        let given = fixture.scratch.file("given.passphrase")
        try writePassphraseFile(given, "a passphrase the operator chose")
        let second = try sevimage(["rotate", fixture.image, "--passphrase-file", fixture.passphraseFile, "--new-passphrase-file", given, "--quiet"])
        #expect(second.status == 0, "\(second)")
        #expect(try String(contentsOfFile: fixture.passphraseFile, encoding: .utf8) == "a passphrase the operator chose")
        #expect(try fixture.opens(given))
    }

    /// SIGKILL after every durable step: the image always opens with the old or the new passphrase, the new one is
    /// on disk before the old keyslot goes, a rerun finishes, and the data never changes.
    @Test func killedAfterEveryStepStillOpensAndARerunFinishes() throws {
        let fixture = try KeysFixture()
        let data = try fixture.dataDigest()
        var step = 1
        var completedWithoutCrash = false
        while !completedWithoutCrash && step < 40 {
            let old = fixture.scratch.file("before-\(step).passphrase")
            try? FileManager.default.removeItem(atPath: old)
            try FileManager.default.copyItem(atPath: fixture.passphraseFile, toPath: old)
            let run = try sevimage(["rotate", fixture.image, "--passphrase-file", fixture.passphraseFile, "--quiet"],
                                   environment: ["SEVIMAGE_TEST_CRASH_AFTER": String(step)])
            if run.status == 0 {
                completedWithoutCrash = true
            } else {
                #expect(run.status == SIGKILL, "step \(step): \(run)")
                let newFile = fixture.scratch.file("vm.passphrase.new")
                let opens = try fixture.opening([old, fixture.passphraseFile, newFile])
                #expect(opens.values.contains(true), "step \(step): nothing opens the image")
                if opens[old] != true {
                    // The old keyslot is gone: the new passphrase must be on disk.
                    #expect(opens[fixture.passphraseFile] == true || opens[newFile] == true, "step \(step)")
                }
                let rerun = try sevimage(["rotate", fixture.image, "--passphrase-file", fixture.passphraseFile, "--quiet"])
                #expect(rerun.status == 0, "step \(step): \(rerun)")
            }
            #expect(try fixture.opens(fixture.passphraseFile), "step \(step)")
            #expect(try !fixture.opens(old), "step \(step): the old passphrase still opens")
            #expect(fixture.leftovers().isEmpty, "step \(step): \(fixture.leftovers())")
            #expect(try fixture.readManifest().luks.keyslots.count == 1, "step \(step)")
            try expectDigestsHold(image: fixture.image, "step \(step)")
            step += 1
        }
        #expect(completedWithoutCrash)
        #expect(step > 10, "rotate has more durable steps than that")
        #expect(try fixture.dataDigest() == data)
        try runChecked("qemu-img", ["check", fixture.image])
        #expect(try fixture.readManifest().image.blockSHA256 == hex(try ImageDigest.of(file: fixture.image)))
    }

    /// Without block digests the manifest covers (an image of an earlier sevimage, a damaged or stale sidecar), rotate
    /// hashes the whole file once and writes them; the next rotation hashes the header area alone. `--no-rehash` is
    /// accepted and ignored.
    @Test(arguments: ["missing", "one byte flipped", "truncated", "an older manifest's whole-file SHA-256"])
    func withoutTrustedBlockDigestsTheWholeFileIsHashedOnceAndTheyAreWritten(_ kind: String) throws {
        let fixture = try KeysFixture()
        let sidecar = fixture.scratch.file("vm.blockdigests")
        var digests = try Data(contentsOf: URL(fileURLWithPath: sidecar))
        switch kind {
        case "missing": try FileManager.default.removeItem(atPath: sidecar)
        case "one byte flipped":
            digests[digests.count / 2] ^= 0x20
            try digests.write(to: URL(fileURLWithPath: sidecar))
        case "truncated": try digests.prefix(digests.count - 32).write(to: URL(fileURLWithPath: sidecar))
        default:
            try FileManager.default.removeItem(atPath: sidecar)
            var object = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: fixture.manifest))) as? [String: Any])
            var image = try #require(object["image"] as? [String: Any])
            image.removeValue(forKey: "blockSHA256")
            image["sha256"] = hex(try Crypto.hashFile(fixture.image))
            object["image"] = image
            try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: fixture.manifest))
        }
        let size = try #require(try FileManager.default.attributesOfItem(atPath: fixture.image)[.size] as? Int)
        let first = try sevimage(["rotate", fixture.image, "--passphrase-file", fixture.passphraseFile, "--json", "--no-rehash"])
        try #require(first.status == 0, "\(first)")
        #expect(first.stderr.contains("--no-rehash is ignored"), "\(first.stderr)")
        #expect(try JSONDecoder().decode(RotateResult.self, from: first.stdoutData).hashedBytes == UInt64(size))
        try expectDigestsHold(image: fixture.image, "\(kind): upgraded")
        #expect(try fixture.readManifest().image.sha256 == nil)
        let second = try sevimage(["rotate", fixture.image, "--passphrase-file", fixture.passphraseFile, "--json"])
        try #require(second.status == 0, "\(second)")
        #expect(try JSONDecoder().decode(RotateResult.self, from: second.stdoutData).hashedBytes == LUKSLayout.headerSize)
        try expectDigestsHold(image: fixture.image, "\(kind): rotated again")
    }

    /// A key operation vouches only for the bytes it wrote: data changed behind sevimage's back (say, by a booted
    /// guest) keeps failing verify after a rotation, which names the block.
    @Test func rotationDoesNotVouchForBytesItDidNotWrite() throws {
        let fixture = try KeysFixture()
        let size = try #require(try FileManager.default.attributesOfItem(atPath: fixture.image)[.size] as? UInt64)
        let offset = size - 3 * 65536 + 100
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: fixture.image))
        try handle.seek(toOffset: offset)
        let byte = try #require(try handle.read(upToCount: 1))
        try handle.seek(toOffset: offset)
        try handle.write(contentsOf: Data([byte[0] ^ 0x01]))
        try handle.close()
        let rotate = try sevimage(["rotate", fixture.image, "--passphrase-file", fixture.passphraseFile, "--quiet"])
        try #require(rotate.status == 0, "\(rotate)")
        let verify = try sevimage(["verify", fixture.image])
        #expect(verify.status == ExitStatus.verificationFailed.rawValue, "\(verify)")
        #expect(verify.stderr.contains("FAIL  image digest") && verify.stderr.contains("block \(offset / 65536) ("), "\(verify.stderr)")
        #expect(verify.stderr.contains("pass  block digests"), "\(verify.stderr)")
    }

    @Test func refusesWithOneLineAndLeavesTheImageUntouched() throws {
        let fixture = try KeysFixture()
        let before = try Crypto.hashFile(fixture.image)
        let manifestBefore = try Data(contentsOf: URL(fileURLWithPath: fixture.manifest))
        let files = entries(of: fixture.scratch.path)
        func untouched(_ label: String) throws {
            #expect(try Crypto.hashFile(fixture.image) == before, "\(label)")
            #expect(try Data(contentsOf: URL(fileURLWithPath: fixture.manifest)) == manifestBefore, "\(label)")
            #expect(entries(of: fixture.scratch.path) == files, "\(label)")
        }
        func oneLine(_ result: RunResult) -> Bool {
            result.stdout.isEmpty && result.stderr.hasPrefix("sevimage: error: ") && result.stderr.filter { $0 == "\n" }.count == 1
        }

        let wrong = fixture.scratch.file("wrong.passphrase")
        try writePassphraseFile(wrong, "not it")
        let refused = try sevimage(["rotate", fixture.image, "--passphrase-file", wrong])
        #expect(refused.status == ExitStatus.wrongPassphrase.rawValue && oneLine(refused), "\(refused)")
        #expect(refused.stderr.contains("the passphrase opens no keyslot of \(fixture.image)"))
        unlink(wrong)
        try untouched("wrong passphrase")

        // Another sevimage (its flock) and QEMU (qemu-io holds QEMU's image locks).
        let holder = open(fixture.image, O_RDONLY)
        #expect(flock(holder, LOCK_EX) == 0)
        let locked = try sevimage(["rotate", fixture.image, "--passphrase-file", fixture.passphraseFile])
        close(holder)
        #expect(locked.status == ExitStatus.conflict.rawValue && oneLine(locked), "\(locked)")
        #expect(locked.stderr.contains("in use by another sevimage process"))
        try untouched("locked")
        if hasTool("qemu-io") {
            let qemu = Process()
            qemu.executableURL = URL(fileURLWithPath: try ExternalTool("qemu-io", package: "qemu-utils").resolve())
            qemu.arguments = ["-f", "qcow2", "-c", "sleep 20000", fixture.image]
            qemu.standardOutput = FileHandle.nullDevice
            try qemu.run()
            usleep(700_000)
            let inUse = try sevimage(["rotate", fixture.image, "--passphrase-file", fixture.passphraseFile])
            qemu.terminate()
            qemu.waitUntilExit()
            #expect(inUse.status == ExitStatus.conflict.rawValue && oneLine(inUse), "\(inUse)")
            #expect(inUse.stderr.contains("in use by a running QEMU"))
            try untouched("qemu")
        }

        // Read-only image file.
        chmod(fixture.image, 0o444)
        let readOnly = try sevimage(["rotate", fixture.image, "--passphrase-file", fixture.passphraseFile])
        chmod(fixture.image, 0o644)
        #expect(readOnly.status == ExitStatus.invalidInput.rawValue && oneLine(readOnly), "\(readOnly)")
        #expect(readOnly.stderr.contains("is read-only"))
        try untouched("read-only")

        // Not a QCOW2, a truncated one, a QCOW2 whose LUKS header is damaged.
        let other = try Scratch()
        let notImage = other.file("notes.qcow2")
        try Data(repeating: 0x41, count: 100_000).write(to: URL(fileURLWithPath: notImage))
        let bad = try sevimage(["rotate", notImage, "--passphrase-file", fixture.passphraseFile])
        #expect(bad.status == ExitStatus.invalidInput.rawValue && oneLine(bad) && bad.stderr.contains("not a QCOW2"), "\(bad)")
        let truncated = other.file("truncated.qcow2")
        try Data(contentsOf: URL(fileURLWithPath: fixture.image)).prefix(3 << 20).write(to: URL(fileURLWithPath: truncated))
        let short = try sevimage(["rotate", truncated, "--passphrase-file", fixture.passphraseFile])
        #expect(short.status == ExitStatus.invalidInput.rawValue && oneLine(short) && short.stderr.contains("not a usable sevimage image"), "\(short)")
        let damaged = other.file("damaged.qcow2")
        try FileManager.default.copyItem(atPath: fixture.image, toPath: damaged)
        let root = try fixture.readManifest().partitions[1].firstLBA * 512
        let writer = try QCOW2Image(path: damaged, writable: true)
        let junk = [UInt8](repeating: 0x5A, count: 64 << 10)
        try junk.withUnsafeBytes { try writer.write($0, at: root) }
        try writer.sync()
        let damagedBefore = try Crypto.hashFile(damaged)
        let notLUKS = try sevimage(["rotate", damaged, "--passphrase-file", fixture.passphraseFile])
        #expect(notLUKS.status == ExitStatus.invalidInput.rawValue && oneLine(notLUKS) && notLUKS.stderr.contains("no readable LUKS2 header"), "\(notLUKS)")
        #expect(try Crypto.hashFile(damaged) == damagedBefore)
        try untouched("bad images")
    }
}
