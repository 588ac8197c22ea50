import Foundation
import Testing
@testable import SEVImageKit

let canCreateImages: Bool = ["mke2fs", "debugfs", "mkfs.vfat", "mcopy", "grub-mkstandalone", "qemu-img"].allSatisfy(hasTool)
let canCheckImages: Bool = canCreateImages && ["cryptsetup", "sfdisk", "fsck.vfat", "e2fsck"].allSatisfy(hasTool)
    && (try? runProgram(python3, ["-c", "import cryptography"]).status) == 0

/// `sevimage create`, checked with tools that share no code with it.
@Suite(.enabled(if: canCheckImages, "needs e2fsprogs, dosfstools, mtools, grub-efi-amd64-bin, qemu-utils, cryptsetup-bin, fdisk and Python's cryptography"))
struct CreateTests {
    @Test func imagePassesIndependentChecksAndHoldsTheTreeExactly() throws {
        let scratch = try Scratch()
        let tree = scratch.file("tree")
        try makeRichTree(at: tree, owners: getuid() == 0)
        let image = scratch.file("vm.qcow2")
        let result = try sevimage(["create", "--rootfs", tree, "--output", image, "--size", "300M", "--json"])
        try #require(result.status == 0, "\(result)")

        // One JSON object on stdout, and no secret there or in the manifest.
        let json = try #require(try JSONSerialization.jsonObject(with: result.stdoutData) as? [String: Any])
        #expect(json["image"] as? String == image)
        let passphraseFile = scratch.file("vm.passphrase")
        let passphrase = try String(contentsOfFile: passphraseFile, encoding: .utf8)
        #expect(passphrase.count == 43 && passphrase.allSatisfy { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" })
        let attributes = try FileManager.default.attributesOfItem(atPath: passphraseFile)
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
        let manifestText = try String(contentsOfFile: scratch.file("vm.manifest.json"), encoding: .utf8)
        #expect(!result.stdout.contains(passphrase) && !result.stderr.contains(passphrase) && !manifestText.contains(passphrase))

        // The image holds no secret in the clear: readable like any new file (the umask decides), unlike the passphrase.
        let imageMode = (try FileManager.default.attributesOfItem(atPath: image)[.posixPermissions] as? Int) ?? 0
        #expect(imageMode & 0o400 != 0 && imageMode & 0o111 == 0)

        // QCOW2 container.
        let check = try runChecked("qemu-img", ["check", "--output=json", image])
        #expect(check.stdout.contains("\"check-errors\": 0"))

        // GPT: types, names, 1 MiB alignment.
        let opened = try OpenedImage(image: image)
        try #require(opened.partitions.count == 2)
        let esp = opened.partitions[0], root = opened.partitions[1]
        #expect((esp["type"] as? String)?.lowercased() == KnownGUID.espType.description)
        #expect((root["type"] as? String)?.lowercased() == KnownGUID.rootX86_64Type.description)
        #expect(esp["name"] as? String == "esp" && root["name"] as? String == "root-x86-64")
        for partition in opened.partitions {
            #expect((partition["start"] as? Int ?? 1) % 2048 == 0)
            #expect((partition["size"] as? Int ?? 1) % 2048 == 0)
        }

        // ESP: a clean FAT holding GRUB.
        try runChecked("fsck.vfat", ["-n", opened.espPartition])
        let listing = try runChecked("mdir", ["-i", opened.espPartition, "::/EFI/BOOT"], input: nil)
        #expect(listing.stdout.contains("BOOTX64") && listing.stdout.contains("EFI"))

        // LUKS2 as DESIGN.md says.
        let dump = try runChecked("cryptsetup", ["luksDump", opened.luksPartition]).stdout
        #expect(dump.contains("Version:       \t2"))
        #expect(dump.contains("cipher: aes-xts-plain64"))
        #expect(dump.contains("sector: 4096 [bytes]"))
        #expect(dump.contains("offset: 16777216 [bytes]"))
        #expect(dump.contains("PBKDF:      pbkdf2") && dump.contains("Hash:       sha256"))
        #expect(!dump.contains("argon2"))
        #expect(dump.contains("Key:        512 bits"))
        let unlock = try runProgram("cryptsetup", ["open", "--test-passphrase", "--key-file", passphraseFile, opened.luksPartition])
        #expect(unlock.status == 0, "\(unlock)")
        let wrong = scratch.file("wrong")
        try Data("not it".utf8).write(to: URL(fileURLWithPath: wrong))
        #expect(try runProgram("cryptsetup", ["open", "--test-passphrase", "--key-file", wrong, opened.luksPartition]).status != 0)

        // The root, decrypted independently: a clean ext4 (its never-written blocks read as noise) holding the tree exactly.
        let plain = try opened.decryptRoot(passphraseFile: passphraseFile)
        try runChecked("e2fsck", ["-fn", plain])
        // Unwritten blocks decrypt to noise; a writer that allocates inodes and blocks in untouched groups
        // (as the booted kernel would) must still leave a clean filesystem.
        var commands: [String] = []
        for d in 0..<60 {
            commands.append("mkdir /fresh\(d)")
            for f in 0..<12 { commands.append("write \(tree)/etc/hostname /fresh\(d)/file\(f)") }
        }
        commands.append("write \(tree)/usr/bin/tool /fresh0/big")
        let script = opened.scratch.file("allocate.debugfs")
        try Data(commands.joined(separator: "\n").utf8).write(to: URL(fileURLWithPath: script))
        let written = scratchCopy(plain, in: opened.scratch)
        try runChecked("debugfs", ["-w", "-f", script, written])
        try runChecked("e2fsck", ["-fn", written])
        let compare = try runProgram(python3, [repositoryRoot.path + "/Tests/Oracles/ext4_tree_compare.py", tree, plain, "/boot/grub", "/boot/sevimage-unlock.img"])
        #expect(compare.status == 0, "\(compare.stdout)\(compare.stderr)")

        // The generated grub.cfg boots the newest kernel (version order: 10 > 9) with its initrd.
        let cfg = try runChecked("debugfs", ["-R", "cat /boot/grub/grub.cfg", plain]).stdout
        #expect(cfg.contains("linux /boot/vmlinuz-6.1.0-10-amd64 root=UUID="))
        #expect(cfg.contains("initrd /boot/initrd.img-6.1.0-10-amd64"))
        #expect(cfg.contains("console=ttyS0"))

        // The manifest describes what is there.
        let manifest = try Manifest.decode(Data(contentsOf: URL(fileURLWithPath: scratch.file("vm.manifest.json"))), path: "manifest")
        let oracleDigest = try oracleImageDigest(image)
        #expect(manifest.image.blockSHA256 == oracleDigest && manifest.image.sha256 == nil)
        #expect(manifest.partitions[1].filesystemUUID == dump.split(separator: "\n").first { $0.hasPrefix("UUID:") }?
            .split(separator: "\t").last.map(String.init))
        #expect(manifest.luks.keyslots.map(\.pbkdf) == ["pbkdf2", "pbkdf2"])  // the passphrase's and the initramfs's
        #expect(manifest.secret.entryGUID == KnownGUID.diskPassphraseEntry.description)
        #expect(manifest.partitions[0].firstLBA == esp["start"] as? UInt64)
    }

    /// Our AES-XTS writer against libcryptsetup's own offline encryption of the same plaintext.
    @Test func encryptionIsByteCompatibleWithLibcryptsetup() throws {
        let scratch = try Scratch()
        let size = 48 << 20
        let device = scratch.file("device")
        var plaintext = [UInt8](repeating: 0, count: size)
        for i in stride(from: 0, to: size, by: 4096) { plaintext[i] = UInt8(truncatingIfNeeded: i >> 12); plaintext[i + 17] = 0x5A }
        try Data(plaintext).write(to: URL(fileURLWithPath: device))
        let pass = scratch.file("pass")
        try Data("compat test".utf8).write(to: URL(fileURLWithPath: pass))
        try runChecked("cryptsetup", ["reencrypt", "--encrypt", "--type", "luks2", "--batch-mode", "--disable-locks",
                                      "--cipher", "aes-xts-plain64", "--key-size", "512", "--sector-size", "4096",
                                      "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--reduce-device-size", "32M",
                                      "--key-file", pass, "--header", scratch.file("hdr"), device].filter { $0 != "--header" && $0 != scratch.file("hdr") })
        let keyFile = scratch.file("key")
        try runChecked("cryptsetup", ["luksDump", "--dump-volume-key", "--batch-mode", "--key-file", pass, "--volume-key-file", keyFile, device])
        let key = SecretBytes(try Data(contentsOf: URL(fileURLWithPath: keyFile)))
        let encrypted = try Data(contentsOf: URL(fileURLWithPath: device))
        // libcryptsetup moved the data 16 MiB up to make room for the header; only size - 32 MiB survives.
        let kept = size - (32 << 20)
        var ours = Array(plaintext[0..<kept])
        let cipher = try XTSCipher(key: key, encrypt: true)
        try ours.withUnsafeMutableBytes { try cipher.process($0, firstSector: 0) }
        #expect(Array(encrypted[(16 << 20)..<(16 << 20) + kept]) == ours)
    }

    @Test func passphraseFromFileIsUsedAndNotCopied() throws {
        let scratch = try Scratch()
        let tree = scratch.file("tree")
        try makeRichTree(at: tree, owners: false)
        let pass = scratch.file("my.pass")
        try Data("correct horse battery staple\n".utf8).write(to: URL(fileURLWithPath: pass))
        chmod(pass, 0o600)
        let image = scratch.file("vm.qcow2")
        let result = try sevimage(["create", "--rootfs", tree, "--output", image, "--size", "128M", "--passphrase-file", pass, "--quiet"])
        try #require(result.status == 0, "\(result)")
        #expect(!FileManager.default.fileExists(atPath: scratch.file("vm.passphrase")))
        let opened = try OpenedImage(image: image)
        let exact = scratch.file("exact")
        try Data("correct horse battery staple".utf8).write(to: URL(fileURLWithPath: exact))
        #expect(try runProgram("cryptsetup", ["open", "--test-passphrase", "--key-file", exact, opened.luksPartition]).status == 0)
    }

    @Test func runsUnprivileged() throws {
        guard getuid() == 0 else { return }  // already unprivileged: every other test proves it
        let scratch = try Scratch()
        let tree = scratch.file("tree")
        try makeRichTree(at: tree, owners: false)
        _ = try runChecked("chmod", ["-R", "a+rX", tree])
        let out = scratch.file("out")
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: false)
        chown(out, 65534, 65534)
        let result = try sevimage(["create", "--rootfs", tree, "--output", out + "/vm.qcow2", "--size", "128M", "--quiet"], user: 65534)
        #expect(result.status == 0, "\(result)")
        var info = stat()
        #expect(stat(out + "/vm.qcow2", &info) == 0 && info.st_uid == 65534)
        #expect(stat(out + "/vm.passphrase", &info) == 0 && info.st_uid == 65534 && info.st_mode & 0o777 == 0o600)
        let opened = try OpenedImage(image: out + "/vm.qcow2")
        #expect(try runProgram("cryptsetup", ["open", "--test-passphrase", "--key-file", out + "/vm.passphrase", opened.luksPartition]).status == 0)
    }

    struct BadInput: CustomTestStringConvertible, Sendable {
        var name: String
        var arguments: @Sendable (_ scratch: String) -> [String]
        var setup: @Sendable (_ scratch: String) throws -> Void = { _ in }
        var status: Int32
        var message: String
        var testDescription: String { name }
    }

    static let badInputs: [BadInput] = [
        BadInput(name: "missing rootfs", arguments: { ["--rootfs", "\($0)/nope"] }, status: 2, message: "does not exist"),
        BadInput(name: "no kernel", arguments: { ["--rootfs", "\($0)/nokernel"] },
                 setup: { try FileManager.default.createDirectory(atPath: "\($0)/nokernel/boot", withIntermediateDirectories: true) },
                 status: 2, message: "no kernel"),
        BadInput(name: "malformed size", arguments: { ["--rootfs", "\($0)/tree", "--size", "8X"] }, status: 2, message: "8X"),
        BadInput(name: "zero size", arguments: { ["--rootfs", "\($0)/tree", "--size", "0"] }, status: 2, message: "0"),
        BadInput(name: "tiny disk", arguments: { ["--rootfs", "\($0)/tree", "--size", "1M"] }, status: 2, message: "too small"),
        BadInput(name: "tree larger than the disk", arguments: { ["--rootfs", "\($0)/big", "--size", "120M"] },
                 setup: { scratch in
                     try makeRichTree(at: "\(scratch)/big", owners: false)
                     try Data(count: 1).write(to: URL(fileURLWithPath: "\(scratch)/big/blob"))
                     truncate("\(scratch)/big/blob", 200 << 20)
                 }, status: 2, message: "larger"),
        BadInput(name: "empty passphrase file", arguments: { ["--rootfs", "\($0)/tree", "--passphrase-file", "\($0)/empty.pass"] },
                 setup: { _ = FileManager.default.createFile(atPath: "\($0)/empty.pass", contents: Data(), attributes: [.posixPermissions: 0o600]) },
                 status: 2, message: "is empty"),
        BadInput(name: "passphrase with NUL", arguments: { ["--rootfs", "\($0)/tree", "--passphrase-file", "\($0)/nul.pass"] },
                 setup: { _ = FileManager.default.createFile(atPath: "\($0)/nul.pass", contents: Data([0x61, 0, 0x62]), attributes: [.posixPermissions: 0o600]) },
                 status: 2, message: "NUL"),
        BadInput(name: "unwritable output directory", arguments: { ["--rootfs", "\($0)/tree", "--output", "\($0)/missing/vm.qcow2"] },
                 status: 2, message: "does not exist"),
        BadInput(name: "existing output", arguments: { ["--rootfs", "\($0)/tree"] },
                 setup: { _ = FileManager.default.createFile(atPath: "\($0)/vm.qcow2", contents: Data("keep me".utf8)) },
                 status: 3, message: "--force"),
    ]

    @Test(arguments: badInputs)
    func badInputGetsOneLineAndLeavesNothing(_ case_: BadInput) throws {
        let scratch = try Scratch()
        try makeRichTree(at: scratch.file("tree"), owners: false)
        try case_.setup(scratch.path)
        let before = entries(of: scratch.path)
        var arguments = ["create"] + case_.arguments(scratch.path)
        if !arguments.contains("--output") { arguments += ["--output", scratch.file("vm.qcow2")] }
        if !arguments.contains("--size") { arguments += ["--size", "128M"] }
        let result = try sevimage(arguments)
        #expect(result.status == case_.status, "\(result)")
        let lines = result.stderr.split(separator: "\n")
        #expect(lines.count == 1, "\(result.stderr)")
        #expect(result.stderr.hasPrefix("sevimage: error: ") && result.stderr.contains(case_.message), "\(result.stderr)")
        #expect(entries(of: scratch.path) == before)
        if case_.name == "existing output" {
            #expect(try String(contentsOfFile: scratch.file("vm.qcow2"), encoding: .utf8) == "keep me")
        }
    }
}

