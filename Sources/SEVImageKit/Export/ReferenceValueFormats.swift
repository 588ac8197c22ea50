import Foundation

/// The documents `export reference-values` writes.
public enum ReferenceValueFormat: String, CaseIterable, Sendable {
    /// The confidential-containers Trustee RVPS registration message (sample extractor).
    case rvps
    /// sevimage's own document: every expected launch value with its launch configuration.
    case json
}

/// How the RVPS message spells a digest: Trustee's SNP verifier reports the measurement in hex from v0.18.0 on
/// and in standard base64 before (v0.11.0 to v0.17.x), and its policy compares those strings as they are.
public enum DigestEncoding: String, CaseIterable, Sendable {
    case hex, base64
}

extension ManifestValues {
    /// The version Trustee's RVPS requires of a message (`MESSAGE_VERSION` in rvps/src/lib.rs: any other is refused).
    public static let rvpsMessageVersion = "0.1.0"
    /// The reference value Trustee's default CPU policy looks the SNP measurement up in
    /// (`input.snp.measurement in query_reference_value("snp_launch_measurement")`).
    public static let rvpsSNPMeasurementName = "snp_launch_measurement"

    /// The document in `format`; a manifest without launch digests is refused.
    public func rendered(_ format: ReferenceValueFormat, encoding: DigestEncoding = .hex) throws -> Data {
        try requireLaunchDigests()
        return switch format {
        case .rvps: try rvpsMessage(encoding: encoding)
        case .json: try document()
        }
    }

    /// The message Trustee's RVPS registers (`rvps-tool register --path FILE`, or the body of the KBS admin API's
    /// `POST /kbs/v0/reference-value`):
    ///
    ///     message    = {"version": "0.1.0", "type": "sample", "payload": base64(provenance)}
    ///     provenance = {"snp_launch_measurement": ["<SHA-384 launch digest>", ...]}
    ///
    /// The sample extractor stores each provenance key as a reference value whose value is the JSON it is given
    /// (a list here: the policy's `in` accepts any of them, one per vCPU count) and sets its expiration itself,
    /// 12 months from registration. Only SEV-SNP: Trustee has no verifier for plain SEV or SEV-ES launches.
    public func rvpsMessage(encoding: DigestEncoding) throws -> Data {
        let snp = digests(.sevSNP)
        guard !snp.isEmpty else { throw ExportError.noDigestForFormat(manifest: manifestPath, format: "rvps", mode: "sev-snp") }
        var values: [String] = []
        for digest in snp {
            guard let bytes = hexBytes(digest.digest) else { continue }
            let text = encoding == .hex ? digest.digest : Data(bytes).base64EncodedString()
            if !values.contains(text) { values.append(text) }
        }
        let provenance = try Self.encoder(pretty: false).encode([Self.rvpsSNPMeasurementName: values])
        struct Message: Encodable { var version: String; var type: String; var payload: String }
        let message = Message(version: Self.rvpsMessageVersion, type: "sample", payload: provenance.base64EncodedString())
        var data = try Self.encoder(pretty: true).encode(message)
        data.append(0x0A)
        return data
    }

    /// sevimage's own document (`"format": "sevimage-reference-values"`, version 1): the manifest's firmware
    /// identity, secret area and every launch digest with its mode, vCPU count and type, algorithm and guest features.
    public func document() throws -> Data {
        guard let firmware else { throw ExportError.noLaunchDigests(manifest: manifestPath) }
        struct Image: Encodable { var file: String; var blockSHA256: String?; var sha256: String? }
        struct Firmware: Encodable {
            var file: String
            var size: UInt64
            var sha256: String
            var sha384: String
            var secretArea: FirmwareLink.SecretArea?
        }
        struct Document: Encodable {
            var format = "sevimage-reference-values"
            var formatVersion = 1
            var manifest: String
            var manifestSHA256: String
            var createdAt: String
            var image: Image
            var firmware: Firmware
            var launchDigests: [Digest]
        }
        let document = Document(
            manifest: PathName.name(of: manifestPath), manifestSHA256: manifestSHA256, createdAt: createdAt,
            image: Image(file: imageFile, blockSHA256: imageDigest?.kind == .blockSHA256 ? imageDigest?.hex : nil,
                         sha256: imageDigest?.kind == .sha256 ? imageDigest?.hex : nil),
            firmware: Firmware(file: firmware.file, size: firmware.size, sha256: firmware.sha256, sha384: firmware.sha384,
                               secretArea: firmware.secretArea),
            launchDigests: digests)
        var data = try Self.encoder(pretty: true).encode(document)
        data.append(0x0A)
        return data
    }

    /// Key-sorted JSON, so that the same manifest always gives the same bytes.
    static func encoder(pretty: Bool) -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }
}
