/// Why a size string such as `8G` was refused.
public enum SizeError: SEVImageError, Equatable {
    case malformed(String)
    case unknownSuffix(String, suffix: String)
    case zero(String)
    case tooLarge(String)

    public var exitStatus: ExitStatus { .invalidInput }

    public var description: String {
        switch self {
        case .malformed(let text):
            return "invalid size '\(text)': expected a whole number of bytes with an optional K, M, G or T suffix (powers of 1024), such as 8G"
        case .unknownSuffix(let text, let suffix):
            return "invalid size '\(text)': unknown suffix '\(suffix)' (use K, M, G or T, powers of 1024)"
        case .zero(let text):
            return "invalid size '\(text)': a size must be greater than zero"
        case .tooLarge(let text):
            return "invalid size '\(text)': too large (the limit is 16 EiB - 1 byte)"
        }
    }
}

/// Parses a size: a whole number of bytes, or a whole number followed by `K`, `M`, `G` or `T`
/// (powers of 1024; `KiB`, `MiB`, `GiB`, `TiB` and lowercase letters are accepted too).
///
/// `parseSize("8G") == 8 << 30`. Fractions (`1.5G`), exponents (`1e20`), signs, unknown suffixes and
/// values that overflow 64 bits are refused; so is zero unless `allowZero`.
public func parseSize(_ text: String, allowZero: Bool = false) throws(SizeError) -> UInt64 {
    let trimmed = text.trimmingWhitespace()
    let bytes = Array(trimmed.utf8)
    var index = 0
    var value: UInt64 = 0
    while index < bytes.count, bytes[index] >= UInt8(ascii: "0"), bytes[index] <= UInt8(ascii: "9") {
        let digit = UInt64(bytes[index] - UInt8(ascii: "0"))
        let (times, overflow1) = value.multipliedReportingOverflow(by: 10)
        let (sum, overflow2) = times.addingReportingOverflow(digit)
        if overflow1 || overflow2 { throw SizeError.tooLarge(text) }
        value = sum
        index += 1
    }
    guard index > 0 else { throw SizeError.malformed(text) }
    let suffix = String(decoding: bytes[index...], as: UTF8.self)
    let shift: UInt64
    switch suffix.lowercased() {
    case "", "b": shift = 0
    case "k", "kib": shift = 10
    case "m", "mib": shift = 20
    case "g", "gib": shift = 30
    case "t", "tib": shift = 40
    default:
        // Anything that is not letters (a dot, an exponent with digits, a sign) is malformed; letters are a bad unit.
        if suffix.allSatisfy({ $0.isLetter }) { throw SizeError.unknownSuffix(text, suffix: suffix) }
        throw SizeError.malformed(text)
    }
    let (result, overflow) = value.multipliedReportingOverflow(by: 1 << shift)
    if overflow { throw SizeError.tooLarge(text) }
    if result == 0 && !allowZero { throw SizeError.zero(text) }
    return result
}

/// The shortest exact way to write a size: `8G`, `64M`, `1536K`, or plain bytes.
public func formatSize(_ bytes: UInt64) -> String {
    guard bytes > 0 else { return "0" }
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] where bytes % (1 << UInt64(shift)) == 0 {
        return "\(bytes >> UInt64(shift))\(unit)"
    }
    return "\(bytes)"
}

fileprivate extension String {
    func trimmingWhitespace() -> String {
        var scalars = Substring(self)
        while let first = scalars.first, first == " " || first == "\t" { scalars = scalars.dropFirst() }
        while let last = scalars.last, last == " " || last == "\t" { scalars = scalars.dropLast() }
        return String(scalars)
    }
}

/// A size for people to read in messages: `8G`, `1.5G`, `300M`, `4K`, `100 bytes`; exact values as `formatSize`
/// writes them, others rounded to one decimal.
public func readableSize(_ bytes: UInt64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] where bytes >= 1 << UInt64(shift) {
        let value = Double(bytes) / Double(UInt64(1) << UInt64(shift))
        return value == value.rounded() ? "\(Int(value))\(unit)" : String(format: "%.1f%@", value, unit)
    }
    return "\(bytes) bytes"
}
