import COpenSSL
import Foundation

/// `export containerdisk`: the QCOW2 as a KubeVirt containerDisk, in an OCI image layout directory (no
/// registry, no daemon; `skopeo copy oci:DIR:TAG docker://...` pushes it, `podman pull oci:DIR:TAG` loads it).
///
///     one layer, an uncompressed tar:   disk/            directory  0555  uid 107 gid 107 (qemu)
///                                       disk/NAME.qcow2  file       0440  uid 107 gid 107  the image, byte for byte
///
/// KubeVirt boots the one disk it finds under `/disk`, which its qemu user (uid 107) must be able to read.
/// The image is read once: each piece is written into the layer and goes into the layer's SHA-256 and the
/// image digest at once, so memory stays at one 1 MiB buffer whatever the image's size. The image digest must
/// be the manifest's, or nothing is exported: the manifest's digests become the OCI manifest's annotations,
/// and they must describe the disk in the layer. Every timestamp is `SOURCE_DATE_EPOCH` or else the manifest's
/// `createdAt`, so two exports of one image give the same digests. The layout is built in a private directory
/// beside the output and renamed into place whole: on any failure nothing is left at the output.
public struct ContainerDiskExport {
    public var image: String
    public var manifest: String
    public var output: String
    public var tag: String
    public var diskName: String
    public var sourceDateEpoch: Int64?

    /// KubeVirt's qemu user and group.
    public static let owner: UInt32 = 107
    public static let fileMode: UInt32 = 0o440
    public static let directoryMode: UInt32 = 0o555
    static let pieceSize = 1 << 20

    public init(image: String, manifest: String? = nil, output: String, tag: String = "latest", diskName: String? = nil,
                sourceDateEpoch: Int64? = nil) {
        self.image = image
        self.manifest = manifest ?? Manifest.defaultPath(forImage: image)
        var trimmed = output
        while trimmed.count > 1 && trimmed.hasSuffix("/") { trimmed.removeLast() }
        self.output = trimmed
        self.tag = tag
        self.diskName = diskName ?? PathName.name(of: image)
        self.sourceDateEpoch = sourceDateEpoch
    }

    /// What was written, for `--json` and the summary line.
    public struct Result: Encodable, Sendable {
        public var output: String
        public var tag: String
        public var diskPath: String
        public var manifestDigest: String
        public var configDigest: String
        public var layerDigest: String
        public var layerSize: UInt64
        public var created: String
        public var annotations: [String: String]
    }

