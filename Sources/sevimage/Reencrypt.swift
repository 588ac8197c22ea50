import ArgumentParser
import Foundation
import SEVImageKit

/// `sevimage reencrypt IMAGE --passphrase-file OLD`: a new volume key and passphrase, every written sector re-encrypted.
struct Reencrypt: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Re-encrypt an image under a new volume key and a new passphrase.",
        discussion: """
            For an image whose volume key may have leaked, or a clone of a golden image (clones share the volume \
            key). Writes the re-encrypted image beside the original (IMAGE.sevimage-reencrypt/, as much space as \
            the image takes now), then puts it in place atomically and writes IMAGE.passphrase anew and the \
            manifest. Only allocated clusters are read and re-encrypted, so the time grows with the data and the \
            image stays sparse. Killed before the new image is in place, the original is untouched; after, the new \
            passphrase is in IMAGE.passphrase.new. Running the same command again finishes or restarts the work. \
            Recovery keyslots are not carried over (their passphrases are unknown here): add them again with \
            sevimage keys add.

            Example: sevimage reencrypt vm.qcow2 --passphrase-file vm.passphrase
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

    @Flag(help: "Print one JSON object with the result on stdout.")
    var json = false

    @Flag(help: "Print no progress on stderr.")
    var quiet = false

    func run() throws {
        var request = ReencryptRequest(image: image, passphrase: try Passphrase.read(from: passphraseFile))
        request.newPassphrase = try newPassphraseFile.map { try Passphrase.read(from: $0) }
        if let newPassphraseFile { request.newPassphrase?.warnIfNotTypableAtGrub(path: newPassphraseFile) }
        request.keepOldPassphrase = keepOldPassphrase
        let result = try Reencryption(request: request, progress: Progress(quiet: quiet || json)).run()
        if !result.droppedKeyslots.isEmpty {
            Console.warning("keyslot \(result.droppedKeyslots.map(String.init).joined(separator: ", ")) of the old header was not carried over; add recovery passphrases again with sevimage keys add")
        }
        if json { try printJSON(result) }
    }
}