@Suite(.enabled(if: canCheckImages, "needs the image tools and Python's cryptography"))
struct CreateFromTarballTests {
    /// A tarball carries what an unprivileged directory cannot: root ownership and device nodes.
    @Test func tarballOwnersAndDevicesSurviveWithoutRoot() throws {
        let scratch = try Scratch()
        let tarball = scratch.file("rootfs.tar.gz")
        let script = """
        import io, tarfile, sys
        with tarfile.open(sys.argv[1], "w:gz") as t:
            def add(name, kind=tarfile.REGTYPE, data=b"", mode=0o644, uid=0, gid=0, **kw):
                info = tarfile.TarInfo(name); info.type = kind; info.mode = mode; info.uid = uid; info.gid = gid
                info.size = len(data) if kind == tarfile.REGTYPE else 0
                for k, v in kw.items(): setattr(info, k, v)
                t.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
            add("boot", tarfile.DIRTYPE, mode=0o755)
            add("boot/vmlinuz-6.1.0-1-amd64", data=b"kernel")
            add("dev", tarfile.DIRTYPE, mode=0o755)
            add("dev/console", tarfile.CHRTYPE, mode=0o600, devmajor=5, devminor=1)
            add("usr", tarfile.DIRTYPE, mode=0o755)
            add("usr/bin", tarfile.DIRTYPE, mode=0o755)
            add("usr/bin/su", data=b"su", mode=0o4755)
            add("home", tarfile.DIRTYPE, mode=0o755)
            add("home/alice", tarfile.DIRTYPE, mode=0o700, uid=1000, gid=1000)
        """
        try runChecked(python3, ["-c", script, tarball])
        _ = try runChecked("chmod", ["a+r", tarball])
        let out = scratch.file("out")
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: false)
        chown(out, 65534, 65534)
        let result = try sevimage(["create", "--rootfs", tarball, "--output", out + "/vm.qcow2", "--size", "128M", "--quiet"],
                                  user: getuid() == 0 ? 65534 : nil)
        try #require(result.status == 0, "\(result)")
        let opened = try OpenedImage(image: out + "/vm.qcow2")
        let plain = try opened.decryptRoot(passphraseFile: out + "/vm.passphrase")
        try runChecked("e2fsck", ["-fn", plain])
        let console = try runChecked("debugfs", ["-R", "stat /dev/console", plain]).stdout
        #expect(console.contains("Type: character") && console.contains("Device major/minor number: 05:01"))
        #expect(console.contains("User:     0   Group:     0"))
        let su = try runChecked("debugfs", ["-R", "stat /usr/bin/su", plain]).stdout
        #expect(su.contains("Mode:  04755"))
        let alice = try runChecked("debugfs", ["-R", "stat /home/alice", plain]).stdout
        #expect(alice.contains("User:  1000   Group:  1000"))
    }
}

