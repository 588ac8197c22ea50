import SEVImageKit

/// The TOML reader (TOMLKit's toml++, whose asserts are live in this build, and the key locator before it)
/// and the profile resolver (keys, types, ranges) on arbitrary bytes.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzProfile(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    _ = try? TOMLReader.parse(bytes)
    // `extends` may name built-in profiles; files are looked up only through paths, which this text
    // rarely spells, and never through a profile directory (empty environment).
    if let text = String(validating: bytes, as: UTF8.self), !text.contains("/") {
        if let resolved = try? Profile.resolve(text: text, displayName: "fuzz.toml", environment: [:]) {
            _ = String(describing: resolved.profile)
        }
    }
    return 0
}
