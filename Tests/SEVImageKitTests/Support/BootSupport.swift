import Foundation
import Testing
@testable import SEVImageKit

/// Whether this machine can run the boot tests: QEMU and Debian's OVMF.
let canBootImages: Bool = hasTool("qemu-system-x86_64") && hasTool("qemu-img")
    && FileManager.default.fileExists(atPath: BootOptions.debianFirmwareCode)
    && FileManager.default.fileExists(atPath: BootOptions.debianFirmwareVariables)

/// Whether `sevimage create` can build the demo image here (the demo tree needs apt, dpkg-deb and cpio).
let canCreateDemoImage: Bool = canBootImages
    && ["mkfs.vfat", "mcopy", "mke2fs", "grub-mkstandalone", "cpio", "dpkg-deb", "apt-get"].allSatisfy(hasTool)

/// Whether the hand-made reference image can be built here (it runs the cryptsetup CLI, as root).
let canMakeReferenceImage: Bool = canCreateDemoImage && getuid() == 0 && ["sfdisk", "cryptsetup"].allSatisfy(hasTool)

/// The demo root tree (`scripts/demo-rootfs.sh`), built once into the repository's `.cache`.
func demoRootTree() throws -> String {
    let result = try runProgram(repositoryRoot.appendingPathComponent("scripts/demo-rootfs.sh").path, [])
    guard result.status == 0, let path = result.stdout.split(separator: "\n").last.map(String.init) else {
        throw GeneralError.toolFailed("scripts/demo-rootfs.sh", status: result.status, stderr: result.stderr)
    }
    return path
}

/// Writes a passphrase file (mode 0600, no trailing newline).
func writePassphraseFile(_ path: String, _ text: String) throws {
    guard FileManager.default.createFile(atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600]) else {
        throw GeneralError.io("create", path: path, errno: EIO)
    }
}

/// A bootable image of the demo tree, made by `sevimage create` with a generated passphrase, and its
/// passphrase file, inside `scratch`.
func makeBootableImage(in scratch: Scratch) throws -> (image: String, passphraseFile: String) {
    let tree = try demoRootTree()
    let image = scratch.file("demo.qcow2")
    let result = try sevimage(["create", "--rootfs", tree, "--output", image, "--quiet"])
    guard result.status == 0 else {
        throw GeneralError.toolFailed("sevimage create", status: result.status, stderr: result.stderr)
    }
    let passphraseFile = scratch.file("demo.passphrase")
    guard FileManager.default.fileExists(atPath: passphraseFile) else {
        throw GeneralError.io("find", path: passphraseFile, errno: ENOENT)
    }
    return (image, passphraseFile)
}

/// The same kind of image built by hand with `Tests/Support/make-reference-image.sh` (cryptsetup CLI,
/// sfdisk, grub-mkstandalone), so that the boot driver is also tested apart from `sevimage create`.
func makeReferenceImage(in scratch: Scratch) throws -> (image: String, passphraseFile: String) {
    let tree = try demoRootTree()
    let image = scratch.file("reference.qcow2")
    let passphraseFile = scratch.file("reference.passphrase")
    try writePassphraseFile(passphraseFile, "boot test \(UUID().uuidString)")
    let script = repositoryRoot.appendingPathComponent("Tests/Support/make-reference-image.sh").path
    let result = try runProgram(script, [tree, image, passphraseFile], environment: ["TMPDIR": scratch.path])
    guard result.status == 0 else {
        throw GeneralError.toolFailed("make-reference-image.sh", status: result.status, stderr: result.stderr)
    }
    return (image, passphraseFile)
}

/// A QCOW2 copy of `image` whose ESP is zeros (no BOOTX64.EFI, no FAT at all), checked to be so: only a GRUB
/// that does not come from the disk can boot it.
func copyWithZeroedESP(_ image: String, in scratch: Scratch) throws -> String {
    let raw = scratch.file("wiped.raw")
    try runChecked("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", image, raw])
    let table = try JSONSerialization.jsonObject(with: try runChecked("sfdisk", ["--json", raw]).stdoutData) as? [String: Any]
    let partitions = try #require((table?["partitiontable"] as? [String: Any])?["partitions"] as? [[String: Any]])
    let esp = try #require(partitions.first { ($0["type"] as? String)?.uppercased() == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" })
    let start = try #require(esp["start"] as? Int) * 512, size = try #require(esp["size"] as? Int) * 512
    let handle = try FileHandle(forUpdating: URL(fileURLWithPath: raw))
    try handle.seek(toOffset: UInt64(start))
    try handle.write(contentsOf: Data(count: size))
    try handle.close()
    let wiped = scratch.file("wiped.qcow2")
    try runChecked("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", raw, wiped])
    unlink(raw)
    let check = try OpenedImage(image: wiped)
    let espBytes = try Data(contentsOf: URL(fileURLWithPath: check.espPartition))
    #expect(espBytes.count == size && espBytes.allSatisfy { $0 == 0 })
    #expect(try runProgram("fsck.vfat", ["-n", check.espPartition]).status != 0, "the ESP is no FAT filesystem")
    return wiped
}
