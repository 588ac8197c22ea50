import Foundation
import Testing
@testable import SEVImageKit

/// Whether this machine can run the boot tests: QEMU and Debian's OVMF.
let canBootImages: Bool = hasTool("qemu-system-x86_64") && hasTool("qemu-img")
    && FileManager.default.fileExists(atPath: BootOptions.debianFirmwareCode)
    && FileManager.default.fileExists(atPath: BootOptions.debianFirmwareVariables)

/// Whether the hand-made reference image can be built here (it runs the cryptsetup CLI, as root).
let canMakeReferenceImage: Bool = canBootImages && getuid() == 0
    && ["sfdisk", "mkfs.vfat", "mcopy", "mke2fs", "cryptsetup", "grub-mkstandalone", "cpio", "dpkg-deb"].allSatisfy(hasTool)

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

/// A bootable image of the demo tree and its passphrase file, inside `scratch`.
///
/// For now built by hand with `Tests/Support/make-reference-image.sh` (the shape `sevimage create`
/// writes), so that the boot driver is tested on its own; to be switched to `sevimage create`.
func makeBootableImage(in scratch: Scratch) throws -> (image: String, passphraseFile: String) {
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
