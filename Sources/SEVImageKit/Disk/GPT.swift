import CFdisk
import Foundation

/// The disk layout every sevimage image has:
///
///     LBA 0        34       2048 (1 MiB)        2048+esp                      end-2048  end
///     +-----+-------+----------+-----------------+----------------------------+--------+--+
///     | MBR | GPT   |  (gap)   | 1: EFI system   | 2: LUKS2 root              | (gap)  |GPT backup
///     |     | hdr+  |          |    FAT32        |    16 MiB header | ext4     |        |  |
///     +-----+-------+----------+-----------------+----------------------------+--------+--+
///
/// Partitions start and end on 1 MiB boundaries; the last MiB holds the backup GPT.
public struct DiskLayout: Sendable, Equatable {
    public static let sectorSize: UInt64 = 512
    public static let alignment: UInt64 = 1 << 20

    public let diskSize: UInt64
    public let espOffset: UInt64
    public let espSize: UInt64
    public let rootOffset: UInt64
    public let rootSize: UInt64

    /// Checks that the sizes make sense before anything touches the disk.
    public init(diskSize: UInt64, espSize: UInt64) throws {
        let align = DiskLayout.alignment
        guard espSize % align == 0 else {
            throw GeneralError.invalidArgument("the ESP size \(espSize) is not a multiple of 1 MiB")
        }
        let usable = diskSize / align * align
        guard diskSize <= Profile.maximumDiskSize else {
            throw GeneralError.invalidArgument("a disk of \(formatSize(diskSize)) is too large: at most \(formatSize(Profile.maximumDiskSize))")
        }
        let minimumRoot = LUKSLayout.headerSize + (16 << 20)
        let needed = align + espSize + minimumRoot + align
        guard usable >= needed else {
            throw GeneralError.invalidArgument("a disk of \(formatSize(diskSize)) is too small: the ESP (\(formatSize(espSize))), the LUKS header and a root filesystem need at least \(formatSize(needed))")
        }
        guard diskSize % align == 0 else {
            let below = diskSize / align * align
            throw GeneralError.invalidArgument("a disk of \(diskSize) bytes is not a whole number of MiB: give \(formatSize(below)) or \(formatSize(below + align))")
        }
        self.diskSize = usable
        espOffset = align
        self.espSize = espSize
        rootOffset = align + espSize
        rootSize = usable - align - rootOffset
    }

    public var espFirstLBA: UInt64 { espOffset / Self.sectorSize }
    public var espLastLBA: UInt64 { (espOffset + espSize) / Self.sectorSize - 1 }
    public var rootFirstLBA: UInt64 { rootOffset / Self.sectorSize }
    public var rootLastLBA: UInt64 { (rootOffset + rootSize) / Self.sectorSize - 1 }
}

/// One GPT partition to write.
public struct GPTPartition: Sendable {
    public var firstLBA: UInt64
    public var lastLBA: UInt64
    public var type: GUID
    public var guid: GUID
    public var name: String
}

/// Writes a GPT through libfdisk onto a raw disk file (a regular file: no loop device, no root).
///
/// Owns one `struct fdisk_context *`; not `Sendable`.
public final class GPTWriter {
    private let context: OpaquePointer
    private let path: String

    public init(path: String) throws {
        guard let context = fdisk_new_context() else { throw DiskError.library("create a libfdisk context", -ENOMEM) }
        self.context = context
        self.path = path
        _ = fdisk_disable_dialogs(context, 1)
        let status = fdisk_assign_device(context, path, 0)
        guard status == 0 else {
            fdisk_unref_context(context)
            throw DiskError.library("open \(path)", status)
        }
    }

    deinit {
        fdisk_unref_context(context)
    }

    /// Creates a new GPT with `diskGUID` and the given partitions, and writes it (primary and backup).
    public func write(diskGUID: GUID, partitions: [GPTPartition]) throws {
        try check(fdisk_create_disklabel(context, "gpt"), "create a GPT")
        try check(fdisk_set_disklabel_id_from_string(context, diskGUID.description.uppercased()), "set the disk GUID")
        let label = fdisk_get_label(context, "gpt")
        for (index, partition) in partitions.enumerated() {
            guard let entry = fdisk_new_partition() else { throw DiskError.library("allocate a partition", -ENOMEM) }
            defer { fdisk_unref_partition(entry) }
            guard let type = fdisk_label_get_parttype_from_string(label, partition.type.description.uppercased()) else {
                throw DiskError.library("look up partition type \(partition.type)", -EINVAL)
            }
            defer { fdisk_unref_parttype(type) }
            try check(fdisk_partition_set_partno(entry, index), "number partition \(index + 1)")
            try check(fdisk_partition_set_start(entry, partition.firstLBA), "place partition \(index + 1)")
            try check(fdisk_partition_set_size(entry, partition.lastLBA - partition.firstLBA + 1), "size partition \(index + 1)")
            try check(fdisk_partition_set_type(entry, type), "type partition \(index + 1)")
            try check(fdisk_partition_set_name(entry, partition.name), "name partition \(index + 1)")
            try check(fdisk_partition_set_uuid(entry, partition.guid.description.uppercased()), "set partition \(index + 1)'s GUID")
            var number = 0
            try check(fdisk_add_partition(context, entry, &number), "add partition \(index + 1)")
        }
        try check(fdisk_write_disklabel(context), "write the GPT")
        // nosync: libfdisk would otherwise call sync(), flushing every dirty page of the whole system (the
        // scratch root filesystem among them) to write one small scratch file that the QCOW2 copy reads back.
        try check(fdisk_deassign_device(context, 1), "close \(path)")
    }

    private func check(_ status: Int32, _ operation: String) throws {
        guard status >= 0 else { throw DiskError.library("\(operation) on \(path)", status) }
    }
}

public enum DiskError: SEVImageError {
    case library(String, Int32)
    case notAnImage(String, String)

    public var exitStatus: ExitStatus {
        switch self {
        case .library: .failure
        case .notAnImage: .invalidInput
        }
    }

    public var description: String {
        switch self {
        case .library(let operation, let status): "libfdisk could not \(operation): \(errnoDescription(-status))"
        case .notAnImage(let path, let reason): "\(path) is not a usable sevimage image: \(reason)"
        }
    }
}
