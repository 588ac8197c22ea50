import ArgumentParser
import Foundation
import SEVImageKit

struct Create: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Build an encrypted two-partition QCOW2 image from a root tree.",
        discussion: """
        Writes IMAGE.qcow2, IMAGE.manifest.json and, unless --passphrase-file is given, IMAGE.passphrase
        (mode 0600, the generated 256-bit passphrase that becomes the SEV secret). Nothing appears at
        those paths unless the whole build succeeds. Needs no root, no mount and no device-mapper.

        The root boots with one unlock: GRUB opens it with the passphrase, and the tree's initramfs
        (initramfs-tools with cryptsetup-initramfs, or dracut with cryptsetup) opens it again with a key
        that sevimage writes into /boot/sevimage-unlock.img inside the encrypted root.

        Example: sevimage create --rootfs ./rootfs --output vm.qcow2 --size 8G
        """
    )

    @Option(help: ArgumentHelp("The root tree: a directory or a tarball (.tar, .tar.gz, .tar.xz, .tar.zst).", valueName: "dir|tarball"))
    var rootfs: String

    @Option(help: ArgumentHelp("Where to write the QCOW2 image.", valueName: "image.qcow2"))
    var output: String

    @Option(help: ArgumentHelp("Virtual disk size (K, M, G, T suffixes); overrides the profile.", valueName: "size"))
    var size: String?

    @Option(help: ArgumentHelp("A built-in profile name or a profile file.", valueName: "name|file"))
    var profile: String = "default"

    @Option(help: ArgumentHelp("Link the image to this OVMF build: its hashes, secret area and launch digests go into the manifest.", valueName: "OVMF.fd"))
    var ovmf: String?

    @Flag(help: "Accept an --ovmf without an SEV secret area: the image is then only for the standard (typed passphrase) boot path.")
    var standardBootOnly = false

    @Option(help: ArgumentHelp("Use the passphrase in this file instead of generating one (no IMAGE.passphrase is written).", valueName: "file"))
    var passphraseFile: String?

    @Option(help: ArgumentHelp("Add a second keyslot for this recovery passphrase (a person's; PBKDF2 with the profile's recovery iterations).", valueName: "file"))
    var recoveryPassphraseFile: String?

    @Option(help: ArgumentHelp("Add a keyslot for this key file, which your initramfs already carries (PBKDF2, minimum iterations), instead of writing /boot/sevimage-unlock.img.", valueName: "file"))
    var initramfsKeyfile: String?

    @Flag(help: "Write no /boot/sevimage-unlock.img and add no keyslot for it (profile key [boot] initramfs_unlock): the initramfs then unlocks the root its own way, or asks for the passphrase again.")
    var noInitramfsUnlock = false

    @Flag(help: "Encrypt the whole root partition, free space included, so that the image shows no used-block pattern (slower, larger).")
    var wipeFreeSpace = false

    @Option(help: ArgumentHelp("Derive every UUID from this seed (with SOURCE_DATE_EPOCH: reproducible builds).", valueName: "text"))
    var seed: String?

    @Flag(help: "Replace existing outputs.")
    var force = false

    @Flag(help: "Print one JSON object with the result on stdout.")
    var json = false

    @Flag(help: "Print no progress on stderr.")
    var quiet = false

    func validate() throws {
        try checkOutputFileName(output)
    }

    func run() throws {
        var profile = try Profile.load(nameOrPath: self.profile)
        if let size { profile.diskSize = try parseSize(size) }
        if wipeFreeSpace { profile.wipeFreeSpace = true }
        if standardBootOnly { profile.allowStandardBootOnly = true }
        if noInitramfsUnlock { profile.initramfsUnlock = false }
        var request = CreateRequest(rootfs: rootfs, output: output, profile: profile)
        request.force = force
        request.ovmf = ovmf
        request.seed = seed
        request.passphrase = try passphraseFile.map { try Passphrase.read(from: $0) }
        request.recoveryPassphrase = try recoveryPassphraseFile.map { path in
            let recovery = try Passphrase.read(from: path)
            try recovery.checkTypableAtGrub(path: path, role: "recovery passphrase")
            return recovery
        }
        if let passphraseFile { request.passphrase?.warnIfNotTypableAtGrub(path: passphraseFile) }
        request.sourceDateEpoch = try sourceDateEpoch()
        request.initramfsKeyfile = try initramfsKeyfile.map(InitramfsKeyfile.read(from:))
        let json = self.json || profile.json
        let result = try ImageBuilder(request: request, progress: Progress(quiet: quiet || profile.quiet || json)).run()
        if json { try printJSON(result) }
    }
}
