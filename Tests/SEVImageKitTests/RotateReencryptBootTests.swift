import Foundation
import Testing
@testable import SEVImageKit

/// Real boots through OVMF and GRUB after `rotate` and after `reencrypt`: GRUB unlocks the rotated keyslot
/// and the re-encrypted volume with the new passphrase. One image, two boots, one QEMU at a time.
@Suite(.serialized, .enabled(if: canCreateDemoImage && hasTool("cryptsetup"), "needs qemu-system-x86, qemu-utils, ovmf, grub-efi-amd64-bin, dosfstools, mtools, e2fsprogs, cpio, cryptsetup-bin"))
struct RotateReencryptBootTests {
    @Test func bootsAfterRotateAndAfterReencrypt() throws {
        let scratch = try Scratch()
        let (image, passphraseFile) = try makeBootableImage(in: scratch)
        let original = scratch.file("original.passphrase")
        try FileManager.default.copyItem(atPath: passphraseFile, toPath: original)

        let rotated = try sevimage(["rotate", image, "--passphrase-file", passphraseFile, "--quiet"])
        try #require(rotated.status == 0, "\(rotated)")
        let afterRotate = try sevimage(["boot", image, "--passphrase-file", passphraseFile, "--timeout", "240", "--quiet"])
        #expect(afterRotate.status == 0, "\(afterRotate)")
        #expect(afterRotate.stderr.contains("booted under"))

        let rotatedPassphrase = scratch.file("rotated.passphrase")
        try FileManager.default.copyItem(atPath: passphraseFile, toPath: rotatedPassphrase)
        let reencrypted = try sevimage(["reencrypt", image, "--passphrase-file", passphraseFile, "--quiet"])
        try #require(reencrypted.status == 0, "\(reencrypted)")
        let afterReencrypt = try sevimage(["boot", image, "--passphrase-file", passphraseFile, "--timeout", "240", "--quiet"])
        #expect(afterReencrypt.status == 0, "\(afterReencrypt)")
        #expect(afterReencrypt.stderr.contains("booted under"))

        // Neither earlier passphrase opens the image any more.
        let opened = try OpenedImage(image: image)
        for old in [original, rotatedPassphrase] {
            #expect(try runProgram("cryptsetup", ["open", "--test-passphrase", "--key-file", old, opened.luksPartition]).status != 0)
        }
        #expect(qemuProcesses(using: image).isEmpty)
    }
}
