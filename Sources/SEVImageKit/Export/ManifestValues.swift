import Foundation

/// What a manifest tells a verifier to expect, checked field by field: the input of `export reference-values`
/// and of the annotations `export containerdisk` writes.
///
/// The manifest is untrusted input here (it may come from anywhere): every digest must be hex of its
/// algorithm's length, every mode known, every SEV-ES/SEV-SNP digest must name its vCPU count and a vCPU
/// type QEMU knows, and no launch configuration may be listed twice.
public struct ManifestValues: Sendable, Equatable {
    /// One expected launch digest and the launch configuration it belongs to.
    public struct Digest: Sendable, Equatable, Encodable {
        public var mode: String
        /// vCPU count and QEMU `-cpu` type: nil for plain SEV, which does not depend on them.
        public var vcpus: Int?
        public var vcpuType: String?
        /// `sha256` (SEV, SEV-ES) or `sha384` (SEV-SNP).
        public var algorithm: String
        /// The VMSA's SEV_FEATURES the digest was computed with (`FirmwareLink.make`: SNPActive for SEV-SNP,
        /// none for SEV-ES); nil for plain SEV, which has no VMSA.
        public var guestFeatures: UInt64?
        /// Lowercase hex.
        public var digest: String
    }

    /// The image's digest as the manifest records it: `blockSHA256` (sevimage 0.2 on) or `sha256` (0.1).
    public struct ImageDigest: Sendable, Equatable {
        public var kind: Kind
        public var hex: String
        public enum Kind: String, Sendable { case blockSHA256, sha256 }
    }

    public var manifestPath: String
    /// SHA-256 of the manifest file's bytes: ties every export to the exact manifest it came from.
    public var manifestSHA256: String
    public var createdAt: String
    public var imageFile: String
    public var imageDigest: ImageDigest?
    /// The linked firmware (nil: the image is not linked to one, and there are no launch digests).
    public var firmware: FirmwareLink?
    public var digests: [Digest]

    /// Reads and checks the manifest at `path`.
    public static func load(manifestPath path: String) throws -> ManifestValues {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw GeneralError.invalidArgument("cannot read the manifest \(path) (give it with --manifest)")
        }
        return try ManifestValues(manifest: Manifest.decode(data, path: path), path: path, bytes: data)
    }

    public init(manifest: Manifest, path: String, bytes: Data) throws {
        func bad(_ problem: String) -> ExportError { .badManifest(manifest: path, problem) }
        var digests: [Digest] = []
        var checkedFirmware = manifest.firmware
        if let firmware = manifest.firmware {
            digests = try Self.checkedDigests(firmware, bad: bad)
            checkedFirmware?.sha256 = firmware.sha256.lowercased()
            checkedFirmware?.sha384 = firmware.sha384.lowercased()
        }
        var imageDigest: ImageDigest?
        if let block = manifest.image.blockSHA256 {
            guard Self.isHex(block, bytes: 32) else { throw bad("image.blockSHA256 is not 64 hex digits") }
            imageDigest = ImageDigest(kind: .blockSHA256, hex: block.lowercased())
        } else if let whole = manifest.image.sha256 {
            guard Self.isHex(whole, bytes: 32) else { throw bad("image.sha256 is not 64 hex digits") }
            imageDigest = ImageDigest(kind: .sha256, hex: whole.lowercased())
        }
        self.manifestPath = path
        self.manifestSHA256 = hex(Crypto.sha256(bytes))
        self.createdAt = manifest.createdAt
        self.imageFile = manifest.image.file
        self.imageDigest = imageDigest
        self.firmware = checkedFirmware
        self.digests = digests
    }

    /// Refuses a manifest without launch digests: there is nothing a verifier could expect.
    public func requireLaunchDigests() throws {
        guard !digests.isEmpty else { throw ExportError.noLaunchDigests(manifest: manifestPath) }
    }

    private static func checkedDigests(_ firmware: FirmwareLink, bad: (String) -> ExportError) throws -> [Digest] {
        guard Self.isHex(firmware.sha256, bytes: 32) else { throw bad("firmware.sha256 is not 64 hex digits") }
        guard Self.isHex(firmware.sha384, bytes: 48) else { throw bad("firmware.sha384 is not 96 hex digits") }
        var digests: [Digest] = []
        var seen = Set<String>()
        for (index, entry) in firmware.launchDigests.enumerated() {
            let field = "firmware.launchDigests[\(index)]"
            guard let mode = LaunchMode(rawValue: entry.mode) else { throw bad("\(field) has the unknown mode '\(entry.mode)' (sev, sev-es, sev-snp)") }
            let length = mode == .sevSNP ? 48 : 32
            guard Self.isHex(entry.digest, bytes: length) else { throw bad("\(field) (\(mode.rawValue)) is not \(2 * length) hex digits") }
            var vcpus: Int?, vcpuType: String?
            if mode != .sev {
                guard let count = entry.vcpus, (1...SEVLaunchDigest.maximumVCPUs).contains(count) else {
                    throw bad("\(field) (\(mode.rawValue)) needs a vCPU count from 1 to \(SEVLaunchDigest.maximumVCPUs)")
                }
                guard let name = entry.vcpuType, let type = try? VCPUType.named(name) else {
                    throw bad("\(field) (\(mode.rawValue)) names no vCPU type QEMU knows ('\(entry.vcpuType ?? "")')")
                }
                vcpus = count
                vcpuType = type.name
            }
            let key = [mode.rawValue, vcpus.map(String.init) ?? "", vcpuType ?? ""].joined(separator: "/")
            guard seen.insert(key).inserted else {
                let what = vcpus.map { " for \($0) vCPUs of type \(vcpuType ?? "")" } ?? ""
                throw bad("the \(mode.rawValue) launch digest\(what) is listed twice")
            }
            digests.append(Digest(mode: mode.rawValue, vcpus: vcpus, vcpuType: vcpuType, algorithm: mode == .sevSNP ? "sha384" : "sha256",
                                  guestFeatures: mode == .sev ? nil : mode.defaultGuestFeatures, digest: entry.digest.lowercased()))
        }
        return digests
    }

    /// The digests of one mode, in the manifest's order.
    public func digests(_ mode: LaunchMode) -> [Digest] { digests.filter { $0.mode == mode.rawValue } }

    static func isHex(_ text: String, bytes: Int) -> Bool {
        text.utf8.count == 2 * bytes && hexBytes(text) != nil
    }
}
