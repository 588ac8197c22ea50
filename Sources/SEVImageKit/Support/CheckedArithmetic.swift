/// Arithmetic on values read from a file (GPT fields, manifest LBAs, header offsets): nil instead of a
/// trap when the result does not fit. Swift's `+`, `-` and `*` trap on overflow; a hostile field near 2^64
/// must give a one-line refusal, not SIGILL.
extension UInt64 {
    func checkedAdding(_ other: UInt64) -> UInt64? {
        let (value, overflow) = addingReportingOverflow(other)
        return overflow ? nil : value
    }

    func checkedSubtracting(_ other: UInt64) -> UInt64? {
        let (value, overflow) = subtractingReportingOverflow(other)
        return overflow ? nil : value
    }

    func checkedMultiplied(by other: UInt64) -> UInt64? {
        let (value, overflow) = multipliedReportingOverflow(by: other)
        return overflow ? nil : value
    }
}

/// Where LBAs `first` through `last` lie in bytes, when the range is well formed (first <= last) and fits in
/// 64 bits; with `within`, only when it also ends inside a disk of that many bytes.
func lbaByteRange(first: UInt64, last: UInt64, sectorSize: UInt64 = 512, within diskSize: UInt64 = .max) -> (offset: UInt64, size: UInt64)? {
    guard first <= last, let offset = first.checkedMultiplied(by: sectorSize),
          let end = last.checkedAdding(1)?.checkedMultiplied(by: sectorSize), end <= diskSize else { return nil }
    return (offset, end - offset)
}
