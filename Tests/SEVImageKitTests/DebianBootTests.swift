import Foundation
import Testing
@testable import SEVImageKit

/// Whether real Debian trees can be built here: `mmdebstrap --mode=root` needs root and Debian's mirror.
let canBuildDebianTrees: Bool = canCreateDemoImage && getuid() == 0 && hasTool("mmdebstrap") && hasTool("blkid")

/// A Debian 12 tarball built with the distribution's tools only (`Tests/Support/make-debian-tree.sh`):
/// linux-image-amd64, systemd, cryptsetup and an initramfs generator; no crypttab, no key, no configuration.
/// scripts/test.sh starts both builds before the Swift build, so that here they are usually done already.
func debianTree(_ flavour: String) throws -> String {
    let script = repositoryRoot.appendingPathComponent("Tests/Support/make-debian-tree.sh").path
    let result = try runProgram(script, [flavour])
    guard result.status == 0, let path = result.stdout.split(separator: "\n").last.map(String.init) else {
        throw GeneralError.toolFailed("make-debian-tree.sh \(flavour)", status: result.status, stderr: result.stderr)
    }
    return path
}

/// What the tree's systemd unit prints once the system is up with `/` writable and the file capability kept.
let debianMarker = "SEVIMAGE-DEBIAN-OK"

/// One image of the initramfs-tools tree, shared by the standard boot and the AmdSev boot.
let initramfsToolsImage: Result<(scratch: Scratch, image: String, passphrase: String), GeneralError> = {
    do {
        let scratch = try Scratch()
        let (image, passphrase) = try DebianBootTests.create(try debianTree("initramfs-tools"), in: scratch, unprivileged: true)
        return .success((scratch, image, passphrase))
    } catch let error as GeneralError {
        return .failure(error)
    } catch {
        return .failure(.invalidArgument("\(error)"))
    }
}()

/// Real distributions: a packages-only Debian tree goes through `create` with nothing but `--size` and boots
/// to a writable multi-user system with the passphrase typed once, at GRUB; the initramfs never asks again.
@Suite(.serialized, .enabled(if: canBuildDebianTrees, "needs root, mmdebstrap and Debian's mirror, and the boot tools"))
struct DebianBootTests {
    /// `create --size 3G` and nothing else (as an unprivileged user when asked and when we are root).
    static func create(_ tarball: String, in scratch: Scratch, unprivileged: Bool = false) throws -> (image: String, passphrase: String) {
        let image = scratch.file("vm.qcow2")
        var user: UInt32?
        var tree = tarball
        if unprivileged && getuid() == 0 {
            // The tarball is readable by anyone; the unprivileged user gets a name for it inside the scratch directory.
            tree = scratch.file("tree.tar")
            if link(tarball, tree) != 0 { try FileManager.default.copyItem(atPath: tarball, toPath: tree) }
            user = 65534
        }
        let created = try sevimage(["create", "--rootfs", tree, "--output", image, "--size", "3G"], user: user)
        guard created.status == 0 else { throw GeneralError.toolFailed("sevimage create", status: created.status, stderr: created.stderr) }
        return (image, scratch.file("vm.passphrase"))
    }

