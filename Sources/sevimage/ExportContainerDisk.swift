import ArgumentParser
import Foundation
import SEVImageKit

/// `sevimage export containerdisk IMAGE --output DIR`: the image as a KubeVirt containerDisk, an OCI image layout.
struct ExportContainerDisk: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "containerdisk",
        abstract: "Write the image as a KubeVirt containerDisk: an OCI image layout directory, no registry or daemon.",
        discussion: """
            One uncompressed tar layer holds the QCOW2 as /disk/NAME (uid and gid 107, KubeVirt's qemu user; mode \
            0440); the image config says amd64/linux; the OCI manifest's annotations (and the config's labels) carry \
            the manifest's image digest, firmware hashes and launch digests. The image is read once, and must match \
            its manifest's digest or nothing is written. Timestamps are SOURCE_DATE_EPOCH or the manifest's \
            createdAt, so the same image gives the same digests. DIR must not exist or be empty; it appears whole \
            or not at all. Push it with `skopeo copy oci:DIR:TAG docker://REGISTRY/NAME:TAG`.

            Example: sevimage export containerdisk vm.qcow2 --output vm-containerdisk
            """
    )

    @Argument(help: ArgumentHelp("The image.", valueName: "image.qcow2"))
    var image: String

    @Option(help: ArgumentHelp("The OCI layout directory to create (must not exist, or be empty).", valueName: "dir"))
    var output: String

    @Option(help: ArgumentHelp("The manifest (default: IMAGE.manifest.json beside the image).", valueName: "file"))
    var manifest: String?

    @Option(help: ArgumentHelp("The tag in index.json (org.opencontainers.image.ref.name).", valueName: "tag"))
    var tag = "latest"

    @Option(help: ArgumentHelp("The disk's file name under /disk/ (default: the image's file name).", valueName: "name"))
    var diskName: String?

    @Flag(help: "Print the result as one JSON object on stdout.")
    var json = false

    func validate() throws {
        guard !output.isEmpty else { throw GeneralError.invalidArgument("--output is empty: give the directory to create") }
    }

    func run() throws {
        let export = ContainerDiskExport(image: image, manifest: manifest, output: output, tag: tag, diskName: diskName,
                                         sourceDateEpoch: try sourceDateEpoch())
        let result = try export.run()
        if json {
            try printJSON(result)
        } else {
            Console.write("sevimage: wrote \(result.output) (oci:\(result.output):\(result.tag), \(result.diskPath), "
                          + "layer \(result.layerDigest), \(result.layerSize) bytes; manifest \(result.manifestDigest))\n")
        }
    }
}
