import Foundation

/// Linux calls and flags that Swift's Glibc module leaves out (glibc declares them under _GNU_SOURCE),
/// looked up at run time; nil where the C library lacks them (callers then do without).
enum GNUCalls {
    /// `sync_file_range(fd, offset, count, flags)`.
    static let syncFileRange: (@convention(c) (Int32, Int64, Int64, UInt32) -> Int32)? = lookUp("sync_file_range")
    static let syncFileRangeWrite: UInt32 = 2

    /// `fallocate(fd, mode, offset, length)`.
    static let fallocate: (@convention(c) (Int32, Int32, off_t, off_t) -> Int32)? = lookUp("fallocate")
    static let punchHoleKeepSize: Int32 = 0x03  // FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE

    /// `memfd_create(name, flags)`: an anonymous in-memory file.
    static let memfdCreate: (@convention(c) (UnsafePointer<CChar>, UInt32) -> Int32)? = lookUp("memfd_create")
    static let memfdCloexec: UInt32 = 1  // MFD_CLOEXEC

    /// `O_DIRECT`, whose value differs by architecture.
    #if arch(arm64)
    static let directIO: Int32 = 0o200000
    #else
    static let directIO: Int32 = 0o40000
    #endif

    private static func lookUp<Function>(_ name: String) -> Function? {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), name) else { return nil }  // RTLD_DEFAULT
        return unsafeBitCast(symbol, to: Function.self)
    }
}
