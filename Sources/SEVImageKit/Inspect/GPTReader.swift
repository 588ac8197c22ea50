import Foundation

/// A GPT read back from a disk image, field by field (UEFI 2.10, section 5.3), both copies checked.
///
///     LBA 1 (header, little-endian):
///       0  "EFI PART"        8  revision u32     12 header size u32    16 header CRC32 u32
///       24 my LBA u64        32 alternate LBA     40 first usable LBA   48 last usable LBA
///       56 disk GUID (EFI)   72 entries LBA u64   80 entry count u32    84 entry size u32
///       88 entries CRC32 u32
///     entry (128 bytes): 0 type GUID, 16 partition GUID, 32 first LBA, 40 last LBA,
///       48 attributes u64, 56 name (36 UTF-16LE code units)
public struct GPTTable: Sendable, Codable, Equatable {
    public static let sectorSize: UInt64 = 512

    public var diskGUID: String
    public var firstUsableLBA: UInt64
    public var lastUsableLBA: UInt64
    public var entryCount: UInt32
    /// Header and entry-array CRCs both match, for each copy.
    public var primaryValid: Bool
    public var backupValid: Bool
    /// Where the two copies disagree, or what is wrong with one of them.
    public var problems: [String]
    public var partitions: [GPTEntry]

    /// Reads and checks both GPT copies; the primary is used when valid, else the backup.
    public static func read(from disk: DiskImageReader) throws -> GPTTable {
        guard disk.virtualSize >= 34 * sectorSize else {
            throw DiskError.notAnImage(disk.path, "its virtual disk (\(disk.virtualSize) bytes) is too small for a GPT")
        }
        let lastLBA = disk.virtualSize / sectorSize - 1
        var problems: [String] = []
        let primary = readCopy(disk, lba: 1, problems: &problems, which: "primary")
        let backupLBA = primary?.header.alternateLBA ?? lastLBA
        let backup = backupLBA <= lastLBA ? readCopy(disk, lba: backupLBA, problems: &problems, which: "backup") : nil
        if primary != nil, backupLBA != lastLBA { problems.append("the backup GPT is at LBA \(backupLBA), not the disk's last LBA \(lastLBA)") }
        guard let chosen = primary ?? backup else {
            throw DiskError.notAnImage(disk.path, "it has no valid GPT (" + problems.joined(separator: "; ") + ")")
        }
        if let primary, let backup {
            if primary.header.diskGUID != backup.header.diskGUID { problems.append("the two GPT copies name different disk GUIDs") }
            if primary.entries != backup.entries { problems.append("the two GPT copies list different partitions") }
        }
        return GPTTable(diskGUID: chosen.header.diskGUID.description, firstUsableLBA: chosen.header.firstUsable,
                        lastUsableLBA: chosen.header.lastUsable, entryCount: chosen.header.entryCount,
                        primaryValid: primary != nil, backupValid: backup != nil, problems: problems,
                        partitions: chosen.entries)
    }

    struct Header {
        var alternateLBA: UInt64
        var firstUsable: UInt64
        var lastUsable: UInt64
        var diskGUID: GUID
        var entriesLBA: UInt64
        var entryCount: UInt32
        var entrySize: UInt32
        var entriesCRC: UInt32
    }

