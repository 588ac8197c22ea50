import Foundation

/// The SEV secret table: what the guest owner injects into OVMF's secret area, and what GRUB's
/// efisecret module (and Linux's `efi_secret`) read from it.
///
/// ```
/// offset  size  field                                  (little-endian, GUIDs in EFI byte order)
/// 0       16    header GUID 1e74f542-71dd-4d66-963e-ef4287ff173b
/// 16      4     total length: header + entries, without the padding
/// 20      16    entry GUID (e.g. 736869e5-... the disk passphrase)
/// 36      4     entry length = 20 + data length
/// 40      n     entry data (the passphrase and one NUL for GRUB)
/// ...           more entries, back to back
///               zero padding up to a multiple of 16 bytes (LAUNCH_SECRET works in 16-byte units)
/// ```
///
/// The unpadded total length is what confidential-containers' simple-kbs writes (its test vector:
/// an 11-byte entry gives total 51, entry 31, 13 bytes of padding); Linux's `efi_secret` and GRUB
/// accept it, and also tables whose total includes the padding (older scripts did that).
/// The table is secret: it is built and kept in `SecretBytes`.
public enum SecretTable {
    /// The size of OVMF's secret area in the AmdSev build (0xC00), used when no firmware says otherwise.
    public static let defaultAreaSize = 3072
    public static let headerSize = 20
    public static let entryHeaderSize = 20

    /// One entry to encode: a GUID and its data (secret).
    public struct Entry: Sendable {
        public let guid: GUID
        public let data: SecretBytes
        public init(guid: GUID, data: SecretBytes) { self.guid = guid; self.data = data }

        /// The disk passphrase entry: the passphrase followed by the one NUL byte GRUB requires.
        public static func diskPassphrase(_ passphrase: Passphrase) -> Entry {
            let data = passphrase.secret.withUnsafeBytes { bytes -> SecretBytes in
                var copy = [UInt8](bytes)
                copy.append(0)
                defer { copy.withUnsafeMutableBytes { wipe($0) } }
                return SecretBytes(copy)
            }
            return Entry(guid: KnownGUID.diskPassphraseEntry, data: data)
        }
    }

    /// The unpadded length (header and entries) of a table holding `entries`.
    public static func unpaddedLength(of entries: [Entry]) -> Int {
        entries.reduce(headerSize) { $0 + entryHeaderSize + $1.data.count }
    }

    /// The padded length of a table holding `entries`.
    public static func paddedLength(of entries: [Entry]) -> Int {
        (unpaddedLength(of: entries) + 15) & ~15
    }

    /// Encodes `entries` into a padded table and checks that it fits a secret area of `areaSize` bytes.
    public static func encode(_ entries: [Entry], areaSize: Int = defaultAreaSize) throws -> SecretBytes {
        guard !entries.isEmpty else { throw SecretTableError.noEntries }
        var seen = Set<GUID>()
        for entry in entries {
            guard entry.guid != KnownGUID.secretTableHeader else { throw SecretTableError.headerGUIDAsEntry }
            guard seen.insert(entry.guid).inserted else { throw SecretTableError.duplicateEntry(entry.guid) }
        }
        let unpadded = unpaddedLength(of: entries)
        let padded = paddedLength(of: entries)
        guard padded <= areaSize else {
            throw SecretTableError.tooLarge(padded: padded, areaSize: areaSize)
        }
        var bytes = [UInt8]()
        bytes.reserveCapacity(padded)
        defer { bytes.withUnsafeMutableBytes { wipe($0) } }
        bytes += KnownGUID.secretTableHeader.efiBytes
        appendLE(UInt32(unpadded), to: &bytes)
        for entry in entries {
            bytes += entry.guid.efiBytes
            appendLE(UInt32(entryHeaderSize + entry.data.count), to: &bytes)
            entry.data.withUnsafeBytes { bytes.append(contentsOf: $0) }
        }
        bytes += [UInt8](repeating: 0, count: padded - unpadded)
        return SecretBytes(bytes)
    }

    /// The table `sevimage` injects: the disk passphrase entry first, then `extra` entries.
    public static func build(passphrase: Passphrase, extra: [Entry] = [], areaSize: Int = defaultAreaSize) throws -> SecretBytes {
        for entry in extra where entry.guid == KnownGUID.diskPassphraseEntry {
            throw SecretTableError.duplicateEntry(entry.guid)
        }
        return try encode([Entry.diskPassphrase(passphrase)] + extra, areaSize: areaSize)
    }

    // MARK: Decoding

    /// One entry found by `decode`. `data` stays secret; `knownName` names the GUIDs this project knows.
    public struct DecodedEntry: Sendable {
        public let offset: Int
        public let guid: GUID
        /// The entry's length field (20 + data).
        public let length: Int
        public let data: SecretBytes

