import Foundation

/// A private copy of an image's LUKS2 header area on which libcryptsetup changes keyslots.
///
/// The copy is a sparse file as large as the root partition (libcryptsetup checks the data segment
/// against the device size) holding only the 16 MiB header area. `change` runs one libcryptsetup
/// operation and returns the bytes that differ, grouped in the order that keeps the image openable
/// at every instant (see `HeaderUpdate`). Owns a temporary directory removed in `deinit`, or, `inMemory`
/// (for commands that only read the image, such as `keys list` on a read-only mount), an anonymous memfd that
/// libcryptsetup opens as `/proc/self/fd/N`: no writable place is needed.
final class HeaderWorkspace {
    let image: String
    let original: [UInt8]
    let device: CryptDevice
    private let directory: TemporaryDirectory?
    /// The memfd the path names while this workspace lives (-1: a file in `directory`).
    private let memoryDescriptor: Int32
    private let path: String

    init(image: String, bytes: [UInt8], partitionSize: UInt64, inMemory: Bool = false) throws {
        self.image = image
        original = bytes
        let file: RawFile
        if inMemory {
            let fd = GNUCalls.memfdCreate?("sevimage-luks-header", GNUCalls.memfdCloexec) ?? -1
            guard fd >= 0 else { throw GeneralError.io("create an in-memory copy of the LUKS header of", path: image, errno: errno) }
            memoryDescriptor = fd
            directory = nil
            path = "/proc/self/fd/\(fd)"
            guard ftruncate(fd, off_t(partitionSize)) == 0 else {
                let code = errno
                close(fd)
                throw GeneralError.io("size an in-memory copy of the LUKS header of", path: image, errno: code)
            }
            do { file = try RawFile(path: path, writable: true) } catch { close(fd); throw error }
        } else {
            let directory = try TemporaryDirectory(near: image, purpose: ImagePaths(image: image).workspacePurpose)
            self.directory = directory
            memoryDescriptor = -1
            path = directory.file("header.luks")
            file = try RawFile(creating: path, size: partitionSize)
        }
        try bytes.withUnsafeBytes { try file.write($0, at: 0) }
        device = try CryptDevice(path: path)
        do {
            try device.load()
        } catch LUKSError.notLUKS(_, let message) {
            throw LUKSError.notLUKS(image, message)
        }
    }

    deinit {
        if memoryDescriptor >= 0 { close(memoryDescriptor) }
    }

    /// The volume key and the keyslot `passphrase` opens; a wrong passphrase names the image, not the copy.
    func unlock(_ passphrase: Passphrase) throws -> (key: SecretBytes, keyslot: Int) {
        do {
            return try device.volumeKey(passphrase: passphrase.secret)
        } catch let error as LUKSError {
            throw error.naming(image)
        }
    }

    /// The keyslot `passphrase` opens, or nil.
    func keyslot(opening passphrase: Passphrase) throws -> Int? {
        do {
            return try device.volumeKey(passphrase: passphrase.secret).keyslot
        } catch LUKSError.wrongPassphrase {
            return nil
        } catch let error as LUKSError {
            throw error.naming(image)
        }
    }

    /// Runs one keyslot operation on the copy and returns what must be written to the image.
    /// Keyslot areas the operation frees are refilled with random bytes, as `create` leaves them.
    func change(_ body: (CryptDevice) throws -> Void) throws -> HeaderUpdate {
        let usedBefore = try usedKeyslotRanges()
        do {
            try body(device)
        } catch LUKSError.library(_, let status, let message) where status == -ETXTBSY {
            let reason = (message ?? "Unmet LUKS2 requirements").trimmingCharacters(in: CharacterSet(charactersIn: ". \n"))
            throw KeysError.unchangeableHeader(image, reason.prefix(1).lowercased() + reason.dropFirst())
        }
        let usedAfter = try usedKeyslotRanges()
        var bytes = [UInt8](repeating: 0, count: original.count)
        let file = try RawFile(path: path, writable: false)
        try bytes.withUnsafeMutableBytes { try file.read(into: $0, at: 0) }
        for freed in subtract(usedBefore, usedAfter) where freed.upperBound <= UInt64(bytes.count) {
            let noise = try randomBytes(freed.count)
            bytes.replaceSubrange(Int(freed.lowerBound)..<Int(freed.upperBound), with: noise)
        }
        return try HeaderUpdate(old: original, new: bytes, newKeyslotAreas: usedAfter, image: image)
    }