/// A copy of a file (so a test can write to one view and keep the other).
func scratchCopy(_ path: String, in scratch: Scratch) -> String {
    let copy = scratch.file((path as NSString).lastPathComponent + ".copy")
    _ = try? runChecked("cp", ["--sparse=always", path, copy])
    return copy
}

@Suite(.enabled(if: canCheckImages, "needs the image tools"))
struct CreateRecoveryTests {
    @Test func recoveryProfileAddsASecondCostlierKeyslot() throws {
        let scratch = try Scratch()
        try makeRichTree(at: scratch.file("tree"), owners: false)
        let image = scratch.file("vm.qcow2")
        let missing = try sevimage(["create", "--rootfs", scratch.file("tree"), "--output", image, "--size", "128M", "--profile", "recovery"])
        #expect(missing.status == 2 && missing.stderr.contains("--recovery-passphrase-file"), "\(missing)")
        let recovery = scratch.file("recovery.pass")
        _ = FileManager.default.createFile(atPath: recovery, contents: Data("a person's long recovery phrase".utf8), attributes: [.posixPermissions: 0o600])
        let result = try sevimage(["create", "--rootfs", scratch.file("tree"), "--output", image, "--size", "128M", "--profile", "recovery",
                                   "--recovery-passphrase-file", recovery, "--quiet"])
        try #require(result.status == 0, "\(result)")
        let manifest = try Manifest.decode(Data(contentsOf: URL(fileURLWithPath: scratch.file("vm.manifest.json"))), path: "m")
        #expect(manifest.luks.keyslots.map(\.role) == ["generated", "recovery", "initramfs"])  // the tree has an initrd
        #expect(manifest.luks.keyslots[1].iterations > manifest.luks.keyslots[0].iterations)
        let opened = try OpenedImage(image: image)
        for key in [scratch.file("vm.passphrase"), recovery] {
            #expect(try runProgram("cryptsetup", ["open", "--test-passphrase", "--key-file", key, opened.luksPartition]).status == 0)
        }
    }
}