        public var knownName: String? { SecretTable.knownName(of: guid) }
    }

    /// What `decode` found in a table.
    public struct Decoded: Sendable {
        /// The header's total length field.
        public let totalLength: Int
        /// The size of the whole input (the table with its padding).
        public let size: Int
        public let entries: [DecodedEntry]
        /// Whether the input's size is a multiple of 16, as LAUNCH_SECRET needs.
        public var isPadded: Bool { size % 16 == 0 }
        /// Whether every byte after the total length is zero.
        public let paddingIsZero: Bool
    }

    public static func knownName(of guid: GUID) -> String? {
        switch guid {
        case KnownGUID.diskPassphraseEntry: "disk-passphrase"
        case KnownGUID.secretTableHeader: "secret-table-header"
        default: nil
        }
    }

    /// Decodes a table, checking every length against the input; never traps on malformed input.
    ///
    /// Accepted: a total length that includes the padding, as long as the bytes left after the last
    /// entry are too few for another entry (this is how GRUB and Linux walk the table).
    public static func decode(_ input: some Collection<UInt8>) throws -> Decoded {
        var bytes = Array(input)
        defer { bytes.withUnsafeMutableBytes { wipe($0) } }
        guard bytes.count >= headerSize else { throw SecretTableError.truncated(bytes.count) }
        guard GUID(efiBytes: bytes[0..<16]) == KnownGUID.secretTableHeader else {
            throw SecretTableError.wrongHeaderGUID(GUID(efiBytes: bytes[0..<16]))
        }
        let total = Int(bytes.le32(at: 16))
        guard total >= headerSize, total <= bytes.count else {
            throw SecretTableError.badTotalLength(total, size: bytes.count)
        }
        var entries: [DecodedEntry] = []
        var offset = headerSize
        while total - offset >= entryHeaderSize {
            let guid = GUID(efiBytes: bytes[offset..<offset + 16])
            // An all-zero GUID after the entries is padding counted in the total length.
            if guid.bytes.allSatisfy({ $0 == 0 }) && bytes[offset..<total].allSatisfy({ $0 == 0 }) { break }
            let length = Int(bytes.le32(at: offset + 16))
            guard length >= entryHeaderSize, length <= total - offset else {
                throw SecretTableError.badEntryLength(length, offset: offset, remaining: total - offset)
            }
            let data = SecretBytes(bytes[(offset + entryHeaderSize)..<(offset + length)])
            entries.append(DecodedEntry(offset: offset, guid: guid, length: length, data: data))
            offset += length
        }
        let paddingIsZero = bytes[offset...].allSatisfy { $0 == 0 }
        return Decoded(totalLength: total, size: bytes.count, entries: entries, paddingIsZero: paddingIsZero)
    }
}

/// Why a secret table cannot be built or read.
public enum SecretTableError: SEVImageError {
    case noEntries
    case headerGUIDAsEntry
    case duplicateEntry(GUID)
    case tooLarge(padded: Int, areaSize: Int)
    case truncated(Int)
    case wrongHeaderGUID(GUID)
    case badTotalLength(Int, size: Int)
    case badEntryLength(Int, offset: Int, remaining: Int)

    public var exitStatus: ExitStatus { .invalidInput }

    public var description: String {
        switch self {
        case .noEntries:
            "a secret table needs at least one entry"
        case .headerGUIDAsEntry:
            "the secret table header GUID \(KnownGUID.secretTableHeader) cannot be an entry's GUID"
        case .duplicateEntry(let guid):
            "secret table entry \(guid) is given twice"
        case .tooLarge(let padded, let areaSize):
            "the secret table needs \(padded) bytes but the firmware's secret area holds \(areaSize); drop entries or shorten them by \(padded - areaSize) bytes"
        case .truncated(let size):
            "not a secret table: \(size) bytes is shorter than the 20-byte header"
        case .wrongHeaderGUID(let guid):
            "not a secret table: header GUID is \(guid), expected \(KnownGUID.secretTableHeader)"
        case .badTotalLength(let total, let size):
            "malformed secret table: total length \(total) does not fit the \(size) bytes given (at least 20)"
        case .badEntryLength(let length, let offset, let remaining):
            "malformed secret table: entry at offset \(offset) has length \(length), but must be 20 to \(remaining)"
        }
    }
}

private func appendLE(_ value: UInt32, to bytes: inout [UInt8]) {
    bytes += [UInt8(value & 0xFF), UInt8(value >> 8 & 0xFF), UInt8(value >> 16 & 0xFF), UInt8(value >> 24)]
}

