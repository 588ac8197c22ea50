import SEVImageKit

/// The OVMF GUIDed table parser on arbitrary firmware tails: it must throw or parse, never trap.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOVMFTable(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    if let table = try? OVMFTable.parse(bytes, path: "fuzz.fd") {
        _ = String(describing: table)
    }
    return 0
}
