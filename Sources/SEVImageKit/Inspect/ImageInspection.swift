import Foundation

/// What `sevimage inspect` reports: the container, the GPT, and each partition's filesystem or LUKS
/// header, probed with libblkid and libcryptsetup. Needs no passphrase and never writes to the image.
public struct ImageInspection: Sendable, Codable {
    public var image: String
    public var format: String
    public var fileSize: UInt64
    public var virtualSize: UInt64
    public var clusterSize: UInt64?
    public var partitionTable: GPTTable
    public var partitions: [Partition]

    public struct Partition: Sendable, Codable {
        public var number: Int
        public var name: String
        public var typeGUID: String
        public var typeName: String?
        public var partitionGUID: String
        public var firstLBA: UInt64
        public var lastLBA: UInt64
        public var offset: UInt64
        public var size: UInt64
        public var filesystem: Filesystem?
        public var luks: LUKSHeader?
    }

    /// libblkid's view of a partition's first MiB.
    public struct Filesystem: Sendable, Codable, Equatable {
        public var type: String
        public var uuid: String?
        public var label: String?
        public var version: String?
    }

    /// libcryptsetup's view of a LUKS header.
    public struct LUKSHeader: Sendable, Codable, Equatable {
        public var uuid: String
        public var version: Int
        public var cipher: String
        public var keySizeBits: Int
        public var sectorSize: Int
        /// Bytes from the start of the partition to the encrypted data.
        public var dataOffset: UInt64
        public var keyslots: [KeyslotInfo]
    }
}

/// Reads an image's structure without converting it: the GPT from the guest view, and for each
/// partition a sparse private copy holding only its first MiB (and, for LUKS, its 16 MiB header
/// area) that libblkid and libcryptsetup probe.
public struct ImageInspector {
    public let disk: DiskImageReader
    /// Copies of partition heads: anonymous in-memory files, so that inspecting needs no writable place.
    private let copies = PartitionCopies()

    public init(path: String, requireQCOW2: Bool = false) throws {
        disk = try DiskImageReader(path: path, requireQCOW2: requireQCOW2)
        try disk.checkAllocations()
    }

    public func inspect() throws -> ImageInspection {
        let table = try GPTTable.read(from: disk)
        var partitions: [ImageInspection.Partition] = []
        for entry in table.partitions {
            var partition = ImageInspection.Partition(
                number: entry.number, name: entry.name, typeGUID: entry.typeGUID, typeName: entry.typeName,
                partitionGUID: entry.partitionGUID, firstLBA: entry.firstLBA, lastLBA: entry.lastLBA,
                offset: entry.offset, size: entry.size)
            if lbaByteRange(first: entry.firstLBA, last: entry.lastLBA, within: disk.virtualSize) != nil {
                let head = try partitionCopy(entry, bytes: 1 << 20)
                partition.filesystem = try probe(head)
                if partition.filesystem?.type == "crypto_LUKS" {
                    partition.luks = try luksHeader(try partitionCopy(entry, bytes: LUKSLayout.headerSize))
                }
            }
            partitions.append(partition)
        }
        return ImageInspection(image: disk.path, format: disk.format.rawValue, fileSize: disk.fileSize,
                               virtualSize: disk.virtualSize, clusterSize: disk.clusterSize,
                               partitionTable: table, partitions: partitions)
    }

    /// A sparse file as large as the partition holding its first `bytes` bytes (libcryptsetup and
    /// libblkid see the partition's real size; the rest reads as zeros).
    public func partitionCopy(_ entry: GPTEntry, bytes: UInt64) throws -> String {
        try copies.file(named: "partition\(entry.number)-\(bytes)", size: entry.size, of: disk.path) { copy in
            try disk.copy(entry.offset..<(entry.offset + min(bytes, entry.size)), to: copy, at: 0)
        }
    }

    func probe(_ path: String) throws -> ImageInspection.Filesystem? {
        guard let values = try BlkidProbe(path: path).superblock(), let type = values["TYPE"] else { return nil }
        return .init(type: type, uuid: values["UUID"], label: values["LABEL"], version: values["VERSION"])
    }

