import Foundation

/// The "newc" cpio format (magic `070701`) that the kernel unpacks as an initramfs.
///
///     header  "070701", then 13 fields of 8 hex digits: ino, mode, uid, gid, nlink, mtime, filesize,
///             devmajor, devminor, rdevmajor, rdevminor, namesize (with its NUL), check (0)
///     name    namesize bytes, NUL-terminated, then zeros up to a multiple of 4 (header included)
///     data    filesize bytes, then zeros up to a multiple of 4
///
/// An archive ends with an entry named `TRAILER!!!`. The kernel accepts several archives one after the
/// other (compressed or not, zeros between them), and a file in a later one replaces the earlier one's.
enum Cpio {
    static let magic = Array("070701".utf8)
    static let headerSize = 110
    static let trailer = "TRAILER!!!"

    /// One entry to write: a directory (no data) or a regular file, owned by root.
    struct Entry {
        var path: String
        var mode: UInt32
        var data: [UInt8] = []
    }

    /// An archive of `entries`, every one stamped with `mtime`.
    static func archive(_ entries: [Entry], mtime: Int64) -> [UInt8] {
        var out: [UInt8] = []
        func field(_ value: UInt64) { out += Array(String(format: "%08llx", value).utf8) }
        func pad() { while out.count % 4 != 0 { out.append(0) } }
        for (index, entry) in (entries + [Entry(path: trailer, mode: 0)]).enumerated() {
            let name = Array(entry.path.utf8) + [0]
            out += magic
            let isDirectory = entry.mode & UInt32(S_IFMT) == UInt32(S_IFDIR)
            for value in [UInt64(entry.path == trailer ? 0 : index + 1), UInt64(entry.mode), 0, 0, isDirectory ? 2 : 1,
                          UInt64(max(0, mtime)), UInt64(entry.data.count), 0, 0, 0, 0, UInt64(name.count), 0] {
                field(value)
            }
            out += name
            pad()
            out += entry.data
            pad()
        }
        return out
    }

    /// The names and modes in a stream of newc archives, each followed by zeros (what remains after an
    /// archive that is neither zeros nor `070701` is returned as the offset where it starts).
    struct Listing {
        var entries: [(name: String, mode: UInt32)] = []
        /// Where the part that is not an uncompressed archive begins (nil: the whole input was read).
        var rest: UInt64?
    }

    /// Reads entries from `read` (which returns up to `count` bytes, an empty array at the end) until the
    /// input ends or holds something that is not a newc archive. Data is skipped, never kept. Every field is
    /// checked: a hostile archive can make this stop, not trap or allocate more than one name.
    static func list(maximumEntries: Int = 1_000_000, read: (Int) throws -> [UInt8]) throws -> Listing {
        var listing = Listing()
        var offset: UInt64 = 0
        var buffer: [UInt8] = [], position = 0
        /// Makes at least `count` bytes available unless the input ends first; returns how many are.
        func fill(_ count: Int) throws -> Int {
            while buffer.count - position < count {
                if position > 0 { buffer.removeFirst(position); position = 0 }
                let more = try read(max(65_536, count))
                if more.isEmpty { break }
                buffer += more
            }
            return min(count, buffer.count - position)
        }
        func peek(_ count: Int) throws -> [UInt8] {
            let available = try fill(count)  // may move the buffer's contents: read `position` after it
            return Array(buffer[position..<(position + available)])
        }
        func take(_ count: Int) throws -> [UInt8] {
            let taken = try peek(count)
            position += taken.count
            offset += UInt64(taken.count)
            return taken
        }
        func skip(_ count: UInt64) throws {
            var left = count
            while left > 0 {
                let available = try fill(Int(min(left, 65_536)))
                if available == 0 { return }
                position += available
                offset += UInt64(available)
                left -= UInt64(available)
            }
        }
        while listing.entries.count < maximumEntries {
            // Zeros between archives, four at a time (archives are 4-byte aligned).
            while try peek(4) == [0, 0, 0, 0] { _ = try take(4) }
            let start = offset
            let header = try take(headerSize)
            if header.allSatisfy({ $0 == 0 }) { return listing }  // the end, or a few zeros before it
            guard header.count == headerSize, Array(header.prefix(6)) == magic,
                  let fields = parseFields(header) else {
                listing.rest = start
                return listing
            }
            let (mode, fileSize, nameSize) = (fields[1], fields[6], fields[11])
            guard nameSize > 0, nameSize <= 4096 else { listing.rest = start; return listing }
            let name = try take(Int(nameSize))
            guard name.count == Int(nameSize) else { return listing }
            try skip(UInt64((4 - (headerSize + Int(nameSize)) % 4) % 4))
            let text = String(decoding: name.prefix { $0 != 0 }, as: UTF8.self)
            if text == trailer { continue }
            listing.entries.append((text, UInt32(truncatingIfNeeded: mode)))
            try skip(fileSize + (4 - fileSize % 4) % 4)
        }
        return listing
    }

    /// The regular files of one archive held in memory, with where their data is; nil when `bytes` does not start
    /// with a well-formed archive that ends inside it.
    static func files(in bytes: [UInt8]) -> [String: Range<Int>]? {
        var files: [String: Range<Int>] = [:]
        var offset = 0
        func aligned(_ value: Int) -> Int { (value + 3) & ~3 }
        while offset + headerSize <= bytes.count {
            let header = Array(bytes[offset..<(offset + headerSize)])
            guard Array(header.prefix(6)) == magic, let fields = parseFields(header), fields[11] > 0, fields[11] <= 4096 else { return nil }
            let nameStart = offset + headerSize
            let dataStart = aligned(nameStart + Int(fields[11])), dataEnd = dataStart + Int(fields[6])
            guard dataEnd <= bytes.count else { return nil }
            let name = String(decoding: bytes[nameStart..<(nameStart + Int(fields[11]))].prefix { $0 != 0 }, as: UTF8.self)
            if name == trailer { return files }
            if UInt32(truncatingIfNeeded: fields[1]) & UInt32(S_IFMT) == UInt32(S_IFREG) { files[name] = dataStart..<dataEnd }
            offset = aligned(dataEnd)
        }
        return nil
    }

    /// The 13 hex fields after the magic, or nil when one is not 8 hex digits.
    private static func parseFields(_ header: [UInt8]) -> [UInt64]? {
        var fields: [UInt64] = []
        for index in 0..<13 {
            let start = 6 + index * 8
            guard let value = UInt64(String(decoding: header[start..<(start + 8)], as: UTF8.self), radix: 16) else { return nil }
            fields.append(value)
        }
        return fields
    }
}
