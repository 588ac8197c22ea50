import ArgumentParser
import Foundation
import SEVImageKit

/// `sevimage rotate IMAGE --passphrase-file OLD`: a new passphrase in a new keyslot, the old keyslot destroyed,
/// in place and crash-safe. The volume key stays (see `reencrypt`).
struct Rotate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Replace an image's passphrase in place: a new PBKDF2 keyslot, then the old one destroyed.",
        discussion: """
            Only the LUKS header inside the QCOW2 changes, so the time does not depend on the data: the manifest's \
            image digest is updated from IMAGE.blockdigests, with only the header area hashed again. Writes \
            IMAGE.passphrase anew (0600) and updates the manifest. Safe to kill at any instant: the image then \
            opens with the old or the new passphrase (the new one is on disk, in IMAGE.passphrase.new or \
            IMAGE.passphrase, before the old keyslot goes), and running the same command again finishes the rotation. \
            The volume key is kept: use sevimage reencrypt when it may have leaked.

            Example: sevimage rotate vm.qcow2 --passphrase-file vm.passphrase
            """
    )

    @Argument(help: "The QCOW2 image made by sevimage create.")
    var image: String

    @Option(help: ArgumentHelp("A passphrase that opens the image now.", valueName: "file"))
    var passphraseFile: String

    @Option(help: ArgumentHelp("Use this passphrase instead of generating one.", valueName: "file"))
    var newPassphraseFile: String?

    @Flag(help: "Keep the replaced IMAGE.passphrase as IMAGE.passphrase.old.")
    var keepOldPassphrase = false

    /// Accepted and ignored since IMAGE.blockdigests: the digest is updated from IMAGE.blockdigests without reading the data.
    @Flag(help: .hidden)
    var noRehash = false

    @Flag(help: "Print one JSON object with the result on stdout.")
    var json = false

    @Flag(help: "Print no progress on stderr.")
    var quiet = false

    func run() throws {
        var request = RotateRequest(image: image, passphrase: try Passphrase.read(from: passphraseFile))
        request.newPassphrase = try newPassphraseFile.map { try Passphrase.read(from: $0) }
        if let newPassphraseFile { request.newPassphrase?.warnIfNotTypableAtGrub(path: newPassphraseFile) }
        request.keepOldPassphrase = keepOldPassphrase
        if noRehash {
            Console.write("sevimage: note: --no-rehash is ignored: the manifest's image digest is updated from IMAGE.blockdigests without reading the data\n")
        }
        let result = try KeyRotation(request: request, progress: Progress(quiet: quiet || json)).run()
        Console.write("sevimage: note: \(result.note)\n")
        if json { try printJSON(result) }
    }
}
