import CCryptsetup
import Foundation

/// A LUKS2 header on a plain file, through libcryptsetup.
///
/// Owns one `struct crypt_device *` and frees it in `deinit`. Not `Sendable`: libcryptsetup contexts
/// must not be shared between threads. Metadata locking is off (the lock directory `/run/cryptsetup`
/// is root's; sevimage locks its images itself) and volume keys stay out of the kernel keyring, so
/// everything works unprivileged and without device-mapper.
public final class CryptDevice {
    private var handle: OpaquePointer?
    private let log = LogBuffer()
    public let path: String

    /// Opens `path` for header operations; `load()` reads an existing header, `format` writes a new one.
    public init(path: String) throws {
        self.path = path
        var cd: OpaquePointer?
        let status = crypt_init(&cd, path)
        guard status == 0, let cd else { throw LUKSError.library("open \(path)", status, nil) }
        handle = cd
        crypt_set_log_callback(cd, { level, message, context in
            guard let message, let context, level == CRYPT_LOG_ERROR else { return }
            Unmanaged<LogBuffer>.fromOpaque(context).takeUnretainedValue().last = String(cString: message)
                .trimmingCharacters(in: .whitespacesAndNewlines)
        }, Unmanaged.passUnretained(log).toOpaque())
        _ = crypt_metadata_locking(cd, 0)
        _ = crypt_volume_key_keyring(cd, 0)
    }

    deinit {
        if let handle { crypt_free(handle) }
    }

    private var cd: OpaquePointer? { handle }

    /// Turns a libcryptsetup return code into an error carrying the library's own message.
    @discardableResult
    private func check(_ status: Int32, _ operation: String) throws -> Int32 {
        guard status >= 0 else {
            // libcryptsetup reports a full disk as an I/O error ("cannot wipe header"): say what it is.
            var fs = statvfs()
            if statvfs(path, &fs) == 0, UInt64(fs.f_bavail) * UInt64(fs.f_frsize) < 1 << 20 {
                throw LUKSError.library(operation, -ENOSPC, "no space left on device")
            }
            throw LUKSError.library(operation, status, log.last)
        }
        return status
    }

    /// Reads the LUKS2 header; a file without one is `notLUKS`.
    public func load() throws {
        let status = crypt_load(cd, "LUKS2", nil)
        if status == -EINVAL || status == -ENODEV { throw LUKSError.notLUKS(path, log.last) }
        try check(status, "read the LUKS2 header of \(path)")
    }

    /// Writes a new LUKS2 header: aes-xts-plain64 with the given 512-bit volume key, `sectorSize`-byte
    /// sectors, and the data segment starting `dataOffset` bytes into the file.
    public func format(volumeKey: SecretBytes, uuid: String, dataOffset: UInt64, sectorSize: UInt32, label: String?) throws {
        try withPBKDF(iterations: LUKSLayout.minimumPBKDF2Iterations) { pbkdf in
            var params = crypt_params_luks2()
            params.data_alignment = Int(dataOffset / 512)
            params.sector_size = sectorSize
            try withOptionalCString(label) { labelPointer in
                params.label = labelPointer
                try withUnsafePointer(to: &pbkdf) { pbkdfPointer in
                    params.pbkdf = pbkdfPointer
                    _ = try volumeKey.withUnsafeBytes { key in
                        try check(crypt_format(cd, "LUKS2", "aes", "xts-plain64", uuid,
                                               key.baseAddress?.assumingMemoryBound(to: CChar.self), key.count, &params),
                                  "format \(path) as LUKS2")
                    }
                }
            }
        }
    }

