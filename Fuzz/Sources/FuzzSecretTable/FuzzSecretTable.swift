import SEVImageKit

/// The SEV secret table decoder on arbitrary bytes.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSecretTable(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    if let decoded = try? SecretTable.decode(bytes) {
        _ = String(describing: decoded)
    }
    return 0
}
