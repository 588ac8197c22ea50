import Foundation

/// The LUKS2 header area of an image's root partition, seen through the QCOW2 guest view.
///
///     guest disk:  | GPT | ESP | root partition                                  | backup GPT |
///                              | LUKS2 header area (16 MiB)  | encrypted ext4 ...|
///                              | hdr 1 | hdr 2 | keyslots    |
///                                 ^ every cluster allocated by create, so rewritten in place
///
/// The partition comes from the GPT read out of the image (the image is the truth); when a manifest
/// sits beside the image, its root partition and LUKS UUID must agree. Key operations run libcryptsetup
/// on a private copy of the header area, then write the bytes that changed back in place.
final class ImageHeaderArea {
    let image: String
    let qcow: QCOW2Image
    let rootOffset: UInt64
    let rootSize: UInt64
    let manifest: Manifest?
    let manifestPath: String

    /// Whether the image was opened to be written; a read-only area's workspace lives in memory.
    let writable: Bool

    init(image: String, writable: Bool) throws {
        self.image = image
        self.writable = writable
        qcow = try QCOW2Image(path: image, writable: writable)
        let root = try Self.findRoot(qcow, image: image)
        (rootOffset, rootSize) = root
        manifestPath = Manifest.defaultPath(forImage: image)
        if FileManager.default.fileExists(atPath: manifestPath) {
            let manifest = try Manifest.decode(Data(contentsOf: URL(fileURLWithPath: manifestPath)), path: manifestPath)
            if let claimed = manifest.partitions.first(where: { $0.role == "root" }),
               lbaByteRange(first: claimed.firstLBA, last: claimed.lastLBA).map({ $0 != root }) ?? true {
                throw KeysError.manifestMismatch(manifestPath, "its root partition (LBA \(claimed.firstLBA)-\(claimed.lastLBA)) is not the image's (LBA \(root.0 / 512)-\((root.0 + root.1) / 512 - 1))")
            }
            self.manifest = manifest
        } else {
            manifest = nil
        }
        guard rootSize > LUKSLayout.headerSize else {
            throw KeysError.noRootPartition(image, "the root partition is smaller than a LUKS2 header area")
        }
        // Every header change is written in place: refuse now, not after a journal promised the change.
        if writable { try qcow.checkWritable(count: Int(LUKSLayout.headerSize), at: rootOffset) }
    }

    /// The root partition from the primary GPT: the x86-64 root type, or else the one partition that starts with a LUKS header.
    static func findRoot(_ qcow: QCOW2Image, image: String) throws -> (UInt64, UInt64) {
        guard qcow.virtualSize >= 34 * 512 else { throw DiskError.notAnImage(image, "the virtual disk is too small for a GPT") }
        let header = try qcow.read(count: 92, at: 512)
        guard header[0..<8].elementsEqual(Array("EFI PART".utf8)) else { throw KeysError.noRootPartition(image, "there is no GPT") }
        let entriesLBA = keysLE64(header, 72), count = Int(keysLE32(header, 80)), entrySize = Int(keysLE32(header, 84))
        guard (1...1024).contains(count), entrySize >= 128, entrySize <= 1024, entrySize % 8 == 0, entriesLBA >= 2,
              let arrayEnd = entriesLBA.checkedMultiplied(by: 512)?.checkedAdding(UInt64(count * entrySize)), arrayEnd <= qcow.virtualSize else {
            throw KeysError.noRootPartition(image, "its GPT header is damaged")
        }
        let table = try qcow.read(count: count * entrySize, at: entriesLBA * 512)
        var partitions: [(type: GUID, offset: UInt64, size: UInt64)] = []
        for index in 0..<count {
            let base = index * entrySize
            let type = GUID(efiBytes: Array(table[base..<base + 16]))
            guard type.bytes.contains(where: { $0 != 0 }) else { continue }
            let first = keysLE64(table, base + 32), last = keysLE64(table, base + 40)
            guard let bytes = lbaByteRange(first: first, last: last, within: qcow.virtualSize) else {
                throw KeysError.noRootPartition(image, "GPT entry \(index + 1) lies outside the disk")
            }
            partitions.append((type, bytes.offset, bytes.size))
        }
        if let root = partitions.first(where: { $0.type == KnownGUID.rootX86_64Type }) {
            return (root.offset, root.size)
        }
        for partition in partitions where try qcow.read(count: 6, at: partition.offset) == luksMagic {
            return (partition.offset, partition.size)
        }
        throw KeysError.noRootPartition(image, "no partition has the x86-64 root type or a LUKS header")
    }

    /// The header area's bytes as the guest sees them.
    func readHeader() throws -> [UInt8] {
        try qcow.read(count: Int(LUKSLayout.headerSize), at: rootOffset)
    }

    /// A private copy of the header area that libcryptsetup can work on.
    func workspace() throws -> HeaderWorkspace {
        let bytes = try readHeader()
        guard Array(bytes[0..<6]) == luksMagic else { throw LUKSError.notLUKS(image, nil) }
        return try HeaderWorkspace(image: image, bytes: bytes, partitionSize: rootSize, inMemory: !writable)
    }

    /// The manifest's role for each keyslot (nil without a manifest).
    func role(ofSlot slot: Int) -> String? {
        manifest?.luks.keyslots.first { $0.slot == slot }?.role
    }
}

let luksMagic: [UInt8] = [0x4C, 0x55, 0x4B, 0x53, 0xBA, 0xBE]

private func keysLE32(_ b: [UInt8], _ o: Int) -> UInt32 {
    UInt32(b[o]) | UInt32(b[o + 1]) << 8 | UInt32(b[o + 2]) << 16 | UInt32(b[o + 3]) << 24
}
private func keysLE64(_ b: [UInt8], _ o: Int) -> UInt64 { UInt64(keysLE32(b, o)) | UInt64(keysLE32(b, o + 4)) << 32 }