    /// Adds a PBKDF2-SHA256 keyslot (GRUB opens no other kind) for `passphrase`, unlocked by the volume key.
    @discardableResult
    public func addKeyslot(volumeKey: SecretBytes, passphrase: SecretBytes, iterations: UInt32, slot: Int32 = CRYPT_ANY_SLOT) throws -> Int {
        try setPBKDF2(iterations: iterations)
        return try volumeKey.withUnsafeBytes { key in
            try passphrase.withUnsafeBytes { pass in
                Int(try check(crypt_keyslot_add_by_volume_key(cd, slot, key.baseAddress?.assumingMemoryBound(to: CChar.self), key.count,
                                                              pass.baseAddress?.assumingMemoryBound(to: CChar.self), pass.count),
                              "add a keyslot to \(path)"))
            }
        }
    }

    /// The volume key, unlocked with `passphrase` from a keyslot; also says which keyslot opened.
    ///
    /// Keyslots are tried one by one in libcryptsetup's order (priority "prefer", then "normal"; "ignore" is
    /// skipped, as with CRYPT_ANY_SLOT), and only those whose KDF cost is within `KeyslotCostLimit`: a hostile
    /// header's PBKDF2 with 2^31 iterations or argon2 with time cost 2^32−1 would hang verify and rotate. When
    /// no keyslot within the limit opens and one above it was left out, the refusal names it (exit 2).
    public func volumeKey(passphrase: SecretBytes) throws -> (key: SecretBytes, keyslot: Int) {
        var buffer = [UInt8](repeating: 0, count: 128)
        defer { buffer.withUnsafeMutableBytes { wipe($0) } }
        var tooCostly: (slot: Int, cost: String)?
        var candidates: [(slot: Int32, prefer: Bool)] = []
        for slot in 0..<crypt_keyslot_max("LUKS2") {
            let status = crypt_keyslot_status(cd, slot)
            guard status == CRYPT_SLOT_ACTIVE || status == CRYPT_SLOT_ACTIVE_LAST else { continue }
            let priority = crypt_keyslot_get_priority(cd, slot)
            guard priority != CRYPT_SLOT_PRIORITY_IGNORE else { continue }
            var pbkdf = crypt_pbkdf_type()
            let cost: String?
            if crypt_keyslot_get_pbkdf(cd, slot, &pbkdf) == 0 {
                cost = KeyslotCostLimit.excess(type: pbkdf.type.map { String(cString: $0) } ?? "", iterations: pbkdf.iterations,
                                               memoryKiB: pbkdf.max_memory_kb, threads: pbkdf.parallel_threads)
            } else {
                cost = "a KDF libcryptsetup cannot describe"
            }
            if let cost {
                if tooCostly == nil { tooCostly = (Int(slot), cost) }
                continue
            }
            candidates.append((slot, priority == CRYPT_SLOT_PRIORITY_PREFER))
        }
        for (slot, _) in candidates.filter(\.prefer) + candidates.filter({ !$0.prefer }) {
            var size = buffer.count
            let status = passphrase.withUnsafeBytes { pass in
                buffer.withUnsafeMutableBytes { out in
                    crypt_volume_key_get(cd, slot, out.baseAddress?.assumingMemoryBound(to: CChar.self), &size,
                                         pass.baseAddress?.assumingMemoryBound(to: CChar.self), pass.count)
                }
            }
            if status == -EPERM || status == -ENOENT { continue }
            let opened = try check(status, "unlock \(path)")
            return (SecretBytes(buffer[0..<size]), Int(opened))
        }
        if let tooCostly { throw LUKSError.keyslotTooCostly(path, slot: tooCostly.slot, cost: tooCostly.cost) }
        throw LUKSError.wrongPassphrase(path)
    }

    /// Destroys a keyslot (its key material is overwritten).
    public func destroyKeyslot(_ slot: Int) throws {
        try check(crypt_keyslot_destroy(cd, Int32(slot)), "destroy keyslot \(slot) of \(path)")
    }

