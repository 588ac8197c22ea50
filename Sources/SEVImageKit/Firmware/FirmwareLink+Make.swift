import Foundation

extension FirmwareLink {
    /// The manifest's record of the firmware an image belongs to: identity, secret area and the
    /// launch digests a verifier must expect.
    ///
    /// `modes` are `sev`, `sev-es`, `sev-snp`; plain SEV gives one digest, the others one per entry of
    /// `vcpus`. SEV-SNP uses the default guest features (SNPActive only). A firmware without a usable
    /// secret area is refused unless `allowNoSecretArea` (the create flag `--standard-boot-only`).
    public static func make(ovmfPath: String, modes: [String], vcpus: [Int], vcpuType: String,
                            allowNoSecretArea: Bool) throws -> FirmwareLink {
        let image = try OVMFImage.load(path: ovmfPath)
        let area = image.secretArea
        if area == nil && !allowNoSecretArea { throw FirmwareError.noSecretArea(path: ovmfPath) }
        let parsedModes = try modes.map(LaunchMode.init(parsing:))
        let needsVCPUs = parsedModes.contains { $0 != .sev }
        let type = needsVCPUs ? try VCPUType.named(vcpuType) : nil
        if needsVCPUs && vcpus.isEmpty { throw FirmwareError.vcpuCount(0) }
        var digests: [LaunchDigest] = []
        var seen = Set<String>()
        for mode in parsedModes {
            let counts: [Int?] = mode == .sev ? [nil] : vcpus.map { $0 }
            for count in counts {
                let key = "\(mode.rawValue)/\(count.map(String.init) ?? "-")"
                guard seen.insert(key).inserted else { continue }
                let digest = try SEVLaunchDigest.compute(image, mode: mode, vcpus: count ?? 1, vcpuType: type)
                digests.append(LaunchDigest(mode: mode.rawValue, vcpus: count, vcpuType: count == nil ? nil : type?.name, digest: hex(digest)))
            }
        }
        return FirmwareLink(file: PathName.name(of: ovmfPath), size: UInt64(image.size),
                            sha256: hex(image.sha256), sha384: hex(image.sha384),
                            secretArea: area.map { SecretArea(gpa: UInt64($0.base), size: $0.size) },
                            launchDigests: digests)
    }
}
