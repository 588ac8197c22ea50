import Foundation

/// Puts the LUKS2 UUID of a header file in lower case, as the cryptsetup command line writes it.
///
/// Why: libcryptsetup turns the UUID it is given into text with libuuid's `uuid_unparse`, whose case is the
/// system's default: lower on Debian. But Swift's Foundation exports a `uuid_unparse` of its own that spells
/// upper case, and inside sevimage's process it takes the place of libuuid's, so `crypt_format` writes
/// `AC5D283B-…`. blkid reads the header's text as it is, and initramfs-tools (`blkid -t UUID=…`), udev's
/// `/dev/disk/by-uuid` and systemd compare it as an exact string with what grub.cfg and crypttab say:
/// an upper-case header is never found. libcryptsetup only unparses when it formats or sets a UUID; a header
/// it loads keeps its text, so mending it once after `crypt_format` is enough.
///
/// The binary header (LUKS2 on-disk format, section 2): magic `LUKS\xba\xbe`, u16 version 2, u64 hdr_size
/// (binary header plus JSON area), ..., the checksum algorithm at 72 (32 bytes), the UUID text at 168
/// (40 bytes), the checksum at 448 (64 bytes): the digest of all hdr_size bytes with the checksum zeroed.
/// The second copy starts at hdr_size. Every value read is checked before it is used.
enum LUKS2UUIDCase {
    static let uuidOffset = 168, uuidLength = 40
    static let checksumAlgorithmOffset = 72, checksumOffset = 448
    /// hdr_size values LUKS2 allows: 16 KiB to 4 MiB.
    static let headerSizes: ClosedRange<UInt64> = (16 << 10)...(4 << 20)

    /// Lower-cases the UUID of both header copies of `path` (the header at `offset`) and re-checksums them.
    static func lowercase(path: String, at offset: UInt64 = 0) throws {
        let file = try RawFile(path: path, writable: true)
        var first = [UInt8](repeating: 0, count: 512)
        try first.withUnsafeMutableBytes { try file.read(into: $0, at: offset) }
        guard first.starts(with: [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]), first[6] == 0, first[7] == 2 else {
            throw LUKSError.notLUKS(path, nil)
        }
        let size = first[8..<16].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        guard headerSizes.contains(size) else {
            throw LUKSError.library("lower-case the LUKS2 UUID of \(path)", -EINVAL, "header size \(size) is out of range")
        }
        for copy in [offset, offset + size] {
            var header = [UInt8](repeating: 0, count: Int(size))
            try header.withUnsafeMutableBytes { try file.read(into: $0, at: copy) }
            let algorithm = String(decoding: header[checksumAlgorithmOffset..<(checksumAlgorithmOffset + 32)].prefix { $0 != 0 }, as: UTF8.self)
            guard algorithm == "sha256" else {
                throw LUKSError.library("lower-case the LUKS2 UUID of \(path)", -EINVAL, "checksum \(algorithm) is not sha256")
            }
            let uuid = uuidOffset..<(uuidOffset + uuidLength)
            guard header[uuid].contains(where: { (0x41...0x46).contains($0) }) else { continue }
            for index in uuid where (0x41...0x46).contains(header[index]) { header[index] += 0x20 }
            for index in checksumOffset..<(checksumOffset + 64) { header[index] = 0 }
            let digest = Crypto.sha256(header)
            header.replaceSubrange(checksumOffset..<(checksumOffset + digest.count), with: digest)
            try header.withUnsafeBytes { try file.write($0, at: copy) }
        }
        try file.sync()
    }
}