    /// The byte ranges of the keyslot area that no active keyslot uses.
    ///
    /// `create` fills them with random bytes, so that the whole header area holds data: in the QCOW2 every
    /// cluster of it is then allocated, and `rotate` can rewrite keyslots in place without growing the file.
    public func unusedKeyslotRanges() throws -> [Range<UInt64>] {
        var metadata: UInt64 = 0, keyslotsSize: UInt64 = 0
        try check(crypt_get_metadata_size(cd, &metadata, &keyslotsSize), "read the header sizes of \(path)")
        var free: [Range<UInt64>] = [(2 * metadata)..<(2 * metadata + keyslotsSize)]
        for slot in keyslots.map(\.slot) {
            var offset: UInt64 = 0, length: UInt64 = 0
            try check(crypt_keyslot_area(cd, Int32(slot), &offset, &length), "locate keyslot \(slot) of \(path)")
            free = free.flatMap { range -> [Range<UInt64>] in
                let used = offset..<(offset + length)
                guard range.overlaps(used) else { return [range] }
                return [range.lowerBound..<max(range.lowerBound, used.lowerBound), min(range.upperBound, used.upperBound)..<range.upperBound]
                    .filter { !$0.isEmpty }
            }
        }
        return free
    }

    public var uuid: String { crypt_get_uuid(cd).map { String(cString: $0) } ?? "" }
    public var cipher: String {
        let c = crypt_get_cipher(cd).map { String(cString: $0) } ?? ""
        let m = crypt_get_cipher_mode(cd).map { String(cString: $0) } ?? ""
        return "\(c)-\(m)"
    }
    /// Data offset in bytes.
    public var dataOffset: UInt64 { crypt_get_data_offset(cd) * 512 }
    public var volumeKeySize: Int { Int(crypt_get_volume_key_size(cd)) }
    public var sectorSize: Int { Int(crypt_get_sector_size(cd)) }

    /// The active keyslots with their PBKDF settings.
    public var keyslots: [KeyslotInfo] {
        let max = crypt_keyslot_max("LUKS2")
        return (0..<max).compactMap { slot in
            let status = crypt_keyslot_status(cd, slot)
            guard status == CRYPT_SLOT_ACTIVE || status == CRYPT_SLOT_ACTIVE_LAST else { return nil }
            var pbkdf = crypt_pbkdf_type()
            guard crypt_keyslot_get_pbkdf(cd, slot, &pbkdf) == 0 else { return nil }
            let priority = crypt_keyslot_get_priority(cd, slot)
            return KeyslotInfo(slot: Int(slot),
                               pbkdf: pbkdf.type.map { String(cString: $0) } ?? "?",
                               hash: pbkdf.hash.map { String(cString: $0) } ?? "",
                               iterations: pbkdf.iterations,
                               priority: priority == CRYPT_SLOT_PRIORITY_PREFER ? "prefer" : priority == CRYPT_SLOT_PRIORITY_IGNORE ? "ignore" : "normal")
        }
    }

    private func setPBKDF2(iterations: UInt32) throws {
        try withPBKDF(iterations: iterations) { pbkdf in
            try check(crypt_set_pbkdf_type(cd, &pbkdf), "set PBKDF2 parameters")
        }
    }

    private func withPBKDF(iterations: UInt32, _ body: (inout crypt_pbkdf_type) throws -> Void) throws {
        try "pbkdf2".withCString { type in
            try "sha256".withCString { hash in
                var pbkdf = crypt_pbkdf_type()
                pbkdf.type = type
                pbkdf.hash = hash
                pbkdf.iterations = iterations
                pbkdf.flags = SEVIMAGE_CRYPT_PBKDF_NO_BENCHMARK
                try body(&pbkdf)
            }
        }
    }
}

/// One active keyslot as libcryptsetup reports it.
public struct KeyslotInfo: Sendable, Equatable, Codable {
    public var slot: Int
    public var pbkdf: String
    public var hash: String
    public var iterations: UInt32
    public var priority: String
}

/// The LUKS2 layout every sevimage image uses (DESIGN.md, "The image").
public enum LUKSLayout {
    /// Header and keyslot area before the data segment.
    public static let headerSize: UInt64 = 16 << 20
    public static let sectorSize: UInt32 = 4096
    public static let volumeKeyBytes = 64
    /// libcryptsetup's floor for PBKDF2.
    public static let minimumPBKDF2Iterations: UInt32 = 1000
}