    private static func readCopy(_ disk: DiskImageReader, lba: UInt64, problems: inout [String], which: String)
        -> (header: Header, entries: [GPTEntry])? {
        do {
            guard let position = lba.checkedMultiplied(by: sectorSize) else {
                problems.append("the \(which) GPT's LBA \(lba) lies past the end of the disk")
                return nil
            }
            let sector = try disk.read(count: Int(sectorSize), at: position)
            guard Array(sector[0..<8]) == Array("EFI PART".utf8) else {
                problems.append("no \(which) GPT header at LBA \(lba)")
                return nil
            }
            let headerSize = Int(sector.le32(at: 12))
            guard (92...Int(sectorSize)).contains(headerSize) else {
                problems.append("the \(which) GPT header size \(headerSize) is invalid")
                return nil
            }
            var zeroed = Array(sector[0..<headerSize])
            zeroed[16..<20] = [0, 0, 0, 0]
            guard crc32(zeroed) == sector.le32(at: 16) else {
                problems.append("the \(which) GPT header's CRC32 does not match")
                return nil
            }
            let header = Header(alternateLBA: sector.le64(at: 32), firstUsable: sector.le64(at: 40), lastUsable: sector.le64(at: 48),
                                diskGUID: GUID(efiBytes: sector[56..<72]), entriesLBA: sector.le64(at: 72),
                                entryCount: sector.le32(at: 80), entrySize: sector.le32(at: 84), entriesCRC: sector.le32(at: 88))
            guard header.entrySize >= 128, header.entrySize % 8 == 0, header.entrySize <= 4096,
                  header.entryCount <= 1024, sector.le64(at: 24) == lba else {
                problems.append("the \(which) GPT header has impossible values")
                return nil
            }
            let arrayBytes = Int(header.entryCount) * Int(header.entrySize)
            guard let arrayOffset = header.entriesLBA.checkedMultiplied(by: sectorSize),
                  let arrayEnd = arrayOffset.checkedAdding(UInt64(arrayBytes)), arrayEnd <= disk.virtualSize else {
                problems.append("the \(which) GPT's partition array lies past the end of the disk")
                return nil
            }
            let array = try disk.read(count: arrayBytes, at: arrayOffset)
            guard crc32(array) == header.entriesCRC else {
                problems.append("the \(which) GPT's partition array CRC32 does not match")
                return nil
            }
            var entries: [GPTEntry] = []
            for index in 0..<Int(header.entryCount) {
                let base = index * Int(header.entrySize)
                let entry = Array(array[base..<base + 128])
                let type = GUID(efiBytes: entry[0..<16])
                guard type.bytes.contains(where: { $0 != 0 }) else { continue }
                var units: [UInt16] = []
                for i in 0..<36 {
                    let unit = UInt16(entry[56 + 2 * i]) | UInt16(entry[57 + 2 * i]) << 8
                    if unit == 0 { break }
                    units.append(unit)
                }
                entries.append(GPTEntry(number: index + 1, typeGUID: type.description,
                                        partitionGUID: GUID(efiBytes: entry[16..<32]).description,
                                        firstLBA: entry.le64(at: 32), lastLBA: entry.le64(at: 40), attributes: entry.le64(at: 48),
                                        name: String(decoding: units, as: UTF16.self)))
            }
            return (header, entries)
        } catch {
            problems.append("the \(which) GPT cannot be read: \(error)")
            return nil
        }
    }
}

/// One used GPT entry.
public struct GPTEntry: Sendable, Codable, Equatable {
    public var number: Int
    public var typeGUID: String
    public var partitionGUID: String
    public var firstLBA: UInt64
    public var lastLBA: UInt64
    public var attributes: UInt64
    public var name: String

    /// The entry's bytes: its LBAs are the file's, so a range that is reversed or beyond 2^64 bytes has
    /// offset `UInt64.max` and size 0 (and no disk holds it).
    public var offset: UInt64 { lbaByteRange(first: firstLBA, last: lastLBA)?.offset ?? .max }
    public var size: UInt64 { lbaByteRange(first: firstLBA, last: lastLBA)?.size ?? 0 }

    /// A person's name for the type GUID (UEFI and the Discoverable Partitions Specification).
    public var typeName: String? { PartitionTypes.names[typeGUID] }
}

/// Well-known partition type GUIDs.
public enum PartitionTypes {
    public static let names: [String: String] = [
        "c12a7328-f81f-11d2-ba4b-00a0c93ec93b": "EFI system partition",
        "4f68bce3-e8cd-4db1-96e7-fbcaf984b709": "Linux root (x86-64)",
        "44479540-f297-41b2-9af7-d131d5f0458a": "Linux root (x86)",
        "b921b045-1df0-41c3-af44-4c6f280d3fae": "Linux root (ARM64)",
        "8484680c-9521-48c6-9c11-b0720656f69e": "Linux /usr (x86-64)",
        "0fc63daf-8483-4772-8e79-3d69d8477de4": "Linux filesystem",
        "ca7d7ccb-63ed-4c53-861c-1742536059cc": "Linux LUKS",
        "933ac7e1-2eb4-4f13-b844-0e14e2aef915": "Linux /home",
        "4d21b016-b534-45c2-a9fb-5c16e091fd2d": "Linux /var",
        "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f": "Linux swap",
        "e6d6d379-f507-44c2-a23c-238f2a3df928": "Linux LVM",
        "a19d880f-05fc-4d3b-a006-743f0f84911e": "Linux RAID",
        "bc13c2ff-59e6-4262-a352-b275fd6f7172": "Linux extended boot (XBOOTLDR)",
        "21686148-6449-6e6f-744e-656564454649": "BIOS boot",
        "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7": "Microsoft basic data",
    ]
}


/// CRC-32 (IEEE 802.3, reflected, as the GPT uses it).
func crc32(_ bytes: [UInt8]) -> UInt32 {
    var crc: UInt32 = 0xFFFF_FFFF
    for byte in bytes {
        crc = crc32Table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8)
    }
    return ~crc
}

private let crc32Table: [UInt32] = (0..<256).map { index -> UInt32 in
    var c = UInt32(index)
    for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
    return c
}
