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

    /// A SHA-256 digest held without an allocation (for the many block digests of an image).
    struct SHA256Value {
        var words: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
    }

    /// SHA-256 of `bytes`, written to the 32 bytes at `output`.
    static func sha256(_ bytes: UnsafeRawBufferPointer, into output: UnsafeMutableRawPointer) {
        var length: UInt32 = 0
        let status = EVP_Digest(bytes.baseAddress, bytes.count, output.assumingMemoryBound(to: UInt8.self), &length, EVP_sha256(), nil)
        precondition(status == 1 && length == 32, "OpenSSL could not compute a SHA-256")
    }

    static func sha256Value(_ bytes: UnsafeRawBufferPointer) -> SHA256Value {
        var value = SHA256Value()
        withUnsafeMutableBytes(of: &value) { sha256(bytes, into: $0.baseAddress!) }
        return value
    }
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
    /// SHA-256 (or SHA-384) of a file, read in 1 MiB pieces.
    public static func hashFile(_ path: String, sha384: Bool = false) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw GeneralError.io("open", path: path, errno: errno) }
        defer { close(fd) }
        let digest = try Digest(sha384 ? EVP_sha384() : EVP_sha256())
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var position: UInt64 = 0
        while true {
            let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(position)) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw GeneralError.io("read", path: path, errno: errno) }
            if n == 0 { break }
            try buffer.withUnsafeBytes { try digest.update(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            position += UInt64(n)
        }
        return try digest.finish()
    }

    /// A hash computed piece by piece (one thread at a time).
    final class Digest: @unchecked Sendable {
        private let context: OpaquePointer

        init(_ type: OpaquePointer? = EVP_sha256()) throws {
            guard let context = EVP_MD_CTX_new() else { throw Failure.openssl("EVP_MD_CTX_new") }
            self.context = context
            guard EVP_DigestInit_ex(context, type, nil) == 1 else { throw Failure.openssl("digest init") }
        }

        deinit { EVP_MD_CTX_free(context) }

        func update(_ bytes: UnsafeRawBufferPointer) throws {
            guard EVP_DigestUpdate(context, bytes.baseAddress, bytes.count) == 1 else { throw Failure.openssl("digest update") }
        }

        func finish() throws -> [UInt8] {
            var out = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
            var length: UInt32 = 0
            guard EVP_DigestFinal_ex(context, &out, &length) == 1 else { throw Failure.openssl("digest final") }
            return Array(out.prefix(Int(length)))
        }
    }

    /// A 128-bit fingerprint of byte strings: GMAC (GHASH) under a random AES-128 key that never leaves the
    /// process, so two different inputs share a fingerprint with probability below 2^-110 for inputs up to
    /// 1 MiB, whatever the inputs are. Several times faster than SHA-256. One per thread.
    final class Fingerprinter {
        private let context: OpaquePointer
        private static let iv = [UInt8](repeating: 0, count: 12)

        init(key: SecretBytes) throws {
            precondition(key.count == 16, "GMAC here uses AES-128")
            guard let context = EVP_CIPHER_CTX_new() else { throw Failure.openssl("EVP_CIPHER_CTX_new") }
            self.context = context
            let status = key.withUnsafeBytes {
                EVP_EncryptInit_ex(context, EVP_aes_128_gcm(), nil, $0.baseAddress?.assumingMemoryBound(to: UInt8.self), Self.iv)
            }
            guard status == 1 else {
                EVP_CIPHER_CTX_free(context)
                throw Failure.openssl("GMAC key setup")
            }
        }

        deinit { EVP_CIPHER_CTX_free(context) }  // cleanses the expanded key

        func fingerprint(_ bytes: UnsafeRawBufferPointer) throws -> Fingerprint {
            var length: Int32 = 0
            var tag = Fingerprint()
            let ok = EVP_EncryptInit_ex(context, nil, nil, nil, Self.iv) == 1
                && EVP_EncryptUpdate(context, nil, &length, bytes.baseAddress?.assumingMemoryBound(to: UInt8.self), Int32(bytes.count)) == 1
                && EVP_EncryptFinal_ex(context, nil, &length) == 1
                && withUnsafeMutableBytes(of: &tag) { EVP_CIPHER_CTX_ctrl(context, 0x10 /* EVP_CTRL_AEAD_GET_TAG */, 16, $0.baseAddress) } == 1
            guard ok else { throw Failure.openssl("GMAC") }
            return tag
        }
    }

    struct Fingerprint: Equatable {
        var low: UInt64 = 0, high: UInt64 = 0
    }
}