/// The most work sevimage lets libcryptsetup do for one keyslot, so that a hostile header cannot make `verify`,
/// `rotate`, `reencrypt` or `keys` run for hours: PBKDF2 at most 100,000,000 iterations (the most a profile or
/// `keys add --iterations` may set; about 2.5 minutes for a 512-bit key here), argon2 at most 4 GiB of memory
/// (libcryptsetup's own ceiling), 16 threads, and a time cost times memory of at most 64 GiB (cryptsetup's
/// defaults are 4 to 10 passes over at most 1 GiB).
public enum KeyslotCostLimit {
    public static let pbkdf2Iterations: UInt32 = 100_000_000
    public static let argon2MemoryKiB: UInt32 = 4 << 20
    public static let argon2Threads: UInt32 = 16
    public static let argon2PassesTimesMemoryKiB: UInt64 = 64 << 20

    /// What is above the limit in a keyslot's KDF, or nil when it is within.
    static func excess(type: String, iterations: UInt32, memoryKiB: UInt32, threads: UInt32) -> String? {
        switch type {
        case "pbkdf2":
            return iterations > pbkdf2Iterations ? "PBKDF2 with \(iterations) iterations (sevimage tries at most \(pbkdf2Iterations))" : nil
        case "argon2i", "argon2id":
            if memoryKiB > argon2MemoryKiB { return "\(type) with \(memoryKiB) KiB of memory (sevimage tries at most \(argon2MemoryKiB))" }
            if threads > argon2Threads { return "\(type) with \(threads) threads (sevimage tries at most \(argon2Threads))" }
            if UInt64(iterations) * UInt64(memoryKiB) > argon2PassesTimesMemoryKiB {
                return "\(type) with time cost \(iterations) over \(memoryKiB) KiB (sevimage tries at most \(argon2PassesTimesMemoryKiB) KiB in all)"
            }
            return nil
        default:
            return "the unknown KDF \"\(type)\""
        }
    }
}

public enum LUKSError: SEVImageError {
    case library(String, Int32, String?)
    case notLUKS(String, String?)
    case wrongPassphrase(String)
    /// No keyslot within `KeyslotCostLimit` opened, and this one was left out.
    case keyslotTooCostly(String, slot: Int, cost: String)

    /// The same refusal about `image` instead of the private header copy it came from.
    public func naming(_ image: String) -> LUKSError {
        switch self {
        case .wrongPassphrase: .wrongPassphrase(image)
        case .keyslotTooCostly(_, let slot, let cost): .keyslotTooCostly(image, slot: slot, cost: cost)
        default: self
        }
    }

    public var exitStatus: ExitStatus {
        switch self {
        case .library: .failure
        case .notLUKS, .keyslotTooCostly: .invalidInput
        case .wrongPassphrase: .wrongPassphrase
        }
    }

    public var description: String {
        switch self {
        case .library(let operation, let status, let message):
            let reason = message.map { $0.prefix(1).lowercased() + $0.dropFirst() } ?? errnoDescription(-status)
            return "libcryptsetup could not \(operation): \(reason)"
        case .notLUKS(let path, _):
            return "\(path) holds no readable LUKS2 header (not a sevimage image, or its header is damaged)"
        case .wrongPassphrase(let path):
            return "the passphrase opens no keyslot of \(path)"
        case .keyslotTooCostly(let path, let slot, let cost):
            return "the passphrase opens no other keyslot of \(path), and keyslot \(slot) was not tried: it asks for \(cost)"
        }
    }
}

private final class LogBuffer {
    var last: String?
}

private func withOptionalCString<R>(_ string: String?, _ body: (UnsafePointer<CChar>?) throws -> R) rethrows -> R {
    guard let string else { return try body(nil) }
    return try string.withCString { try body($0) }
}
