import COpenSSL
import Foundation

/// Hashes, HMAC and AES through OpenSSL's EVP interface (the library libcryptsetup itself uses).
public enum Crypto {
    public enum Failure: SEVImageError {
        case openssl(String)
        public var exitStatus: ExitStatus { .failure }
        public var description: String {
            switch self {
            case .openssl(let operation): "openssl: \(operation) failed"
            }
        }
    }

    public static func sha256(_ data: some ContiguousBytes) -> [UInt8] { digest(data, EVP_sha256()) }
    public static func sha384(_ data: some ContiguousBytes) -> [UInt8] { digest(data, EVP_sha384()) }

    private static func digest(_ data: some ContiguousBytes, _ md: OpaquePointer?) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        data.withUnsafeBytes { input in
            _ = EVP_Digest(input.baseAddress, input.count, &out, &length, md, nil)
        }
        return Array(out.prefix(Int(length)))
    }

    /// HMAC-SHA256 of `data` under `key`.
    public static func hmacSHA256(key: some ContiguousBytes, _ data: some ContiguousBytes) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        key.withUnsafeBytes { k in
            data.withUnsafeBytes { d in
                _ = HMAC(EVP_sha256(), k.baseAddress, Int32(k.count), d.baseAddress?.assumingMemoryBound(to: UInt8.self), d.count, &out, &length)
            }
        }
        return out
    }

    /// AES-128-CTR with a 16-byte IV as the initial counter block (encryption and decryption are the same).
    public static func aes128CTR(key: some ContiguousBytes, iv: [UInt8], _ data: [UInt8]) throws -> [UInt8] {
        precondition(iv.count == 16)
        return try cipher(EVP_aes_128_ctr(), key: key, iv: iv, data, encrypt: true)
    }

    static func cipher(_ type: OpaquePointer?, key: some ContiguousBytes, iv: [UInt8], _ data: [UInt8], encrypt: Bool) throws -> [UInt8] {
        guard let ctx = EVP_CIPHER_CTX_new() else { throw Failure.openssl("EVP_CIPHER_CTX_new") }
        defer { EVP_CIPHER_CTX_free(ctx) }
        let ok = key.withUnsafeBytes { k in
            EVP_CipherInit_ex(ctx, type, nil, k.baseAddress?.assumingMemoryBound(to: UInt8.self), iv, encrypt ? 1 : 0)
        }
        guard ok == 1 else { throw Failure.openssl("cipher init") }
        var out = [UInt8](repeating: 0, count: data.count + 32)
        var outLength: Int32 = 0
        var finalLength: Int32 = 0
        guard EVP_CipherUpdate(ctx, &out, &outLength, data, Int32(data.count)) == 1,
              out.withUnsafeMutableBufferPointer({ EVP_CipherFinal_ex(ctx, $0.baseAddress! + Int(outLength), &finalLength) }) == 1
        else { throw Failure.openssl("cipher update") }
        return Array(out.prefix(Int(outLength + finalLength)))
    }
}

extension Crypto {
    /// SHA-256 (or SHA-384) of a file, read in 1 MiB pieces. `readableUpTo(offset)`, if given, is asked before
    /// each read and returns how far the file may be read from `offset` (more than `offset`; it may wait until
    /// the bytes there are final), so that a file still being completed can be hashed behind its writers.
    public static func hashFile(_ path: String, sha384: Bool = false, readableUpTo: ((UInt64) -> UInt64)? = nil) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw GeneralError.io("open", path: path, errno: errno) }
        defer { close(fd) }
        guard let ctx = EVP_MD_CTX_new() else { throw Failure.openssl("EVP_MD_CTX_new") }
        defer { EVP_MD_CTX_free(ctx) }
        guard EVP_DigestInit_ex(ctx, sha384 ? EVP_sha384() : EVP_sha256(), nil) == 1 else { throw Failure.openssl("digest init") }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var position: UInt64 = 0
        while true {
            let limit = readableUpTo?(position) ?? .max
            let count = Int(min(UInt64(buffer.count), limit - position))
            let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(position)) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw GeneralError.io("read", path: path, errno: errno) }
            if n == 0 { break }
            guard EVP_DigestUpdate(ctx, buffer, n) == 1 else { throw Failure.openssl("digest update") }
            position += UInt64(n)
        }
        var out = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        guard EVP_DigestFinal_ex(ctx, &out, &length) == 1 else { throw Failure.openssl("digest final") }
        return Array(out.prefix(Int(length)))
    }
}