    /// What the image says about itself matches what independent tools read from it.
    static func checkImage(_ image: String, scratch: Scratch, passphrase: String, initramfs: String) throws {
        let manifest = try Manifest.decode(Data(contentsOf: URL(fileURLWithPath: scratch.file("vm.manifest.json"))), path: "manifest")
        #expect(manifest.boot?.initramfs == initramfs)
        #expect(manifest.boot?.unlockArchive == "/boot/sevimage-unlock.img")
        #expect(manifest.luks.keyslots.map(\.role) == ["generated", "initramfs"])
        let opened = try OpenedImage(image: image)
        func blkid(_ path: String) throws -> String {
            try runChecked("blkid", ["-p", "-s", "UUID", "-o", "value", path]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let luksUUID = try blkid(opened.luksPartition)
        #expect(manifest.luks.uuid == luksUUID && manifest.partitions[1].filesystemUUID == luksUUID)
        let plain = try opened.decryptRoot(passphraseFile: passphrase)
        let ext4UUID = try blkid(plain)
        #expect(manifest.partitions[1].innerFilesystemUUID == ext4UUID)
        let cfg = try runChecked("debugfs", ["-R", "cat /boot/grub/grub.cfg", plain]).stdout
        #expect(cfg.contains("root=UUID=\(ext4UUID) rd.luks.uuid=\(luksUUID) rw"), "\(cfg)")
        #expect(manifest.boot?.kernelCommandLine?.hasPrefix("root=UUID=\(ext4UUID) rd.luks.uuid=\(luksUUID) rw") == true)
        let archive = scratch.file("unlock.img")
        try runChecked("debugfs", ["-R", "dump /boot/sevimage-unlock.img \(archive)", plain])
        let crypttab = try runChecked("/bin/sh", ["-c", "cpio -i --quiet --to-stdout cryptroot/crypttab < '\(archive)'"]).stdout
        #expect(crypttab == "root UUID=\(luksUUID) /cryptroot/keyfiles/root.key luks\n")
        // The tree's extended attributes, read back from the filesystem itself.
        let attributes = try runChecked("debugfs", ["-R", "ea_list /usr/local/bin/sevimage-captest", plain]).stdout
        #expect(attributes.contains("security.capability (20)"), "\(attributes)")
        #expect(attributes.contains("user.sevimage (4) = \"kept\""), "\(attributes)")
        unlink(plain)
        unlink(archive)
    }

    /// Boots and checks that GRUB asked once and the initramfs never did.
    static func boot(_ image: String, passphrase: String, extra: [String] = []) throws {
        let booted = try sevimage(["boot", image, "--passphrase-file", passphrase, "--expect", debianMarker,
                                   "--memory", "1G", "--timeout", "600"] + extra)
        #expect(booted.status == 0, "\(booted.stderr.suffix(3000))")
        #expect(booted.stderr.components(separatedBy: "Enter passphrase for").count == 2, "one prompt, at GRUB")
        #expect(!booted.stderr.contains("Please unlock disk") && !booted.stderr.contains("Please enter passphrase"))
        #expect(booted.stderr.contains("\(debianMarker) running") || booted.stderr.contains("\(debianMarker) degraded"))
        #expect(!booted.stderr.contains(try String(contentsOfFile: passphrase, encoding: .utf8)))
    }

    @Test func initramfsToolsTreeBootsWithOneUnlock() throws {
        let (scratch, image, passphrase) = try initramfsToolsImage.get()
        try Self.checkImage(image, scratch: scratch, passphrase: passphrase, initramfs: "initramfs-tools")
        try Self.boot(image, passphrase: passphrase)
    }

    @Test func dracutTreeBootsWithOneUnlock() throws {
        let scratch = try Scratch()
        let (image, passphrase) = try Self.create(try debianTree("dracut"), in: scratch)
        try Self.checkImage(image, scratch: scratch, passphrase: passphrase, initramfs: "dracut")
        try Self.boot(image, passphrase: passphrase)
    }

    /// The firmware's own GRUB unlocks the initramfs-tools image with no ESP at all (zeros in its place).
    @Test(.enabled(if: canBuildAmdSevFirmware, "needs the AmdSev firmware build"))
    func initramfsToolsTreeBootsThroughTheFirmwareGrubWithTheESPZeroed() throws {
        let firmware = try amdSevFirmware.get()
        let (scratch, image, passphrase) = try initramfsToolsImage.get()
        let wiped = try copyWithZeroedESP(image, in: scratch)
        try Self.boot(wiped, passphrase: passphrase, extra: ["--bios", firmware])
    }
}
