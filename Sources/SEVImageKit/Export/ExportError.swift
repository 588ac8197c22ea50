import Foundation

/// Why `export reference-values`, `export containerdisk` or `export libvirt` refused or failed: one line each.
public enum ExportError: SEVImageError, Equatable {
    /// The manifest names no firmware or no launch digest: there is nothing a verifier could expect.
    case noLaunchDigests(manifest: String)
    /// The format wants a launch digest of a mode the manifest does not have (`rvps`: SEV-SNP).
    case noDigestForFormat(manifest: String, format: String, mode: String)
    /// A field of the manifest that cannot go into the output as it is.
    case badManifest(manifest: String, String)
    /// A name or tag the output cannot carry.
    case badName(String)
    /// The output directory exists and holds something (or is not a directory).
    case outputNotEmpty(String)
    /// The image is not the one the manifest describes: the exported disk would not be what its annotations claim.
    case imageMismatch(image: String, name: String, expected: String, actual: String)
    /// The firmware file is not the one the manifest's launch digests were computed from.
    case firmwareMismatch(path: String, manifest: String, what: String, expected: String, actual: String)
    /// A value of the domain that cannot work as given (a policy, a vCPU count, a file).
    case badDomain(String)

    public var exitStatus: ExitStatus {
        switch self {
        case .noLaunchDigests, .noDigestForFormat, .badManifest, .badName, .badDomain: .invalidInput
        case .outputNotEmpty: .conflict
        case .imageMismatch, .firmwareMismatch: .verificationFailed
        }
    }

    public var description: String {
        switch self {
        case .noLaunchDigests(let manifest):
            return "\(manifest) has no launch digests: link the image to its firmware first (sevimage link IMAGE --ovmf OVMF.fd)"
        case .noDigestForFormat(let manifest, let format, let mode):
            return "\(manifest) has no \(mode) launch digest, which --format \(format) needs (link the image with a profile whose measure_modes include \(mode), or use --format json)"
        case .badManifest(let manifest, let problem):
            return "\(manifest): \(problem)"
        case .badName(let message):
            return message
        case .outputNotEmpty(let path):
            return "\(path) exists and is not an empty directory; give a new directory"
        case .imageMismatch(let image, let name, let expected, let actual):
            return "\(image) is not the image its manifest describes (\(name) \(actual), the manifest says \(expected)); nothing was exported (run sevimage verify)"
        case .firmwareMismatch(let path, let manifest, let what, let expected, let actual):
            return "\(path) is not the firmware \(manifest) was linked to (\(what) \(actual), the manifest says \(expected)); the guest's launch measurement would not match: give the right file with --ovmf"
        case .badDomain(let message):
            return message
        }
    }
}