    /// Refuses what cannot work before reading the image: names, the output, the manifest, the room.
    public func run() throws -> Result {
        guard OCI.isValidTag(tag) else {
            throw ExportError.badName("--tag '\(tag)' is not an OCI tag (letters, digits, '_', '.' and '-', at most 128, not starting with '.' or '-')")
        }
        guard Self.isValidDiskName(diskName) else {
            throw ExportError.badName("'\(diskName)' cannot name the disk under /disk/ (1 to 94 letters, digits, '.', '_', '+' or '-', not starting with '.'); give --disk-name NAME")
        }
        try Self.checkOutput(output)
        let values = try ManifestValues.load(manifestPath: manifest)
        guard let expected = values.imageDigest else {
            throw ExportError.badManifest(manifest: manifest, "it records no digest of the image (image.blockSHA256)")
        }
        let mtime = try timestamp(values)
        let created = iso8601(Date(timeIntervalSince1970: TimeInterval(mtime)))
        _ = try QCOW2Image(path: image)  // a QCOW2 sevimage can read, with no backing or external data file
        let source = try RawFile(path: image, writable: false)
        let size = source.size
        let parent = PathName.directory(of: output).isEmpty ? "." : PathName.directory(of: output)
        try FreeSpace.require(size + (1 << 20), in: parent, for: "export containerdisk", why: "the layer holds the whole image")

        let work = try TemporaryDirectory(near: output, purpose: "sevimage-export")
        let layout = work.file("layout")
        let blobs = layout + "/blobs/sha256"
        for directory in [layout, layout + "/blobs", blobs] where mkdir(directory, 0o755) != 0 {
            throw GeneralError.io("create", path: directory, errno: errno)
        }
        let layer = try writeLayer(from: source, size: size, to: blobs + "/layer.partial", mtime: UInt64(mtime), expected: expected)
        let layerDigest = "sha256:" + hex(layer.digest)
        guard rename(blobs + "/layer.partial", blobs + "/" + hex(layer.digest)) == 0 else {
            throw GeneralError.io("rename", path: blobs + "/layer.partial", errno: errno)
        }

        let diskPath = "/disk/" + diskName
        let annotations = values.annotations(created: created, diskPath: diskPath)
        let config = OCI.Config(created: created, architecture: "amd64", os: "linux", config: .init(labels: annotations),
                                rootfs: .init(diffIDs: [layerDigest]),
                                history: [.init(created: created, createdBy: "sevimage export containerdisk")])
        let configDescriptor = try writeBlob(OCI.encoded(config), mediaType: OCI.configMediaType, in: blobs)
        let layerDescriptor = OCI.Descriptor(mediaType: OCI.layerMediaType, digest: layerDigest, size: layer.size)
        let imageManifest = OCI.Manifest(config: configDescriptor, layers: [layerDescriptor], annotations: annotations)
        var manifestDescriptor = try writeBlob(OCI.encoded(imageManifest), mediaType: OCI.manifestMediaType, in: blobs)
        manifestDescriptor.annotations = [OCI.refNameAnnotation: tag]
        manifestDescriptor.platform = .init(architecture: "amd64", os: "linux")
        try OCI.encoded(OCI.Index(manifests: [manifestDescriptor])).withUnsafeBytes {
            try OutputFiles.writeNew($0, to: layout + "/index.json", mode: 0o644)
        }
        try Data(OCI.layoutFile.utf8).withUnsafeBytes { try OutputFiles.writeNew($0, to: layout + "/oci-layout", mode: 0o644) }
        try OutputFiles.syncDirectory(of: blobs + "/x")
        try OutputFiles.syncDirectory(of: blobs)
        try OutputFiles.syncDirectory(of: layout + "/x")

        FaultInjection.checkpoint("before publishing \(PathName.name(of: output))")
        // rename(2) replaces an empty directory and fails on one that is not (someone wrote there meanwhile).
        guard rename(layout, output) == 0 else {
            if errno == ENOTEMPTY || errno == EEXIST || errno == ENOTDIR || errno == EISDIR { throw ExportError.outputNotEmpty(output) }
            throw GeneralError.io("move into place", path: output, errno: errno)
        }
        try OutputFiles.syncDirectory(of: output)
        return Result(output: output, tag: tag, diskPath: diskPath, manifestDigest: manifestDescriptor.digest,
                      configDigest: configDescriptor.digest, layerDigest: layerDigest, layerSize: layer.size, created: created,
                      annotations: annotations)
    }

    /// `SOURCE_DATE_EPOCH`, else the manifest's `createdAt` (RFC 3339), in the range a tar header's mtime holds.
    func timestamp(_ values: ManifestValues) throws -> Int64 {
        if let sourceDateEpoch {
            guard sourceDateEpoch >= 0 && UInt64(sourceDateEpoch) <= TarEntryHeader.largestOctal else {
                throw GeneralError.invalidArgument("SOURCE_DATE_EPOCH \(sourceDateEpoch) does not fit a tar header's time (0 to \(TarEntryHeader.largestOctal))")
            }
            return sourceDateEpoch
        }
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        guard let date = formatter.date(from: values.createdAt), date.timeIntervalSince1970 >= 0,
              date.timeIntervalSince1970 <= TimeInterval(TarEntryHeader.largestOctal) else {
            throw ExportError.badManifest(manifest: manifest, "createdAt '\(values.createdAt)' is not an RFC 3339 time from 1970 to 2242; set SOURCE_DATE_EPOCH")
        }
        return Int64(date.timeIntervalSince1970)
    }

