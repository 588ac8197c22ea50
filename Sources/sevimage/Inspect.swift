import ArgumentParser
import Foundation
import SEVImageKit

/// `sevimage inspect IMAGE`: the partition table, filesystems and LUKS header of an image, no passphrase needed.
struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Show an image's partitions, filesystems and LUKS header (QCOW2 or raw; no passphrase needed).",
        discussion: """
            Reads the GPT field by field (both copies, CRCs checked), probes each partition's first MiB with \
            libblkid and a LUKS header with libcryptsetup. Only a few MiB are read, whatever the disk's size; \
            the image is never written. The report goes to stderr; --json prints one object on stdout.

            Example: sevimage inspect vm.qcow2 --json
            """
    )

    @Argument(help: ArgumentHelp("The image (QCOW2 or raw).", valueName: "image"))
    var image: String

    @Flag(help: "Print one JSON object on stdout.")
    var json = false

    func run() throws {
        let inspection = try ImageInspector(path: image).inspect()
        if json {
            try printJSON(inspection)
        } else {
            Console.write(inspection.text)
        }
    }
}
