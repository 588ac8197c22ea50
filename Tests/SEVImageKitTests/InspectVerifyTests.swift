import Foundation
import Testing
@testable import SEVImageKit

/// `inspect`, `verify` and `link` end to end on images from `sevimage create`, intact and altered afterwards,
/// checked against sfdisk, blkid and cryptsetup.
@Suite(.enabled(if: canCheckImages && hasTool("blkid"), "needs the image tools, blkid, sfdisk and cryptsetup"))
struct InspectVerifyTests {
    /// A small image with a generated passphrase, made once per test.
    func makeImage(_ scratch: Scratch, extra: [String] = []) throws -> String {
        let tree = scratch.file("tree")
        try FileManager.default.createDirectory(atPath: tree + "/boot", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: tree + "/etc", withIntermediateDirectories: true)
        try Data("kernel\n".utf8).write(to: URL(fileURLWithPath: tree + "/boot/vmlinuz-6.1.0"))
        try Data("host\n".utf8).write(to: URL(fileURLWithPath: tree + "/etc/hostname"))
        let image = scratch.file("vm.qcow2")
        let result = try sevimage(["create", "--rootfs", tree, "--output", image, "--size", "200M"] + extra)
        try #require(result.status == 0, "\(result)")
        return image
    }

    @Test func inspectMatchesIndependentTools() throws {
        let scratch = try Scratch()
        let image = try makeImage(scratch)
        let result = try sevimage(["inspect", image, "--json"])
        try #require(result.status == 0, "\(result)")
        #expect(result.stderr.isEmpty)
        let json = try #require(try JSONSerialization.jsonObject(with: result.stdoutData) as? [String: Any])
        #expect(json["format"] as? String == "qcow2")
        let partitions = try #require(json["partitions"] as? [[String: Any]])
        try #require(partitions.count == 2)

        // The GPT against sfdisk's reading of the converted raw disk.
        let opened = try OpenedImage(image: image)
        let table = try #require(json["partitionTable"] as? [String: Any])
        let sfdisk = try JSONSerialization.jsonObject(with: try runChecked("sfdisk", ["--json", opened.raw]).stdoutData) as? [String: Any]
        let sfTable = try #require(sfdisk?["partitiontable"] as? [String: Any])
        #expect((sfTable["id"] as? String)?.lowercased() == table["diskGUID"] as? String)
        for (index, partition) in opened.partitions.enumerated() {
            let ours = partitions[index]
            #expect((partition["uuid"] as? String)?.lowercased() == ours["partitionGUID"] as? String)
            #expect((partition["type"] as? String)?.lowercased() == ours["typeGUID"] as? String)
            #expect(partition["start"] as? Int == ours["firstLBA"] as? Int)
            #expect(partition["name"] as? String == ours["name"] as? String)
        }
        #expect(partitions[0]["typeName"] as? String == "EFI system partition")

        // Filesystems against blkid, LUKS against cryptsetup.
        let esp = try #require(partitions[0]["filesystem"] as? [String: Any])
        let blkidESP = try runChecked("blkid", ["-o", "value", "-s", "UUID", opened.espPartition]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(esp["type"] as? String == "vfat" && esp["uuid"] as? String == blkidESP)
        let luks = try #require(partitions[1]["luks"] as? [String: Any])
        let luksUUID = try runChecked("cryptsetup", ["luksUUID", opened.luksPartition]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(luks["uuid"] as? String == luksUUID)
        #expect(luks["cipher"] as? String == "aes-xts-plain64" && luks["keySizeBits"] as? Int == 512)
        #expect(luks["sectorSize"] as? Int == 4096 && luks["dataOffset"] as? Int == 16 << 20)
        let slots = try #require(luks["keyslots"] as? [[String: Any]])
        #expect(slots.count == 1 && slots[0]["pbkdf"] as? String == "pbkdf2" && slots[0]["iterations"] as? Int == 1000)

        // The same on the raw disk; the human report goes to stderr only, without terminal escapes.
        let raw = try sevimage(["inspect", opened.raw])
        #expect(raw.status == 0 && raw.stdout.isEmpty)
        #expect(raw.stderr.contains("container:   raw, 200M virtual"))
        #expect(raw.stderr.contains(luksUUID) && !raw.stderr.contains("\u{1B}") && !raw.stderr.contains("\r"))
    }

    @Test func verifyPassesOnTheImageAsCreated() throws {
        let scratch = try Scratch()
        let image = try makeImage(scratch)
        let result = try sevimage(["verify", image, "--passphrase-file", scratch.file("vm.passphrase"), "--json"])
        #expect(result.status == 0, "\(result)")
        let json = try #require(try JSONSerialization.jsonObject(with: result.stdoutData) as? [String: Any])
        #expect(json["passed"] as? Bool == true)
        let checks = try #require(json["checks"] as? [[String: Any]])
        let byName = Dictionary(checks.map { ($0["name"] as? String ?? "", $0["status"] as? String ?? "") }, uniquingKeysWith: { a, _ in a })
        for name in ["image digest", "disk guid", "partition 1 filesystem uuid", "luks uuid", "luks keyslots",
                     "passphrase opens a keyslot", "root ext4 uuid"] {
            #expect(byName[name] == "pass", "\(name)")
        }
        #expect(byName["firmware"] == "skipped")

        // Human output: one line per check on stderr, nothing on stdout, no escape codes.
        let human = try sevimage(["verify", image])
        #expect(human.status == 0 && human.stdout.isEmpty)
        #expect(human.stderr.contains("pass  luks cipher: aes-xts-plain64") && !human.stderr.contains("\u{1B}"))
    }

    /// Manifests of sevimage 0.1 record the whole file's SHA-256 (`image.sha256`): verify checks it, and a
    /// key operation that changes the image replaces it with the block digest.
    @Test func manifestsWithTheWholeFileSHA256StillVerify() throws {
        let scratch = try Scratch()
        let image = try makeImage(scratch)
        let manifest = scratch.file("vm.manifest.json")
        var object = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: manifest))) as? [String: Any])
        var imageObject = try #require(object["image"] as? [String: Any])
        let sha256 = try runChecked("sha256sum", [image]).stdout.prefix(64)
        imageObject.removeValue(forKey: "blockSHA256")
        imageObject["sha256"] = String(sha256)
        object["image"] = imageObject
        try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: manifest))
        let old = try sevimage(["verify", image, "--json"])
        #expect(old.status == 0, "\(old)")
        #expect(old.stdout.contains("image sha256") && !old.stdout.contains("image digest"))

        imageObject["sha256"] = String(repeating: "0", count: 64)
        object["image"] = imageObject
        try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: manifest))
        let wrong = try sevimage(["verify", image])
        #expect(wrong.status == ExitStatus.verificationFailed.rawValue && wrong.stderr.contains("FAIL  image sha256"), "\(wrong)")

        // rotate rewrites the header area, hashes the image again and records the block digest instead.
        let rotate = try sevimage(["rotate", image, "--passphrase-file", scratch.file("vm.passphrase")])
        try #require(rotate.status == 0, "\(rotate)")
        let rotated = try Manifest.decode(Data(contentsOf: URL(fileURLWithPath: manifest)), path: manifest)
        let oracle = try oracleImageDigest(image)
        #expect(rotated.image.sha256 == nil && rotated.image.blockSHA256 == oracle)
        #expect((try sevimage(["verify", image])).status == 0)
    }

    @Test func verifyFailsOnAlteredImagesAndManifests() throws {
        let scratch = try Scratch()
        let image = try makeImage(scratch)
        let manifest = scratch.file("vm.manifest.json")
        let original = try Data(contentsOf: URL(fileURLWithPath: manifest))

        // A manifest claim changed: the LUKS UUID.
        var object = try #require(try JSONSerialization.jsonObject(with: original) as? [String: Any])
        var luks = try #require(object["luks"] as? [String: Any])
        luks["uuid"] = "00000000-0000-4000-8000-000000000000"
        object["luks"] = luks
        let edited = scratch.file("edited.json")
        try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: edited))
        let badManifest = try sevimage(["verify", image, "--manifest", edited, "--json"])
        #expect(badManifest.status == ExitStatus.verificationFailed.rawValue, "\(badManifest)")
        let report = try #require(try JSONSerialization.jsonObject(with: badManifest.stdoutData) as? [String: Any])
        let failed = (report["checks"] as? [[String: Any]] ?? []).filter { $0["status"] as? String == "fail" }.compactMap { $0["name"] as? String }
        #expect(failed == ["luks uuid"])
        #expect(badManifest.stderr.contains("1 of") && badManifest.stderr.split(separator: "\n").count == 1)

        // A wrong passphrase fails its check (exit 4, not a crash).
        let wrong = scratch.file("wrong")
        try writePassphraseFile(wrong, "not the passphrase")
        let wrongRun = try sevimage(["verify", image, "--passphrase-file", wrong])
        #expect(wrongRun.status == ExitStatus.verificationFailed.rawValue && wrongRun.stderr.contains("FAIL  passphrase opens a keyslot"))

        // One byte flipped inside the encrypted data of the QCOW2 file.
        let copy = scratch.file("flipped.qcow2")
        try FileManager.default.copyItem(atPath: image, toPath: copy)
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: copy))
        let size = try handle.seekToEnd()
        try handle.seek(toOffset: size / 2)
        let byte = try handle.read(upToCount: 1) ?? Data([0])
        try handle.seek(toOffset: size / 2)
        try handle.write(contentsOf: Data([byte[0] ^ 0x01]))
        try handle.close()
        let flipped = try sevimage(["verify", copy, "--manifest", manifest])
        #expect(flipped.status == ExitStatus.verificationFailed.rawValue)
        #expect(flipped.stderr.contains("FAIL  image digest"))

        // Truncated, empty and non-QCOW2 files: one clear line, invalid input.
        let truncated = scratch.file("truncated.qcow2")
        try Data(original.prefix(0)).write(to: URL(fileURLWithPath: scratch.file("empty.qcow2")))
        let full = try Data(contentsOf: URL(fileURLWithPath: image))
        try full.prefix(full.count - 70_000).write(to: URL(fileURLWithPath: truncated))
        try Data(repeating: 0x41, count: 1 << 20).write(to: URL(fileURLWithPath: scratch.file("text.qcow2")))
        for bad in [truncated, scratch.file("empty.qcow2"), scratch.file("text.qcow2")] {
            let run = try sevimage(["verify", bad, "--manifest", manifest])
            #expect(run.status == ExitStatus.invalidInput.rawValue, "\(bad): \(run)")
            #expect(run.stderr.split(separator: "\n").count == 1 && run.stderr.hasPrefix("sevimage: error: "), "\(run)")
            let inspect = try sevimage(["inspect", bad])
            #expect(inspect.status == ExitStatus.invalidInput.rawValue, "\(bad): \(inspect)")
        }
    }

    @Test(.enabled(if: FileManager.default.fileExists(atPath: "/usr/share/ovmf/OVMF.fd"), "needs Debian's ovmf"))
    func linkThenVerifyTheFirmware() throws {
        let scratch = try Scratch()
        let image = try makeImage(scratch)
        let firmware = "/usr/share/ovmf/OVMF.fd"
        // Debian's OVMF has no SEV secret area: linking needs --standard-boot-only.
        let refused = try sevimage(["link", image, "--ovmf", firmware])
        #expect(refused.status != 0 && refused.stderr.split(separator: "\n").count == 1)
        let linked = try sevimage(["link", image, "--ovmf", firmware, "--standard-boot-only", "--json"])
        try #require(linked.status == 0, "\(linked)")
        let firmwareJSON = try #require(try JSONSerialization.jsonObject(with: linked.stdoutData) as? [String: Any])
        let sha = try runChecked("sha256sum", [firmware]).stdout.prefix(64)
        #expect(firmwareJSON["sha256"] as? String == String(sha))
        #expect(try sevimage(["verify", image, "--ovmf", firmware]).status == 0)

        // Another firmware in its place: the firmware checks fail.
        let swapped = scratch.file("OVMF.fd")
        var bytes = try Data(contentsOf: URL(fileURLWithPath: firmware))
        bytes[bytes.count / 3] ^= 0xFF
        try bytes.write(to: URL(fileURLWithPath: swapped))
        let result = try sevimage(["verify", image, "--ovmf", swapped])
        #expect(result.status == ExitStatus.verificationFailed.rawValue)
        #expect(result.stderr.contains("FAIL  firmware sha256") && result.stderr.contains("FAIL  firmware launch digest (sev)"))

        // A manifest that does not describe the image is refused by link.
        let other = scratch.file("other.qcow2")
        try FileManager.default.copyItem(atPath: image, toPath: other)
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: other))
        try handle.seekToEnd()
        try handle.write(contentsOf: Data(repeating: 0, count: 512))
        try handle.close()
        let mismatch = try sevimage(["link", other, "--ovmf", firmware, "--standard-boot-only", "--manifest", scratch.file("vm.manifest.json")])
        #expect(mismatch.status == ExitStatus.verificationFailed.rawValue && mismatch.stderr.contains("does not describe"))
    }

    @Test func generatedInitramfsKeyfileOpensTheVolume() throws {
        let scratch = try Scratch()
        let image = try makeImage(scratch, extra: ["--generate-initramfs-keyfile"])
        let manifest = try String(contentsOfFile: scratch.file("vm.manifest.json"), encoding: .utf8)
        #expect(manifest.contains("\"role\" : \"keyfile\""))
        let opened = try OpenedImage(image: image)
        let plain = try opened.decryptRoot(passphraseFile: scratch.file("vm.passphrase"))
        try runChecked("e2fsck", ["-fn", plain])
        let key = scratch.file("root.key")
        try runChecked("debugfs", ["-R", "dump /etc/cryptsetup-keys.d/root.key \(key)", plain])
        let stat = try runChecked("debugfs", ["-R", "stat /etc/cryptsetup-keys.d/root.key", plain]).stdout
        #expect(stat.contains("Mode:  0400") && stat.contains("User:     0"))
        #expect(try Data(contentsOf: URL(fileURLWithPath: key)).count == 64)
        let open = try runProgram("cryptsetup", ["open", "--test-passphrase", "--key-file", key, opened.luksPartition])
        #expect(open.status == 0, "\(open)")
        let dump = try runChecked("cryptsetup", ["luksDump", opened.luksPartition]).stdout
        #expect(dump.contains("  1: luks2") && !dump.contains("argon2"))
        let crypttab = scratch.file("crypttab")
        try runChecked("debugfs", ["-R", "dump /etc/crypttab \(crypttab)", plain])
        let uuid = try runChecked("cryptsetup", ["luksUUID", opened.luksPartition]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try String(contentsOfFile: crypttab, encoding: .utf8) == "root UUID=\(uuid) /etc/cryptsetup-keys.d/root.key luks,discard\n")
        #expect((try sevimage(["verify", image])).status == 0)

        // The author's own key file: a keyslot, nothing written into the root.
        let scratch2 = try Scratch()
        let ownKey = scratch2.file("author.key")
        try Data((0..<100).map { UInt8($0) }).write(to: URL(fileURLWithPath: ownKey))
        chmod(ownKey, 0o600)
        let image2 = try makeImage(scratch2, extra: ["--initramfs-keyfile", ownKey])
        let opened2 = try OpenedImage(image: image2)
        #expect(try runProgram("cryptsetup", ["open", "--test-passphrase", "--key-file", ownKey, opened2.luksPartition]).status == 0)
    }
}
