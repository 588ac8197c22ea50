import Foundation
import SEVImageKit

/// `Manifest.decode` on arbitrary bytes; what decodes must encode and decode again to the same bytes.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzManifest(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = data.map { Data(bytes: $0, count: size) } ?? Data()
    guard let manifest = try? Manifest.decode(bytes, path: "fuzz.manifest.json") else { return 0 }
    guard let encoded = try? manifest.encoded(),
          let again = try? Manifest.decode(encoded, path: "re-encoded"),
          let reencoded = try? again.encoded(), reencoded == encoded else {
        fatalError("a decoded manifest does not survive encode/decode")
    }
    return 0
}