    func luksHeader(_ path: String) throws -> ImageInspection.LUKSHeader? {
        let device = try CryptDevice(path: path)
        do { try device.load() } catch LUKSError.notLUKS { return nil }
        return .init(uuid: device.uuid, version: 2, cipher: device.cipher, keySizeBits: device.volumeKeySize * 8,
                     sectorSize: device.sectorSize, dataOffset: device.dataOffset, keyslots: device.keyslots)
    }
}

/// The partition copies of one `ImageInspector`: anonymous memfds that libblkid and libcryptsetup open as
/// `/proc/self/fd/N` (sparse: only the copied head takes memory), closed with the inspector. `inspect` and `verify`
/// thus write nothing anywhere, not even under `$TMPDIR`: they work with a read-only root filesystem and no
/// `$TMPDIR` (a pipeline stage's pod). Where memfd_create is missing, a private directory under `$TMPDIR` instead.
/// Not `Sendable`: it owns file descriptors.
final class PartitionCopies {
    private var paths: [String: String] = [:]
    private var descriptors: [Int32] = []
    private var directory: TemporaryDirectory?

    /// The copy called `name`, created (`size` bytes, filled by `fill`) on first use.
    func file(named name: String, size: UInt64, of image: String, fill: (RawFile) throws -> Void) throws -> String {
        if let path = paths[name] { return path }
        let path: String
        let copy: RawFile
        if let create = GNUCalls.memfdCreate {
            let fd = create("sevimage-" + name, GNUCalls.memfdCloexec)
            guard fd >= 0 else { throw GeneralError.io("create an in-memory copy of a partition of", path: image, errno: errno) }
            descriptors.append(fd)
            path = "/proc/self/fd/\(fd)"
            guard ftruncate(fd, off_t(clamping: size)) == 0 else {
                throw GeneralError.io("size an in-memory copy of a partition of", path: image, errno: errno)
            }
            copy = try RawFile(path: path, writable: true)
        } else {
            if directory == nil { directory = try TemporaryDirectory(near: NSTemporaryDirectory() + "/x", purpose: "sevimage-inspect") }
            path = directory!.file(name)
            copy = try RawFile(creating: path, size: size)
        }
        try fill(copy)
        paths[name] = path
        return path
    }

    deinit {
        for fd in descriptors { close(fd) }
    }
}

extension ImageInspection {
    /// The human report (stderr).
    public var text: String {
        var lines = ["image:       \(image)"]
        var container = "\(format), \(readableSize(virtualSize)) virtual (\(virtualSize) bytes), \(readableSize(fileSize)) on disk"
        if let clusterSize { container += ", \(clusterSize / 1024) KiB clusters" }
        lines.append("container:   \(container)")
        let copies = partitionTable.primaryValid && partitionTable.backupValid ? "primary and backup valid"
            : partitionTable.primaryValid ? "only the primary is valid" : "only the backup is valid"
        lines.append("partitions:  GPT, disk GUID \(partitionTable.diskGUID) (\(copies)), usable LBAs \(partitionTable.firstUsableLBA)-\(partitionTable.lastUsableLBA)")
        for problem in partitionTable.problems { lines.append("  warning: \(problem)") }
        for p in partitions {
            lines.append("")
            lines.append("partition \(p.number) \"\(p.name)\": \(readableSize(p.size)), LBAs \(p.firstLBA)-\(p.lastLBA) (offset \(p.offset))")
            lines.append("  type:        \(p.typeGUID)" + (p.typeName.map { " (\($0))" } ?? ""))
            lines.append("  guid:        \(p.partitionGUID)")
            if let fs = p.filesystem {
                var description = fs.type
                if let version = fs.version { description += " version \(version)" }
                if let uuid = fs.uuid { description += ", uuid \(uuid)" }
                if let label = fs.label { description += ", label \"\(label)\"" }
                lines.append("  content:     \(description)")
            } else {
                lines.append("  content:     nothing libblkid recognizes")
            }
            if let luks = p.luks {
                lines.append("  luks:        LUKS\(luks.version) \(luks.cipher), \(luks.keySizeBits)-bit key, \(luks.sectorSize)-byte sectors, data at \(luks.dataOffset) bytes")
                for slot in luks.keyslots {
                    let kdf = slot.hash.isEmpty ? slot.pbkdf : "\(slot.pbkdf)-\(slot.hash)"
                    lines.append("  keyslot \(slot.slot):   \(kdf), \(slot.iterations) iterations, priority \(slot.priority)")
                }
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }
}
