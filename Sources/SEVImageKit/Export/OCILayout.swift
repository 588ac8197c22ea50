import Foundation

/// The JSON documents of an OCI image layout (opencontainers/image-spec: image-layout.md, manifest.md,
/// config.md, image-index.md), written without a registry or a daemon:
///
///     DIR/oci-layout            {"imageLayoutVersion": "1.0.0"}
///     DIR/index.json            image index: one manifest descriptor, tagged by org.opencontainers.image.ref.name
///     DIR/blobs/sha256/<hex>    content-addressed blobs: the layer tar, the image config, the image manifest
///
/// Every blob's name is the SHA-256 of its bytes, and every descriptor gives the blob's media type, digest
/// and size. JSON keys are sorted, so the same inputs give the same bytes and so the same digests.
enum OCI {
    static let layoutFile = #"{"imageLayoutVersion":"1.0.0"}"#
    static let indexMediaType = "application/vnd.oci.image.index.v1+json"
    static let manifestMediaType = "application/vnd.oci.image.manifest.v1+json"
    static let configMediaType = "application/vnd.oci.image.config.v1+json"
    static let layerMediaType = "application/vnd.oci.image.layer.v1.tar"
    static let refNameAnnotation = "org.opencontainers.image.ref.name"

    struct Platform: Encodable {
        var architecture: String
        var os: String
    }

    struct Descriptor: Encodable {
        var mediaType: String
        var digest: String
        var size: UInt64
        var annotations: [String: String]? = nil
        var platform: Platform? = nil
    }

    struct Manifest: Encodable {
        var schemaVersion = 2
        var mediaType = OCI.manifestMediaType
        var config: Descriptor
        var layers: [Descriptor]
        var annotations: [String: String]
    }

    struct Index: Encodable {
        var schemaVersion = 2
        var mediaType = OCI.indexMediaType
        var manifests: [Descriptor]
    }

    struct Config: Encodable {
        struct Execution: Encodable {
            var labels: [String: String]
            enum CodingKeys: String, CodingKey { case labels = "Labels" }
        }
        struct RootFS: Encodable {
            var type = "layers"
            var diffIDs: [String]
            enum CodingKeys: String, CodingKey { case type, diffIDs = "diff_ids" }
        }
        struct History: Encodable {
            var created: String
            var createdBy: String
            enum CodingKeys: String, CodingKey { case created, createdBy = "created_by" }
        }
        var created: String
        var architecture: String
        var os: String
        var config: Execution
        var rootfs: RootFS
        var history: [History]
    }

    static func encoded(_ value: some Encodable) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(value)
    }

    /// Tags as the OCI distribution spec writes them: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
    static func isValidTag(_ tag: String) -> Bool {
        let bytes = Array(tag.utf8)
        guard let first = bytes.first, bytes.count <= 128 else { return false }
        func word(_ c: UInt8) -> Bool { (48...57).contains(c) || (65...90).contains(c) || (97...122).contains(c) || c == 0x5F }
        return word(first) && bytes.dropFirst().allSatisfy { word($0) || $0 == 0x2E || $0 == 0x2D }
    }
}
