import Foundation

/// Headers of a POSIX tar archive (ustar, POSIX.1-1988, with the pax extended header of POSIX.1-2001 for
/// sizes that do not fit its octal field), encoded field by field. One header is one 512-byte block:
///
///     offset size  field                offset size  field
///          0  100  name                    257    6  magic "ustar\0"
///        100    8  mode      (octal)       263    2  version "00"
///        108    8  uid       (octal)       265   32  uname
///        116    8  gid       (octal)       297   32  gname
///        124   12  size      (octal)       329    8  devmajor
///        136   12  mtime     (octal)       337    8  devminor
///        148    8  checksum  (octal)       345  155  prefix
///        156    1  typeflag                500   12  (zero)
///        157  100  linkname
///
/// The checksum is the sum of the header's bytes with its own field read as eight spaces. A file's data
/// follows its header, zero-padded to a whole block; two zero blocks end the archive.
/// Written by `export containerdisk` and for the memdisk of `firmware grub` (`FirmwareGrub.ustar`); the reader of
/// root-tree tarballs is `TarHeader`, in Filesystems/RootTree+Tar.swift.
enum TarEntryHeader {
    static let blockSize = 512
    /// The largest value the 11 octal digits of the size and mtime fields hold: 8 GiB − 1, and 2^33 − 1 seconds.
    static let largestOctal: UInt64 = (1 << 33) - 1

    enum Kind: UInt8 {
        case file = 0x30       // '0'
        case directory = 0x35  // '5'
        case pax = 0x78        // 'x': extended header records for the next entry
    }

    /// The header blocks of one entry: a pax header first when the size needs more than 11 octal digits.
    /// `name` must be at most 100 bytes (directories end with '/'); ids and mode fit their fields.
    static func entry(name: String, kind: Kind, mode: UInt32, uid: UInt32, gid: UInt32, size: UInt64, mtime: UInt64) -> [UInt8] {
        precondition(name.utf8.count <= 100 && mtime <= largestOctal && mode <= 0o7777 && uid <= 0o7777777 && gid <= 0o7777777)
        guard size > largestOctal else {
            return block(name: name, kind: kind, mode: mode, uid: uid, gid: gid, size: size, mtime: mtime)
        }
        let records = paxRecord(key: "size", value: String(size))
        // The name Python's tarfile gives its pax headers; readers consume the entry and never extract it.
        var out = block(name: "././@PaxHeader", kind: .pax, mode: 0o644, uid: uid, gid: gid, size: UInt64(records.count), mtime: mtime)
        out += records + padding(for: UInt64(records.count))
        // Readers that do not know pax see size 0 here rather than a wrong number.
        out += block(name: name, kind: kind, mode: mode, uid: uid, gid: gid, size: 0, mtime: mtime)
        return out
    }

    /// Zeros that complete `size` bytes of data to a whole block.
    static func padding(for size: UInt64) -> [UInt8] {
        let rest = Int(size % UInt64(blockSize))
        return rest == 0 ? [] : [UInt8](repeating: 0, count: blockSize - rest)
    }

    /// The end of an archive: two zero blocks.
    static let end = [UInt8](repeating: 0, count: 2 * blockSize)

    /// One pax record, "LENGTH key=value\n", where LENGTH counts the whole record, its own digits included.
    static func paxRecord(key: String, value: String) -> [UInt8] {
        let body = " \(key)=\(value)\n".utf8.count
        var length = body + 1
        while String(length).utf8.count + body != length { length = String(length).utf8.count + body }
        return Array("\(length) \(key)=\(value)\n".utf8)
    }

    private static func block(name: String, kind: Kind, mode: UInt32, uid: UInt32, gid: UInt32, size: UInt64, mtime: UInt64) -> [UInt8] {
        var header = [UInt8](repeating: 0, count: blockSize)
        func put(_ bytes: some Sequence<UInt8>, at offset: Int) {
            for (index, byte) in bytes.enumerated() { header[offset + index] = byte }
        }
        // Octal digits, zero-padded to fill the field but its last byte, which stays NUL.
        func octal(_ value: UInt64, at offset: Int, width: Int) {
            let digits = String(value, radix: 8)
            put(Array(String(repeating: "0", count: width - 1 - digits.count).utf8) + Array(digits.utf8), at: offset)
        }
        put(name.utf8, at: 0)
        octal(UInt64(mode), at: 100, width: 8)
        octal(UInt64(uid), at: 108, width: 8)
        octal(UInt64(gid), at: 116, width: 8)
        octal(size, at: 124, width: 12)
        octal(mtime, at: 136, width: 12)
        header[156] = kind.rawValue
        put("ustar\0".utf8, at: 257)
        put("00".utf8, at: 263)
        put([UInt8](repeating: 0x20, count: 8), at: 148)
        let checksum = header.reduce(0) { $0 + UInt64($1) }
        octal(checksum, at: 148, width: 7)  // six digits, NUL, and the space that stays from the blank
        return header
    }
}
