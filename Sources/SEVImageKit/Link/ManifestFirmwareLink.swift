import Foundation

/// `sevimage link`: records in an existing image's manifest which firmware it belongs to, without
/// rebuilding the image. Only the manifest's `firmware` changes; it is replaced atomically (written
/// beside it, fsync'ed, renamed over it).
public struct ManifestFirmwareLink {
    public var imagePath: String
    public var manifestPath: String
    public var ovmfPath: String
    public var profile: Profile

    public init(imagePath: String, manifestPath: String?, ovmfPath: String, profile: Profile) {
        self.imagePath = imagePath
        self.manifestPath = manifestPath ?? Manifest.defaultPath(forImage: imagePath)
        self.ovmfPath = ovmfPath
        self.profile = profile
    }

    /// Checks that the manifest describes this image (its digest), computes the firmware's link and
    /// replaces the manifest. Returns the new manifest.
    @discardableResult
    public func run() throws -> Manifest {
        guard let data = FileManager.default.contents(atPath: manifestPath) else {
            throw GeneralError.invalidArgument("cannot read the manifest \(manifestPath) (give it with --manifest)")
        }
        var manifest = try Manifest.decode(data, path: manifestPath)
        _ = try DiskImageReader(path: imagePath, requireQCOW2: manifest.image.format == "qcow2")
        let digest = try manifest.image.digests(of: imagePath)
        guard digest.expected == digest.actual else {
            throw LinkError.imageDoesNotMatch(image: imagePath, manifest: manifestPath)
        }
        manifest.firmware = try FirmwareLink.make(ovmfPath: ovmfPath, modes: profile.measureModes, vcpus: profile.vcpus,
                                                  vcpuType: profile.vcpuType, allowNoSecretArea: profile.allowStandardBootOnly)
        let scratch = try TemporaryDirectory(near: manifestPath, purpose: "sevimage-link")
        let temporary = scratch.file("manifest.json")
        try manifest.encoded().write(to: URL(fileURLWithPath: temporary))
        try OutputFiles.publish(temporary, as: manifestPath, replace: true)
        return manifest
    }
}

public enum LinkError: SEVImageError {
    case imageDoesNotMatch(image: String, manifest: String)

    public var exitStatus: ExitStatus { .verificationFailed }

    public var description: String {
        switch self {
        case .imageDoesNotMatch(let image, let manifest):
            return "\(manifest) does not describe \(image) (the image's digest differs); run sevimage verify"
        }
    }
}
