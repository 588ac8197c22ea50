import Foundation

/// `IMAGE.manifest.json`: what an image is, which firmware it belongs to, and what a verifier must expect.
///
/// It never holds a secret: no passphrase, no volume key. A guest owner (or key broker) trusts it when
/// deciding to release the disk secret, so every field is something `verify` can check against the image
/// or the firmware. Field names are camelCase in JSON; see the README ("The manifest") for each one.
public struct Manifest: Codable, Sendable, Equatable {
    public static let currentSchemaVersion = 1

    public var schemaVersion: Int = Manifest.currentSchemaVersion
    public var tool: Tool
    /// RFC 3339 UTC; `SOURCE_DATE_EPOCH` when it is set.
    public var createdAt: String
    public var image: Image
    public var partitions: [Partition]
    public var luks: LUKS
    public var secret: SecretDelivery
    public var profile: String
    public var firmware: FirmwareLink?
    public var reproducible: Reproducibility
    public var rotations: [Rotation] = []
    /// How the root boots: written by `create` from sevimage 0.3 on (nil in older manifests).
    public var boot: Boot? = nil

    /// What `create` found in the tree and wrote for its boot (paths inside the root). Nothing here is secret.
    public struct Boot: Codable, Sendable, Equatable {
        public var kernel: String
        public var initrd: String?
        /// The initrd's kind: `initramfs-tools`, `dracut` or `other` (nil without an initrd).
        public var initramfs: String?
        /// The archive holding the initramfs's key and crypttab entry, loaded after the initrd (nil: none).
        public var unlockArchive: String?
        /// The ext4 block (4096 bytes: the same number as the LUKS data sector) that holds the archive: where
        /// `reencrypt` finds the key to replace. It says only where a file is, nothing of what it holds.
        public var unlockArchiveBlock: UInt64?
        /// `generated` (sevimage's /boot/grub/grub.cfg) or `tree` (the tree's own, kept).
        public var grubConfig: String
        /// The command line of the generated grub.cfg (nil when the tree's is kept).
        public var kernelCommandLine: String?
    }

    public struct Tool: Codable, Sendable, Equatable {
        public var name: String = "sevimage"
        public var version: String = SEVImageKit.version
        public init() {}
    }

    public struct Image: Codable, Sendable, Equatable {
        /// The image's file name (no directory: the manifest sits beside it).
        public var file: String
        public var format: String
        public var virtualSize: UInt64
        /// The QCOW2 file's digest as written (`ImageDigest`: SHA-256 over its 64 KiB blocks' SHA-256s).
        public var blockSHA256: String?
        /// SHA-256 of the whole file: what manifests of sevimage 0.1 record instead (read and checked, never written).
        public var sha256: String?
        public var diskGUID: String

        public init(file: String, format: String, virtualSize: UInt64, blockSHA256: String, diskGUID: String) {
            self.file = file
            self.format = format
            self.virtualSize = virtualSize
            self.blockSHA256 = blockSHA256
            self.diskGUID = diskGUID
        }

        /// The digest this manifest records and the one `path` has now (same kind), for a check by name.
        public func digests(of path: String) throws -> (name: String, expected: String, actual: String) {
            if let blockSHA256 { return ("image digest", blockSHA256, hex(try ImageDigest.of(file: path))) }
            return ("image sha256", sha256 ?? "nothing", hex(try Crypto.hashFile(path)))
        }

        /// Records `digest` (from `ImageDigest`) as the image's, replacing an older manifest's whole-file SHA-256.
        public mutating func record(digest: [UInt8]) {
            blockSHA256 = hex(digest)
            sha256 = nil
        }
    }

    public struct Partition: Codable, Sendable, Equatable {
        public var number: Int
        /// `esp` or `root`.
        public var role: String
        public var name: String
        public var typeGUID: String
        public var partitionGUID: String
        public var firstLBA: UInt64
        public var lastLBA: UInt64
        /// `vfat` or `crypto_LUKS`.
        public var filesystem: String
        /// The FAT volume id (`XXXX-XXXX`) or the LUKS UUID.
        public var filesystemUUID: String
        /// For the root: the ext4 filesystem inside the LUKS volume.
        public var innerFilesystem: String?
        public var innerFilesystemUUID: String?
    }

    public struct LUKS: Codable, Sendable, Equatable {
        public var uuid: String
        public var version: Int
        public var cipher: String
        public var keySizeBits: Int
        public var sectorSize: Int
        /// Offset of the encrypted data from the start of the partition, in bytes.
        public var dataOffset: UInt64
        public var keyslots: [Keyslot]
        /// `used-blocks` (only what ext4 allocated is written) or `full` (`wipe_free_space`).
        public var encryptedExtent: String
    }

