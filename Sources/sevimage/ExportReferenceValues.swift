import ArgumentParser
import Foundation
import SEVImageKit

extension ReferenceValueFormat: ExpressibleByArgument {}
extension DigestEncoding: ExpressibleByArgument {}

/// `sevimage export reference-values IMAGE`: the manifest's expected launch values for a verifier.
struct ExportReferenceValues: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reference-values",
        abstract: "Write the launch values the image's manifest expects, as a verifier loads them.",
        discussion: """
            --format rvps (the default) writes the registration message of the confidential-containers Trustee \
            reference value provider (RVPS, sample extractor): the manifest's SEV-SNP launch digests as \
            snp_launch_measurement, the name Trustee's default policy compares the attestation report's \
            measurement with. Register it with `rvps-tool register --path FILE` or POST it to the KBS admin API \
            (/kbs/v0/reference-value). Trustee before v0.18.0 spells the measurement in base64: give \
            --digest-encoding base64. --format json writes every launch digest (SEV, SEV-ES, SEV-SNP) with its \
            vCPU count and type, and the firmware's hashes and secret area. Only the manifest is read; a manifest \
            without launch digests is refused.

            Example: sevimage export reference-values vm.qcow2 --output vm.rvps.json
            """
    )

    @Argument(help: ArgumentHelp("The image (its manifest, IMAGE.manifest.json, is what is read).", valueName: "image.qcow2"))
    var image: String

    @Option(help: ArgumentHelp("The manifest (default: IMAGE.manifest.json beside the image).", valueName: "file"))
    var manifest: String?

    @Option(help: ArgumentHelp("rvps (Trustee RVPS message) or json (sevimage's own document).", valueName: "format"))
    var format: ReferenceValueFormat = .rvps

    @Option(help: ArgumentHelp("How the rvps message spells digests: hex (Trustee 0.18 and later) or base64 (before).", valueName: "encoding"))
    var digestEncoding: DigestEncoding = .hex

    @Option(help: ArgumentHelp("Write to this file instead of stdout (created atomically; must not exist).", valueName: "file"))
    var output: String?

    @Flag(help: "Replace an existing output file.")
    var force = false

    @Flag(help: "With --output: print a JSON summary on stdout.")
    var json = false

    struct Summary: Encodable {
        var output: String
        var format: String
        var manifest: String
        var launchDigests: Int
    }

    func validate() throws {
        if let output { try checkOutputFileName(output) }
        if json && output == nil {
            throw GeneralError.invalidArgument("--json needs --output: without it the reference values themselves are stdout")
        }
        if force && output == nil { throw GeneralError.invalidArgument("--force needs --output") }
    }

    func run() throws {
        let manifestPath = manifest ?? Manifest.defaultPath(forImage: image)
        let values = try ManifestValues.load(manifestPath: manifestPath)
        let data = try values.rendered(format, encoding: digestEncoding)
        guard let output else {
            FileHandle.standardOutput.write(data)
            return
        }
        try OutputFiles.writeWhole(data, to: output, replace: force, inputs: [manifestPath, image])
        let count = format == .rvps ? values.digests(.sevSNP).count : values.digests.count
        if json {
            try printJSON(Summary(output: output, format: format.rawValue, manifest: manifestPath, launchDigests: count))
        } else {
            Console.write("sevimage: wrote \(output) (\(format.rawValue), \(count) launch digest\(count == 1 ? "" : "s") from \(manifestPath))\n")
        }
    }
}