    /// The tar layer: the two headers, the image read once and written as it is read, the padding and the end.
    /// Returns the layer's SHA-256 (its digest and diff id: it is not compressed) and size; throws, before
    /// anything is published, when the image is not the one the manifest describes.
    func writeLayer(from source: RawFile, size: UInt64, to path: String, mtime: UInt64,
                    expected: ManifestValues.ImageDigest) throws -> (digest: [UInt8], size: UInt64) {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o644)
        guard fd >= 0 else { throw GeneralError.io("create", path: path, errno: errno) }
        defer { close(fd) }
        let sink = try HashingSink(fd: fd, path: path)
        try sink.write(TarEntryHeader.entry(name: "disk/", kind: .directory, mode: Self.directoryMode, uid: Self.owner, gid: Self.owner, size: 0, mtime: mtime))
        try sink.write(TarEntryHeader.entry(name: "disk/" + diskName, kind: .file, mode: Self.fileMode, uid: Self.owner, gid: Self.owner, size: size, mtime: mtime))
        _ = posix_fadvise(source.fd, 0, 0, Int32(POSIX_FADV_SEQUENTIAL))
        // The image digest as the manifest records it: SHA-256 over each 64 KiB block's SHA-256 (or, for a
        // manifest of sevimage 0.1, the SHA-256 of the whole file).
        let imageHash = try Crypto.Digest(EVP_sha256())
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.pieceSize, alignment: 4096)
        defer { buffer.deallocate() }
        var leaf = [UInt8](repeating: 0, count: 32)
        var position: UInt64 = 0
        while position < size {
            let count = Int(min(UInt64(Self.pieceSize), size - position))
            let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count])
            try readFully(source, into: piece, at: position)
            switch expected.kind {
            case .blockSHA256:
                for offset in stride(from: 0, to: count, by: ImageDigest.blockSize) {
                    let block = UnsafeRawBufferPointer(rebasing: piece[offset..<min(count, offset + ImageDigest.blockSize)])
                    leaf.withUnsafeMutableBytes { Crypto.sha256(block, into: $0.baseAddress!) }
                    try leaf.withUnsafeBytes { try imageHash.update($0) }
                }
            case .sha256:
                try imageHash.update(UnsafeRawBufferPointer(piece))
            }
            try sink.write(UnsafeRawBufferPointer(piece))
            position += UInt64(count)
        }
        let actual = hex(try imageHash.finish())
        guard actual == expected.hex else {
            throw ExportError.imageMismatch(image: image, name: expected.kind == .blockSHA256 ? "image digest" : "image sha256",
                                            expected: expected.hex, actual: actual)
        }
        try sink.write(TarEntryHeader.padding(for: size) + TarEntryHeader.end)
        guard fsync(fd) == 0 else { throw GeneralError.io("flush", path: path, errno: errno) }
        return (try sink.finish(), sink.written)
    }

    /// `count` bytes at `offset`, or an error when the file ends first (it shrank while it was read).
    private func readFully(_ file: RawFile, into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        var done = 0
        while done < buffer.count {
            let n = pread(file.fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset + UInt64(done)))
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw GeneralError.io("read", path: image, errno: errno) }
            guard n > 0 else {
                throw GeneralError.invalidArgument("\(image) got shorter while it was read (is something writing it?); nothing was exported")
            }
            done += n
        }
    }

    /// Writes a JSON blob under its SHA-256 and returns its descriptor.
    private func writeBlob(_ data: Data, mediaType: String, in blobs: String) throws -> OCI.Descriptor {
        let digest = hex(Crypto.sha256(data))
        try data.withUnsafeBytes { try OutputFiles.writeNew($0, to: blobs + "/" + digest, mode: 0o644) }
        return OCI.Descriptor(mediaType: mediaType, digest: "sha256:" + digest, size: UInt64(data.count))
    }

    /// The output must not exist, or be an empty directory (never a link), in a directory we can write.
    static func checkOutput(_ path: String) throws {
        var info = stat()
        if lstat(path, &info) == 0 {
            let empty = (info.st_mode & S_IFMT) == S_IFDIR && (try? FileManager.default.contentsOfDirectory(atPath: path))?.isEmpty == true
            guard empty else { throw ExportError.outputNotEmpty(path) }
        } else if errno != ENOENT {
            throw GeneralError.io("look at", path: path, errno: errno)
        }
        let directory = PathName.directory(of: path).isEmpty ? "." : PathName.directory(of: path)
        guard stat(directory, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else {
            throw GeneralError.invalidArgument("output directory \(directory) does not exist")
        }
        guard access(directory, W_OK) == 0 else { throw GeneralError.invalidArgument("output directory \(directory) is not writable") }
    }

    /// A file name KubeVirt, tar's 100-byte name field ("disk/" + name) and every shell take as it is.
    static func isValidDiskName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard (1...94).contains(bytes.count), bytes[0] != 0x2E else { return false }
        return bytes.allSatisfy { (48...57).contains($0) || (65...90).contains($0) || (97...122).contains($0) || [0x2E, 0x5F, 0x2B, 0x2D].contains($0) }
    }
}

