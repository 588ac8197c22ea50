import ArgumentParser
import Foundation
import SEVImageKit

/// `sevimage verify IMAGE`: every claim of the manifest checked against the image, the firmware and the passphrase.
struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check every claim of an image's manifest against the image (and the firmware and passphrase, when given).",
        discussion: """
            Checks the image's digest, virtual size, disk GUID, each partition (type, GUID, LBAs, name, \
            filesystem and its UUID) and the LUKS header (UUID, version, cipher, key size, sector size, data \
            offset, keyslots). With --ovmf, the firmware's size, hashes, secret area and every launch digest \
            are recomputed. With --passphrase-file, a keyslot must open and the ext4 inside must carry the \
            manifest's UUID. Each check prints pass, FAIL or skip on stderr; --json prints them on stdout.

            Exit status: 0 when every check passes, 4 when one fails, 2 when the image or manifest is unusable \
            (missing, empty, truncated, not QCOW2).

            Example: sevimage verify vm.qcow2 --ovmf OVMF.fd --passphrase-file vm.passphrase
            """
    )

    @Argument(help: ArgumentHelp("The image.", valueName: "image.qcow2"))
    var image: String

    @Option(help: ArgumentHelp("The manifest (default: IMAGE.manifest.json beside the image).", valueName: "file"))
    var manifest: String?

    @Option(help: ArgumentHelp("The disk passphrase: check that it opens a keyslot and that the root holds the manifest's ext4.", valueName: "file"))
    var passphraseFile: String?

    @Option(help: ArgumentHelp("The firmware the manifest is linked to: recompute its hashes, secret area and launch digests.", valueName: "OVMF.fd"))
    var ovmf: String?

    @Flag(help: "Print one JSON object on stdout.")
    var json = false

    func run() throws {
        var verifier = ImageVerifier(imagePath: image, manifestPath: manifest)
        verifier.ovmfPath = ovmf
        verifier.passphrase = try passphraseFile.map { try Passphrase.read(from: $0) }
        let report = try verifier.run()
        if json {
            try printJSON(report)
        } else {
            Console.write(report.text)
        }
        if let first = report.checks.first(where: { $0.status == .fail }) {
            throw VerificationError.failed(failures: report.failures, total: report.checks.filter { $0.status != .skipped }.count,
                                           first: first.name)
        }
        if !json {
            Console.write("sevimage: \(image) matches \(report.manifest) (\(report.checks.filter { $0.status == .pass }.count) checks passed)\n")
        }
    }
}
