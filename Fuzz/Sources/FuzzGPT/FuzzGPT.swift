import Foundation
import SEVImageKit

/// The GPT reader (`GPTTable.read`, what inspect and verify use) on arbitrary sectors: the input is the disk
/// from LBA 1 on (header, then the entry array), in a 64 KiB raw disk whose last LBA holds the input's first
/// sector again (the backup header). Fields near 2^64 must be refused or reported, never trap.
private let path: String = {
    let directory = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
    return "\(directory)/sevimage-fuzz-gpt-\(getpid()).img"
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzGPT(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let diskSize = 64 << 10
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    guard fd >= 0 else { fatalError("cannot create \(path)") }
    ftruncate(fd, off_t(diskSize))
    if let data, size > 0 {
        _ = pwrite(fd, data, min(size, diskSize - 1024), 512)
        _ = pwrite(fd, data, min(size, 512), off_t(diskSize - 512))
    }
    close(fd)
    defer { unlink(path) }
    guard let disk = try? DiskImageReader(path: path), let table = try? GPTTable.read(from: disk) else { return 0 }
    for entry in table.partitions { _ = (entry.offset, entry.size, entry.typeName) }
    return 0
}
