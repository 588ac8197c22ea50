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

    /// One byte flipped in a data cluster, in the LUKS header area, in the QCOW2's metadata (a refcount block) and in
    /// the block digests beside the image: verify fails and names the check (and, for the file, the block).
    @Test(arguments: ["data cluster", "LUKS header area", "QCOW2 metadata", "block digests"])
    func aFlippedByteAnywhereFailsVerifyByName(_ place: String) throws {
        let scratch = try Scratch()
        let image = try makeImage(scratch)
        let manifest = try Manifest.decode(Data(contentsOf: URL(fileURLWithPath: scratch.file("vm.manifest.json"))), path: "manifest")
        let qcow = try QCOW2Image(path: image)
        let luksOffset = manifest.partitions[1].firstLBA * 512
        let file: String, offset: UInt64
        switch place {
        case "data cluster":
            // The ext4 superblock's cluster, 1 KiB into the data segment.
            (file, offset) = (image, try #require(try qcow.hostRanges(count: 1, at: luksOffset + LUKSLayout.headerSize + 1024).first).lowerBound)
        case "LUKS header area":
            // The keyslot area's last byte (random bytes no keyslot uses).
            (file, offset) = (image, try #require(try qcow.hostRanges(count: 1, at: luksOffset + LUKSLayout.headerSize - 1).first).lowerBound)
        case "QCOW2 metadata":
            // The refcount of cluster 0, in the first refcount block (the refcount table at header byte 48 points to it).
            let header = try Data(contentsOf: URL(fileURLWithPath: image)).prefix(1 << 20)
            let table = header[48..<56].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            let bytes = try Data(contentsOf: URL(fileURLWithPath: image))
            let block = bytes[Int(table)..<Int(table) + 8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            (file, offset) = (image, block + 1)
        default:
            (file, offset) = (scratch.file("vm.blockdigests"), 32 * 5 + 7)
        }
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: file))
        try handle.seek(toOffset: offset)
        let byte = try #require(try handle.read(upToCount: 1))
        try handle.seek(toOffset: offset)
        try handle.write(contentsOf: Data([byte[0] ^ 0x01]))
        try handle.close()
        let run = try sevimage(["verify", image, "--json"])
        #expect(run.status == ExitStatus.verificationFailed.rawValue, "\(place): \(run)")
        let report = try JSONDecoder().decode(VerificationReport.self, from: run.stdoutData)
        let failed = report.checks.filter { $0.status == .fail }
        if place == "block digests" {
            #expect(failed.map(\.name) == ["block digests"], "\(report.text)")
        } else {
            #expect(failed.map(\.name) == ["image digest"], "\(place): \(report.text)")
            #expect(failed.first?.note?.hasPrefix("block \(offset / 65536) (file bytes \(offset / 65536 * 65536)-") == true, "\(place): \(report.text)")
        }
        #expect(run.stderr.contains("first: \(failed.first?.name ?? "?")"), "\(run.stderr)")
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

    /// A tiny newc initramfs holding `names` (empty files, directories made as needed), gzip'ed as Debian's are.
    static func makeInitramfs(at path: String, names: [String], in scratch: Scratch) throws {
        let staging = scratch.file("initramfs-staging-\(UUID().uuidString.prefix(8))")
        for name in names {
            try FileManager.default.createDirectory(atPath: staging + "/" + (name as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try Data("x\n".utf8).write(to: URL(fileURLWithPath: staging + "/" + name))
        }
        try runChecked("/bin/sh", ["-c", "cd '\(staging)' && find . | cpio -o -H newc --quiet | gzip -9n > '\(path)'"])
    }

    /// What `create` writes by default for an initramfs-tools tree: a keyslot whose key, with the crypttab entry,
    /// is in /boot/sevimage-unlock.img, loaded after the tree's initrd; every UUID as blkid spells it.
    @Test func unlockArchiveOpensTheVolumeAndNamesItAsBlkidDoes() throws {
        let scratch = try Scratch()
        let tree = scratch.file("tree")
        try FileManager.default.createDirectory(atPath: tree + "/boot", withIntermediateDirectories: true)
        try Self.makeInitramfs(at: tree + "/boot/initrd.img-6.1.0", names: ["init", "conf/initramfs.conf", "scripts/local",
                               "scripts/local-top/cryptroot", "usr/sbin/cryptsetup"], in: scratch)
        let image = try makeImage(scratch)
        let manifest = try Manifest.decode(Data(contentsOf: URL(fileURLWithPath: scratch.file("vm.manifest.json"))), path: "manifest")
        #expect(manifest.luks.keyslots.map(\.role) == ["generated", "initramfs"])
        #expect(manifest.boot?.initramfs == "initramfs-tools" && manifest.boot?.unlockArchive == "/boot/sevimage-unlock.img")
        let opened = try OpenedImage(image: image)
        let blkidUUID = try runChecked("blkid", ["-p", "-s", "UUID", "-o", "value", opened.luksPartition]).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(blkidUUID == blkidUUID.lowercased() && manifest.luks.uuid == blkidUUID)
        #expect(manifest.partitions[1].filesystemUUID == blkidUUID)
        let plain = try opened.decryptRoot(passphraseFile: scratch.file("vm.passphrase"))
        try runChecked("e2fsck", ["-fn", plain])
        let ext4UUID = try runChecked("blkid", ["-p", "-s", "UUID", "-o", "value", plain]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(manifest.partitions[1].innerFilesystemUUID == ext4UUID)
        let cfg = try runChecked("debugfs", ["-R", "cat /boot/grub/grub.cfg", plain]).stdout
        #expect(cfg.contains("linux /boot/vmlinuz-6.1.0 root=UUID=\(ext4UUID) rd.luks.uuid=\(blkidUUID) rw console=ttyS0 quiet"), "\(cfg)")
        #expect(cfg.contains("initrd /boot/initrd.img-6.1.0 /boot/sevimage-unlock.img"), "\(cfg)")
        let stat = try runChecked("debugfs", ["-R", "stat /boot/sevimage-unlock.img", plain]).stdout
        #expect(stat.contains("Mode:  0600") && stat.contains("User:     0"))

        // The archive, unpacked by cpio: crypttab for initramfs-tools, the same key for systemd-cryptsetup.
        let archive = scratch.file("unlock.img"), unpacked = scratch.file("unpacked")
        try runChecked("debugfs", ["-R", "dump /boot/sevimage-unlock.img \(archive)", plain])
        try FileManager.default.createDirectory(atPath: unpacked, withIntermediateDirectories: true)
        try runChecked("/bin/sh", ["-c", "cd '\(unpacked)' && cpio -i --quiet --no-absolute-filenames < '\(archive)'"])
        #expect(try String(contentsOfFile: unpacked + "/cryptroot/crypttab", encoding: .utf8)
                == "root UUID=\(blkidUUID) /cryptroot/keyfiles/root.key luks\n")
        let key = try Data(contentsOf: URL(fileURLWithPath: unpacked + "/cryptroot/keyfiles/root.key"))
        #expect(key.count == 64)
        #expect(try Data(contentsOf: URL(fileURLWithPath: unpacked + "/etc/cryptsetup-keys.d/luks-\(blkidUUID).key")) == key)
        let listing = try runChecked("/bin/sh", ["-c", "cpio -itv --quiet < '\(archive)'"]).stdout
        #expect(listing.contains("-r--------   1 root     root           64") && !listing.contains("rwxrwxrwx"), "\(listing)")
        let open = try runProgram("cryptsetup", ["open", "--test-passphrase", "--key-file", unpacked + "/cryptroot/keyfiles/root.key", opened.luksPartition])
        #expect(open.status == 0, "\(open)")
        let dump = try runChecked("cryptsetup", ["luksDump", opened.luksPartition]).stdout
        #expect(dump.contains("  1: luks2") && !dump.contains("argon2"))
        #expect((try sevimage(["verify", image])).status == 0)
    }

    /// An initramfs that cannot open LUKS is refused with the package to install; --no-initramfs-unlock lets it through.
    @Test func initramfsWithoutCryptsetupIsRefused() throws {
        for (names, package) in [(["init", "conf/initramfs.conf", "scripts/local"], "install cryptsetup-initramfs in the tree"),
                                 (["init", "usr/lib/dracut/modules.txt", "usr/bin/dracut-cmdline"], "install cryptsetup (dracut's crypt module")] {
            let scratch = try Scratch()
            let tree = scratch.file("tree")
            try FileManager.default.createDirectory(atPath: tree + "/boot", withIntermediateDirectories: true)
            try Data("kernel\n".utf8).write(to: URL(fileURLWithPath: tree + "/boot/vmlinuz-6.1.0"))
            try Self.makeInitramfs(at: tree + "/boot/initrd.img-6.1.0", names: names, in: scratch)
            let refused = try sevimage(["create", "--rootfs", tree, "--output", scratch.file("vm.qcow2"), "--size", "200M"])
            #expect(refused.status == ExitStatus.invalidInput.rawValue, "\(refused)")
            #expect(refused.stderr.contains("the initramfs /boot/initrd.img-6.1.0") && refused.stderr.contains(package), "\(refused)")
            #expect(refused.stderr.split(separator: "\n").count == 1 && !FileManager.default.fileExists(atPath: scratch.file("vm.qcow2")))
            let image = try makeImage(scratch, extra: ["--no-initramfs-unlock"])
            let manifest = try Manifest.decode(Data(contentsOf: URL(fileURLWithPath: scratch.file("vm.manifest.json"))), path: "manifest")
            #expect(manifest.luks.keyslots.map(\.role) == ["generated"] && manifest.boot?.unlockArchive == nil)
            let opened = try OpenedImage(image: image)  // owns the decrypted file
            let plain = try opened.decryptRoot(passphraseFile: scratch.file("vm.passphrase"))
            let cfg = try runChecked("debugfs", ["-R", "cat /boot/grub/grub.cfg", plain]).stdout
            #expect(cfg.contains("initrd /boot/initrd.img-6.1.0\n"), "\(cfg)")
        }
    }

    /// The author's own key file: a keyslot, nothing written into the root.
    @Test func authorsKeyfileAddsOnlyAKeyslot() throws {
        let scratch2 = try Scratch()
        let ownKey = scratch2.file("author.key")
        try Data((0..<100).map { UInt8($0) }).write(to: URL(fileURLWithPath: ownKey))
        chmod(ownKey, 0o600)
        let image2 = try makeImage(scratch2, extra: ["--initramfs-keyfile", ownKey])
        let opened2 = try OpenedImage(image: image2)
        #expect(try runProgram("cryptsetup", ["open", "--test-passphrase", "--key-file", ownKey, opened2.luksPartition]).status == 0)
        let manifest = try Manifest.decode(Data(contentsOf: URL(fileURLWithPath: scratch2.file("vm.manifest.json"))), path: "manifest")
        #expect(manifest.luks.keyslots.map(\.role) == ["generated", "keyfile"] && manifest.boot?.unlockArchive == nil)
    }
}

/// The generated grub.cfg and what a profile changes about it; trees that point `/boot` out of themselves.
@Suite(.enabled(if: canCheckImages && hasTool("blkid"), "needs the image tools, blkid and cryptsetup"))
struct GrubConfigChoiceTests {
    func tree(_ scratch: Scratch, grubCfg: String?) throws -> String {
        let tree = scratch.file("tree")
        try FileManager.default.createDirectory(atPath: tree + "/boot/grub", withIntermediateDirectories: true)
        try Data("kernel\n".utf8).write(to: URL(fileURLWithPath: tree + "/boot/vmlinuz-6.1.0"))
        if let grubCfg { try Data(grubCfg.utf8).write(to: URL(fileURLWithPath: tree + "/boot/grub/grub.cfg")) }
        return tree
    }

    func cfg(_ scratch: Scratch, _ arguments: [String]) throws -> (cfg: String, result: RunResult) {
        let image = scratch.file("vm.qcow2")
        let result = try sevimage(["create", "--output", image, "--size", "200M"] + arguments)
        try #require(result.status == 0, "\(result)")
        let opened = try OpenedImage(image: image)
        let plain = try opened.decryptRoot(passphraseFile: scratch.file("vm.passphrase"))
        return (try runChecked("debugfs", ["-R", "cat /boot/grub/grub.cfg", plain]).stdout, result)
    }

    @Test func treesGrubCfgIsReplacedUnlessTheProfileKeepsIt() throws {
        let hostCfg = "# generated in a chroot for the build host\nlinux /vmlinuz root=/dev/sda1\n"
        let scratch = try Scratch()
        let tree = try tree(scratch, grubCfg: hostCfg)
        let (replaced, result) = try cfg(scratch, ["--rootfs", tree])
        #expect(replaced.hasPrefix("# Written by sevimage") && result.stderr.contains("replacing the tree's /boot/grub/grub.cfg"))
        let manifest = try Manifest.decode(Data(contentsOf: URL(fileURLWithPath: scratch.file("vm.manifest.json"))), path: "m")
        #expect(manifest.boot?.grubConfig == "generated")

        let keep = try Scratch()
        let profile = keep.file("keep.toml")
        try Data("extends = \"default\"\n[boot]\ngrub_cfg = \"keep\"\n".utf8).write(to: URL(fileURLWithPath: profile))
        let (kept, _) = try cfg(keep, ["--rootfs", try self.tree(keep, grubCfg: hostCfg), "--profile", profile])
        #expect(kept == hostCfg)
        let keptManifest = try Manifest.decode(Data(contentsOf: URL(fileURLWithPath: keep.file("vm.manifest.json"))), path: "m")
        #expect(keptManifest.boot?.grubConfig == "tree" && keptManifest.boot?.kernelCommandLine == nil)
    }

    @Test func profileReplacesTheCommandLine() throws {
        let scratch = try Scratch()
        let profile = scratch.file("line.toml")
        try Data("extends = \"default\"\n[boot]\nreplace_kernel_cmdline = true\nkernel_cmdline = \"root=UUID=@ROOT_UUID@ ro rd.luks.uuid=@LUKS_UUID@ console=hvc0\"\n".utf8)
            .write(to: URL(fileURLWithPath: profile))
        let (text, _) = try cfg(scratch, ["--rootfs", try tree(scratch, grubCfg: nil), "--profile", profile])
        let manifest = try Manifest.decode(Data(contentsOf: URL(fileURLWithPath: scratch.file("vm.manifest.json"))), path: "m")
        let line = "root=UUID=\(manifest.partitions[1].innerFilesystemUUID ?? "?") ro rd.luks.uuid=\(manifest.luks.uuid) console=hvc0"
        #expect(text.contains("linux /boot/vmlinuz-6.1.0 \(line)\n"), "\(text)")
        #expect(manifest.boot?.kernelCommandLine == line)
    }

    /// A tree whose `/boot` leads to the host's is read inside the tree, where it leads nowhere.
    @Test func bootSymlinkOutOfTheTreeIsNotFollowed() throws {
        let scratch = try Scratch()
        let tree = scratch.file("tree")
        try FileManager.default.createDirectory(atPath: tree + "/etc", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: tree + "/boot", withDestinationPath: "/boot")
        let host = scratch.file("host-boot")
        try FileManager.default.createDirectory(atPath: host, withIntermediateDirectories: true)
        try Data("host kernel\n".utf8).write(to: URL(fileURLWithPath: host + "/vmlinuz-9.9"))
        try FileManager.default.createSymbolicLink(atPath: tree + "/etc/kernels", withDestinationPath: host)
        let result = try sevimage(["create", "--rootfs", tree, "--output", scratch.file("vm.qcow2"), "--size", "200M"])
        #expect(result.status == ExitStatus.invalidInput.rawValue && result.stderr.contains("no kernel in"), "\(result)")
        #expect(TreePath.resolve("boot/vmlinuz", in: tree) == nil, "boot -> /boot is itself inside the tree: a loop")
        #expect(TreePath.resolve("etc/kernels/vmlinuz-9.9", in: tree) == tree + host + "/vmlinuz-9.9", "an absolute target means the tree's")
    }

    /// Manifests of sevimage 0.2, which spelled the LUKS UUID in upper case, still verify.
    @Test func upperCaseUUIDsInAnOlderManifestStillVerify() throws {
        let scratch = try Scratch()
        _ = try cfg(scratch, ["--rootfs", try tree(scratch, grubCfg: nil)])
        let path = scratch.file("vm.manifest.json")
        let manifest = try Manifest.decode(Data(contentsOf: URL(fileURLWithPath: path)), path: "m")
        let text = try String(contentsOfFile: path, encoding: .utf8).replacingOccurrences(of: manifest.luks.uuid, with: manifest.luks.uuid.uppercased())
        #expect(text.contains(manifest.luks.uuid.uppercased()))
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        let verified = try sevimage(["verify", scratch.file("vm.qcow2"), "--passphrase-file", scratch.file("vm.passphrase")])
        #expect(verified.status == 0, "\(verified)")
    }
}