    /// The parts of the keyslot area that active keyslots use.
    private func usedKeyslotRanges() throws -> [Range<UInt64>] {
        let area = try metadataSize(original) * 2..<LUKSLayout.headerSize
        return subtract([area], try device.unusedKeyslotRanges())
    }
}

/// The LUKS2 binary header's `hdr_size` (one metadata copy: binary header and JSON area).
func metadataSize(_ header: [UInt8]) throws -> UInt64 {
    var size: UInt64 = 0
    for i in 8..<16 { size = size << 8 | UInt64(header[i]) }
    guard [16, 32, 64, 128, 256, 512, 1024, 2048, 4096].map({ UInt64($0) << 10 }).contains(size) else {
        throw LUKSError.notLUKS("the LUKS2 header", "hdr_size \(size)")
    }
    return size
}

/// `ranges` minus `removed`, both sets of half-open ranges.
func subtract(_ ranges: [Range<UInt64>], _ removed: [Range<UInt64>]) -> [Range<UInt64>] {
    var result = mergeRanges(ranges)
    for cut in removed {
        result = result.flatMap { range -> [Range<UInt64>] in
            guard range.overlaps(cut) else { return [range] }
            return [range.lowerBound..<max(range.lowerBound, cut.lowerBound), min(range.upperBound, cut.upperBound)..<range.upperBound]
                .filter { !$0.isEmpty }
        }
    }
    return result
}

/// `a` ∩ `b`.
func intersect(_ a: [Range<UInt64>], _ b: [Range<UInt64>]) -> [Range<UInt64>] {
    var result: [Range<UInt64>] = []
    for x in mergeRanges(a) {
        for y in mergeRanges(b) where x.overlaps(y) {
            result.append(max(x.lowerBound, y.lowerBound)..<min(x.upperBound, y.upperBound))
        }
    }
    return mergeRanges(result)
}

/// The header bytes one operation changes, in write groups; each group is written and fsync'ed before the next.
///
/// The order keeps the volume openable whatever instant the process dies at, because LUKS2 keeps two
/// copies of its metadata, each with a checksum and a sequence number, and readers take the valid copy
/// with the highest sequence number:
///
///     1. keyslot areas the new header uses   (unreferenced by the old header: harmless)
///     2. metadata copy 1 (binary header + JSON)   torn -> checksum fails -> copy 2 (old) is used
///     3. metadata copy 2                          copy 1 (new) already wins on sequence number
///     4. everything else: freed keyslot areas     (unreferenced by the new header)
///
/// Adding a keyslot so never exposes a header pointing at half-written key material, and destroying one
/// wipes its material only once no metadata copy refers to it.
struct HeaderUpdate {
    struct Patch: Equatable {
        var offset: UInt64
        var bytes: [UInt8]
    }

    var groups: [[Patch]]

    init(groups: [[Patch]]) { self.groups = groups }

    init(old: [UInt8], new: [UInt8], newKeyslotAreas: [Range<UInt64>], image: String) throws {
        let meta = try metadataSize(new)
        guard try metadataSize(old) == meta else {
            throw LUKSError.library("keep the LUKS2 metadata size of \(image)", -EINVAL, nil)
        }
        let block = 4096
        var changed: [Range<UInt64>] = []
        var offset = 0
        guard old.count == new.count else { throw LUKSError.library("keep the header area size of \(image)", -EINVAL, nil) }
        old.withUnsafeBytes { a in
            new.withUnsafeBytes { b in
                while offset < new.count {
                    let end = min(new.count, offset + block)
                    if memcmp(a.baseAddress! + offset, b.baseAddress! + offset, end - offset) != 0 {
                        changed.append(UInt64(offset)..<UInt64(end))
                    }
                    offset = end
                }
            }
        }
        changed = mergeRanges(changed)
        let copy1: [Range<UInt64>] = [0..<meta], copy2: [Range<UInt64>] = [meta..<2 * meta]
        let first = subtract(intersect(changed, newKeyslotAreas), copy1 + copy2)
        let rest = subtract(changed, first + copy1 + copy2)
        func patches(_ ranges: [Range<UInt64>]) -> [Patch] {
            ranges.map { Patch(offset: $0.lowerBound, bytes: Array(new[Int($0.lowerBound)..<Int($0.upperBound)])) }
        }
        groups = [patches(first), patches(intersect(changed, copy1)), patches(intersect(changed, copy2)), patches(rest)]
            .filter { !$0.isEmpty }
    }

    var isEmpty: Bool { groups.isEmpty }
}
