import Foundation
import SEVImageKit

/// The key commands' entry point (`Keyslots.list`: the image's lock, its GPT, the manifest beside it and the
/// LUKS2 header) on an image and a manifest made from the input:
///
///     u16 little-endian n | n bytes: vm.manifest.json | the rest: the disk from LBA 1 on (GPT header, entries)
///
/// The image is a 32 MiB QCOW2 with those sectors; hostile LBAs in either file must give an error, never trap.
private let directory: String = {
    let base = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
    let path = "\(base)/sevimage-fuzz-keys-\(getpid())"
    mkdir(path, 0o700)
    return path
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzKeysImage(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    guard bytes.count >= 2 else { return 0 }
    let manifestLength = min(Int(bytes[0]) | Int(bytes[1]) << 8, bytes.count - 2)
    let manifest = Data(bytes[2..<2 + manifestLength])
    let sectors = Array(bytes[(2 + manifestLength)...].prefix(16 << 10))
    let image = directory + "/vm.qcow2", manifestPath = directory + "/vm.manifest.json"
    defer { unlink(image); unlink(manifestPath) }
    guard FileManager.default.createFile(atPath: manifestPath, contents: manifest),
          let writer = try? QCOW2Writer(creating: image, virtualSize: 32 << 20) else { return 0 }
    do {
        if !sectors.isEmpty { try sectors.withUnsafeBytes { try writer.write($0, at: 512) } }
        try writer.finish()
    } catch {
        return 0
    }
    _ = try? Keyslots.list(image: image)
    return 0
}
