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
