import Foundation
import SEVImageKit

/// The QCOW2 reader (header, L1, then L2 lookups and reads) on arbitrary files: each input is written to
/// a file in /dev/shm (or /tmp) and opened; a damaged image must be refused, never trap or read out of bounds.
private let path: String = {
    let directory = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
    return "\(directory)/sevimage-fuzz-qcow2-\(getpid()).img"
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzQCOW2(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    guard fd >= 0 else { fatalError("cannot create \(path)") }
    if let data, size > 0 { _ = write(fd, data, size) }
    close(fd)
    defer { unlink(path) }
    guard let image = try? QCOW2Image(path: path) else { return 0 }
    _ = try? image.allocatedRanges()
    let probes: [UInt64] = [0, 512, image.clusterSize, image.virtualSize / 2, image.virtualSize &- 16]
    for offset in probes where offset < image.virtualSize {
        _ = try? image.read(count: Int(min(64, image.virtualSize - offset)), at: offset)
    }
    return 0
}
