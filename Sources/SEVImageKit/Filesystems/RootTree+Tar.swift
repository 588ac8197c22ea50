import Foundation

/// One 512-byte tar header, decoded field by field.
///
///     offset size  field
///        0   100   name (NUL-terminated unless full)
///      100     8   mode         octal ASCII
///      108     8   uid          octal ASCII, or base-256 when the first byte has its top bit set (GNU)
///      116     8   gid
///      124    12   size
///      136    12   mtime        seconds since the epoch
///      148     8   checksum     sum of all 512 bytes with this field read as 8 spaces
///      156     1   type         '0' file, '1' hard link, '2' symlink, '3' char, '4' block, '5' dir, '6' fifo,
///                               'x' pax header, 'g' pax global header, 'L'/'K' GNU long name/link name
///      157   100   link name
///      257     6   magic        "ustar\0" (POSIX) or "ustar " (GNU, then version " \0")
///      329     8   device major
///      337     8   device minor
///      345   155   name prefix  (POSIX ustar only; GNU keeps other fields here)
struct TarHeader {
    var name: [UInt8]
    var mode: UInt32
    var uid: UInt64
    var gid: UInt64
    var size: UInt64
    var mtime: Int64
    var type: UInt8
    var linkName: [UInt8]
    var deviceMajor: UInt64
    var deviceMinor: UInt64

    /// Whether the stored checksum matches (as unsigned or, as some old writers did, signed bytes).
    static func checksumMatches(_ block: [UInt8]) -> Bool {
        guard block.count == 512, let stored = try? number(block[148..<156]) else { return false }
        var unsigned: Int64 = 0
        var signed: Int64 = 0
        for (index, byte) in block.enumerated() {
            let value = (148..<156).contains(index) ? UInt8(ascii: " ") : byte
            unsigned += Int64(value)
            signed += Int64(Int8(bitPattern: value))
        }
        return Int64(stored) == unsigned || Int64(stored) == signed
    }

    /// Decodes the fields; throws a reason for a malformed number.
    init(block: [UInt8]) throws(TarFormatError) {
        func string(_ range: Range<Int>) -> [UInt8] { Array(block[range].prefix { $0 != 0 }) }
        let isPOSIX = block[257..<263].elementsEqual(Array("ustar\0".utf8))
        name = string(0..<100)
        if isPOSIX {
            let prefix = string(345..<500)
            if !prefix.isEmpty { name = prefix + [0x2f] + name }
        }
        mode = UInt32(truncatingIfNeeded: try TarHeader.number(block[100..<108], field: "mode") & 0o7777)
        uid = try TarHeader.number(block[108..<116], field: "uid")
        gid = try TarHeader.number(block[116..<124], field: "gid")
        size = try TarHeader.number(block[124..<136], field: "size")
        let time = try TarHeader.number(block[136..<148], field: "mtime")
        mtime = time > UInt64(Int64.max) ? Int64.max : Int64(time)
        type = block[156]
        linkName = string(157..<257)
        deviceMajor = try TarHeader.number(block[329..<337], field: "device major")
        deviceMinor = try TarHeader.number(block[337..<345], field: "device minor")
    }

    /// An octal field (spaces or NULs around it), or a GNU base-256 field.
    static func number(_ field: ArraySlice<UInt8>, field name: String = "number") throws(TarFormatError) -> UInt64 {
        guard let first = field.first else { return 0 }
        if first & 0x80 != 0 {
            guard first == 0x80 else { throw TarFormatError("negative or oversized \(name) field") }
            var value: UInt64 = 0
            for byte in field.dropFirst() {
                guard value >> 56 == 0 else { throw TarFormatError("\(name) field is too large") }
                value = value << 8 | UInt64(byte)
            }
            return value
        }
        var value: UInt64 = 0
        var started = false
        var ended = false
        for byte in field {
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "7"):
                guard !ended else { throw TarFormatError("malformed \(name) field") }
                guard value >> 61 == 0 else { throw TarFormatError("\(name) field is too large") }
                value = value << 3 | UInt64(byte - UInt8(ascii: "0"))
                started = true
            case UInt8(ascii: " "), 0:
                if started { ended = true }
            default:
                throw TarFormatError("malformed \(name) field")
            }
        }
        return value
    }
}

/// A malformed field or record inside the tar stream.
struct TarFormatError: Error {
    var reason: String
    init(_ reason: String) { self.reason = reason }
}

/// Parses pax extended header records: `"%d %s=%s\n"`, the length counting the whole record.
/// An empty value removes the key.
func parsePaxRecords(_ data: [UInt8], into records: inout [String: [UInt8]]) throws(TarFormatError) {
    var index = 0
    while index < data.count {
        if data[index] == 0 { break }
        var length = 0
        var cursor = index
        while cursor < data.count, data[cursor] >= UInt8(ascii: "0"), data[cursor] <= UInt8(ascii: "9") {
            length = length * 10 + Int(data[cursor] - UInt8(ascii: "0"))
            guard length <= data.count else { throw TarFormatError("malformed pax header record") }
            cursor += 1
        }
        guard cursor < data.count, data[cursor] == UInt8(ascii: " "), length > cursor - index + 1,
              index + length <= data.count, data[index + length - 1] == UInt8(ascii: "\n") else {
            throw TarFormatError("malformed pax header record")
        }
        let record = data[(cursor + 1)..<(index + length - 1)]
        guard let equals = record.firstIndex(of: UInt8(ascii: "=")) else { throw TarFormatError("malformed pax header record") }
        let key = String(decoding: record[record.startIndex..<equals], as: UTF8.self)
        let value = Array(record[(equals + 1)...])
        if value.isEmpty { records.removeValue(forKey: key) } else { records[key] = value }
        index += length
    }
}

/// A pax decimal value: `123` or, for times, `123.456` (the fraction is dropped) or `-5`.
func paxInteger(_ value: [UInt8], key: String, allowFraction: Bool = false) throws(TarFormatError) -> Int64 {
    var digits = value[...]
    var negative = false
    if digits.first == UInt8(ascii: "-") {
        negative = true
        digits = digits.dropFirst()
    }
    if allowFraction, let dot = digits.firstIndex(of: UInt8(ascii: ".")) { digits = digits[digits.startIndex..<dot] }
    guard !digits.isEmpty else { throw TarFormatError("malformed pax '\(key)' value") }
    var result: Int64 = 0
    for byte in digits {
        guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { throw TarFormatError("malformed pax '\(key)' value") }
        let (times, overflow1) = result.multipliedReportingOverflow(by: 10)
        let (sum, overflow2) = times.addingReportingOverflow(Int64(byte - UInt8(ascii: "0")))
        guard !overflow1, !overflow2 else { throw TarFormatError("pax '\(key)' value is out of range") }
        result = sum
    }
    return negative ? -result : result
}