    public struct Keyslot: Codable, Sendable, Equatable {
        public var slot: Int
        /// `generated` (the SEV secret, generated by sevimage), `given` (the SEV secret from --passphrase-file), `recovery` (a person's passphrase) or `keyfile`.
        public var role: String
        public var pbkdf: String
        public var hash: String
        public var iterations: UInt32
    }

    public struct SecretDelivery: Codable, Sendable, Equatable {
        /// The secret table's header GUID.
        public var tableGUID: String
        /// The GUID of the entry that carries the disk passphrase.
        public var entryGUID: String
        /// Where the passphrase file was written, relative to the manifest.
        public var passphraseFile: String?
    }

    public struct Reproducibility: Codable, Sendable, Equatable {
        public var sourceDateEpoch: Int64?
        /// True when `--seed` derived every UUID and layout choice.
        public var seeded: Bool
    }

    public struct Rotation: Codable, Sendable, Equatable {
        /// `rotate` or `reencrypt`.
        public var kind: String
        public var at: String
        public var removedKeyslots: [Int]
        public var addedKeyslots: [Int]
    }
}

/// The firmware an image is linked to, and the launch digests a verifier must expect from it.
public struct FirmwareLink: Codable, Sendable, Equatable {
    public var file: String
    public var size: UInt64
    public var sha256: String
    public var sha384: String
    /// The SEV secret area (guest physical address and size); nil for a firmware without one
    /// (then the image is linked for the standard boot path only).
    public var secretArea: SecretArea?
    public var launchDigests: [LaunchDigest]

    public struct SecretArea: Codable, Sendable, Equatable {
        public var gpa: UInt64
        public var size: UInt32
        public init(gpa: UInt64, size: UInt32) { self.gpa = gpa; self.size = size }
    }

    public struct LaunchDigest: Codable, Sendable, Equatable {
        /// `sev`, `sev-es` or `sev-snp`.
        public var mode: String
        /// vCPU count and type (QEMU `-cpu`); nil for plain SEV, which does not depend on them.
        public var vcpus: Int?
        public var vcpuType: String?
        /// Lowercase hex: SHA-256 (48 bytes for SEV-SNP: SHA-384).
        public var digest: String
        public init(mode: String, vcpus: Int?, vcpuType: String?, digest: String) {
            self.mode = mode; self.vcpus = vcpus; self.vcpuType = vcpuType; self.digest = digest
        }
    }

    public init(file: String, size: UInt64, sha256: String, sha384: String, secretArea: SecretArea?, launchDigests: [LaunchDigest]) {
        self.file = file; self.size = size; self.sha256 = sha256; self.sha384 = sha384
        self.secretArea = secretArea; self.launchDigests = launchDigests
    }
}

extension Manifest {
    /// Pretty, key-sorted JSON with a trailing newline, so that two reproducible runs compare byte for byte.
    public func encoded() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        var data = try encoder.encode(self)
        data.append(0x0A)
        return data
    }

    public static func decode(_ data: Data, path: String) throws -> Manifest {
        do {
            let manifest = try JSONDecoder().decode(Manifest.self, from: data)
            guard manifest.schemaVersion == currentSchemaVersion else {
                throw GeneralError.invalidArgument("\(path): manifest schema version \(manifest.schemaVersion) is not supported (this sevimage reads \(currentSchemaVersion))")
            }
            return manifest
        } catch let error as SEVImageError {
            throw error
        } catch {
            throw GeneralError.invalidArgument("\(path) is not a sevimage manifest: \(jsonProblem(error))")
        }
    }

    /// The manifest that belongs beside an image: `IMAGE.manifest.json` for `IMAGE.qcow2`.
    public static func defaultPath(forImage image: String) -> String {
        stem(image) + ".manifest.json"
    }
}

/// `dir/name` without its last extension: the prefix for `.manifest.json` and `.passphrase`.
public func stem(_ path: String) -> String { PathName.stem(path) }

/// A short, one-line account of a JSON decoding error.
func jsonProblem(_ error: Error) -> String {
    switch error {
    case DecodingError.keyNotFound(let key, let context):
        return "missing \((context.codingPath.map(\.stringValue) + [key.stringValue]).joined(separator: "."))"
    case DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context):
        return "wrong type at \(context.codingPath.map(\.stringValue).joined(separator: "."))"
    case DecodingError.dataCorrupted(let context):
        return context.codingPath.isEmpty ? "not valid JSON" : "bad value at \(context.codingPath.map(\.stringValue).joined(separator: "."))"
    default:
        return "not valid JSON"
    }
}
