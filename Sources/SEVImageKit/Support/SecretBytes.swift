import Foundation

/// Bytes that must not leak: a passphrase, a volume key, a transport key.
///
/// The buffer is locked in memory (kept out of swap where `mlock` is allowed), zeroed when the
/// value is released, and never printed: `description` shows only the length. Copies share the
/// one buffer, so there is exactly one place to wipe.
public final class SecretBytes: @unchecked Sendable, CustomStringConvertible, CustomDebugStringConvertible {
    // Immutable after init; the class is Sendable because nothing mutates the buffer but `deinit`.
    private let pointer: UnsafeMutableRawBufferPointer
    private let length: Int
    private let locked: Bool

    public var count: Int { length }

    /// Takes a copy of `bytes`; wipe your own copy if it was secret.
    public init<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        let count = bytes.count
        pointer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(count, 1), alignment: 16)
        locked = mlock(pointer.baseAddress, pointer.count) == 0
        pointer.initializeMemory(as: UInt8.self, repeating: 0)
        UnsafeMutableRawBufferPointer(rebasing: pointer[0..<count]).copyBytes(from: bytes)
        length = count
    }

    /// `count` bytes from the kernel's CSPRNG.
    public init(randomCount count: Int) throws {
        pointer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(count, 1), alignment: 16)
        locked = mlock(pointer.baseAddress, pointer.count) == 0
        length = count
        try fillRandom(UnsafeMutableRawBufferPointer(rebasing: pointer[0..<count]))
    }

    deinit {
        wipe(pointer)
        if locked { munlock(pointer.baseAddress, pointer.count) }
        pointer.deallocate()
    }

    /// Read access to the secret; do not let the buffer escape the closure.
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(rebasing: pointer[0..<length]))
    }

    public var isEmpty: Bool { length == 0 }

    /// The bytes, for comparison in constant time.
    public func constantTimeEquals(_ other: SecretBytes) -> Bool {
        guard length == other.length else { return false }
        return withUnsafeBytes { a in
            other.withUnsafeBytes { b in
                var diff: UInt8 = 0
                for i in 0..<a.count { diff |= a[i] ^ b[i] }
                return diff == 0
            }
        }
    }

    public var description: String { "<secret, \(length) bytes>" }
    public var debugDescription: String { description }
}

/// Overwrites memory in a way the optimizer may not remove.
public func wipe(_ buffer: UnsafeMutableRawBufferPointer) {
    guard let base = buffer.baseAddress, buffer.count > 0 else { return }
    explicit_bzero(base, buffer.count)
}

/// Fills `buffer` from the kernel's CSPRNG (`/dev/urandom`, which never blocks once the pool is seeded).
public func fillRandom(_ buffer: UnsafeMutableRawBufferPointer) throws {
    let fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw GeneralError.io("open", path: "/dev/urandom", errno: errno) }
    defer { close(fd) }
    var offset = 0
    while offset < buffer.count {
        let n = read(fd, buffer.baseAddress! + offset, buffer.count - offset)
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { throw GeneralError.io("read", path: "/dev/urandom", errno: errno) }
        offset += n
    }
}

/// Random bytes that are not secret (IVs, UUIDs).
public func randomBytes(_ count: Int) throws -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: count)
    try bytes.withUnsafeMutableBytes { try fillRandom($0) }
    return bytes
}