/// A file written in order and hashed (SHA-256) as it is written: the layer's digest costs no second read.
private final class HashingSink {
    let fd: Int32
    let path: String
    let digest: Crypto.Digest
    private(set) var written: UInt64 = 0

    init(fd: Int32, path: String) throws {
        self.fd = fd
        self.path = path
        digest = try Crypto.Digest(EVP_sha256())
    }

    func write(_ bytes: [UInt8]) throws { try bytes.withUnsafeBytes { try write($0) } }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        try digest.update(bytes)
        var done = 0
        while done < bytes.count {
            let n = Foundation.write(fd, bytes.baseAddress! + done, bytes.count - done)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw GeneralError.io("write", path: path, errno: n < 0 ? errno : ENOSPC) }
            done += n
        }
        written += UInt64(bytes.count)
    }

    func finish() throws -> [UInt8] { try digest.finish() }
}

extension ManifestValues {
    /// The OCI manifest's annotations (and the image config's labels): the manifest's digests, by name.
    ///
    ///     org.opencontainers.image.created, .title, .description   the export's time, the disk's file name
    ///     dev.sevimage.disk.path                                   /disk/NAME.qcow2
    ///     dev.sevimage.image.block-sha256 (or .sha256)             image.blockSHA256 (image.sha256)
    ///     dev.sevimage.manifest.sha256                             SHA-256 of the manifest file
    ///     dev.sevimage.firmware.file, .sha256, .sha384             firmware.file, .sha256, .sha384
    ///     dev.sevimage.launch-digest.sev                           firmware.launchDigests[] (mode sev)
    ///     dev.sevimage.launch-digest.MODE.N-vcpus.TYPE             firmware.launchDigests[] (sev-es, sev-snp)
    func annotations(created: String, diskPath: String) -> [String: String] {
        var out = [
            "org.opencontainers.image.created": created,
            "org.opencontainers.image.title": PathName.name(of: diskPath),
            "org.opencontainers.image.description": "sevimage encrypted disk (QCOW2, LUKS2 root) for a KubeVirt containerDisk",
            "dev.sevimage.disk.path": diskPath,
            "dev.sevimage.manifest.sha256": manifestSHA256,
        ]
        if let imageDigest {
            out[imageDigest.kind == .blockSHA256 ? "dev.sevimage.image.block-sha256" : "dev.sevimage.image.sha256"] = imageDigest.hex
        }
        if let firmware {
            out["dev.sevimage.firmware.file"] = firmware.file
            out["dev.sevimage.firmware.sha256"] = firmware.sha256
            out["dev.sevimage.firmware.sha384"] = firmware.sha384
        }
        for digest in digests {
            let configuration = digest.vcpus.map { ".\($0)-vcpus.\(digest.vcpuType ?? "")" } ?? ""
            out["dev.sevimage.launch-digest.\(digest.mode)\(configuration)"] = digest.digest
        }
        return out
    }
}
