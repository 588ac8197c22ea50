import ArgumentParser
import Foundation
import SEVImageKit

/// `sevimage link IMAGE --ovmf OVMF.fd`: record the firmware an existing image belongs to in its manifest.
struct LinkCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "link",
        abstract: "Link an existing image to an OVMF build: rewrite its manifest's firmware section without rebuilding it.",
        discussion: """
            Checks that the manifest describes the image (its digest), computes the firmware's size, hashes, \
            secret area and launch digests (modes, vCPU counts and type from the profile: --profile, else the \
            one the image was built with) and replaces the manifest atomically. The image is not touched.

            Example: sevimage link vm.qcow2 --ovmf /usr/share/ovmf/AmdSev/OVMF.fd
            """
    )

    @Argument(help: ArgumentHelp("The image.", valueName: "image.qcow2"))
    var image: String

    @Option(help: ArgumentHelp("The OVMF build to link the image to.", valueName: "OVMF.fd"))
    var ovmf: String

    @Option(help: ArgumentHelp("The manifest (default: IMAGE.manifest.json beside the image).", valueName: "file"))
    var manifest: String?

    @Option(help: ArgumentHelp("Take launch modes and vCPUs from this profile (default: the manifest's profile).", valueName: "name|file"))
    var profile: String?

    @Flag(help: "Accept a firmware without an SEV secret area: the image is then only for the standard (typed passphrase) boot path.")
    var standardBootOnly = false

    @Flag(help: "Print the new firmware section as one JSON object on stdout.")
    var json = false

    func run() throws {
        let manifestPath = manifest ?? Manifest.defaultPath(forImage: image)
        let profileName: String
        if let profile {
            profileName = profile
        } else if let data = FileManager.default.contents(atPath: manifestPath) {
            profileName = try Manifest.decode(data, path: manifestPath).profile
        } else {
            throw GeneralError.invalidArgument("cannot read the manifest \(manifestPath) (give it with --manifest)")
        }
        var resolved = try Profile.load(nameOrPath: profileName)
        if standardBootOnly { resolved.allowStandardBootOnly = true }
        let updated = try ManifestFirmwareLink(imagePath: image, manifestPath: manifestPath, ovmfPath: ovmf, profile: resolved).run()
        if json, let firmware = updated.firmware {
            try printJSON(firmware)
        } else if let firmware = updated.firmware {
            let digests = firmware.launchDigests.map { d in d.vcpus.map { "\(d.mode) (\($0) x \(d.vcpuType ?? "?"))" } ?? d.mode }
            Console.write("sevimage: linked \(image) to \(firmware.file) (sha256 \(firmware.sha256)); launch digests: "
                          + digests.joined(separator: ", ") + "; wrote \(manifestPath)\n")
        }
    }
}
