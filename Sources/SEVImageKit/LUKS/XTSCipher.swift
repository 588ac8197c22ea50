import COpenSSL
import Foundation

/// AES-XTS with dm-crypt's `plain64` IVs, the data encryption of a LUKS2 aes-xts-plain64 segment.
///
/// Sector n (of `sectorSize` bytes, counted from the start of the data segment) is one XTS data unit
/// whose tweak is n·(sectorSize/512) as a 128-bit little-endian number: plain64 counts 512-byte units
/// even with 4096-byte sectors (DESIGN.md; checked against libcryptsetup in the tests).
///
/// Owns one `EVP_CIPHER_CTX`; not `Sendable` (use one per thread).
public final class XTSCipher {
    private let context: OpaquePointer
    public let sectorSize: Int
    private let encrypting: Bool

    public init(key: SecretBytes, sectorSize: Int = Int(LUKSLayout.sectorSize), encrypt: Bool) throws {
        guard key.count == 64 || key.count == 32 else {
            throw Crypto.Failure.openssl("AES-XTS needs a 32- or 64-byte key, not \(key.count) bytes")
        }
        guard let context = EVP_CIPHER_CTX_new() else { throw Crypto.Failure.openssl("EVP_CIPHER_CTX_new") }
        self.context = context
        self.sectorSize = sectorSize
        encrypting = encrypt
        let cipher = key.count == 64 ? EVP_aes_256_xts() : EVP_aes_128_xts()
        let status = key.withUnsafeBytes { k in
            EVP_CipherInit_ex(context, cipher, nil, k.baseAddress?.assumingMemoryBound(to: UInt8.self), nil, encrypt ? 1 : 0)
        }
        guard status == 1 else {
            EVP_CIPHER_CTX_free(context)
            throw Crypto.Failure.openssl("AES-XTS key setup")
        }
    }

    deinit {
        // EVP_CIPHER_CTX_free cleanses the expanded key.
        EVP_CIPHER_CTX_free(context)
    }

    /// Encrypts (or decrypts) whole sectors in place; `firstSector` numbers the buffer's first sector
    /// within the data segment.
    public func process(_ buffer: UnsafeMutableRawBufferPointer, firstSector: UInt64) throws {
        precondition(buffer.count % sectorSize == 0, "XTS works on whole sectors")
        let unitsPerSector = UInt64(sectorSize / 512)
        var iv = [UInt8](repeating: 0, count: 16)
        var sector = firstSector
        var offset = 0
        while offset < buffer.count {
            let tweak = (sector * unitsPerSector).littleEndian
            withUnsafeBytes(of: tweak) { for i in 0..<8 { iv[i] = $0[i] } }
            let data = buffer.baseAddress!.advanced(by: offset).assumingMemoryBound(to: UInt8.self)
            var produced: Int32 = 0
            guard EVP_CipherInit_ex(context, nil, nil, nil, iv, encrypting ? 1 : 0) == 1,
                  EVP_CipherUpdate(context, data, &produced, data, Int32(sectorSize)) == 1,
                  produced == Int32(sectorSize)
            else { throw Crypto.Failure.openssl("AES-XTS on sector \(sector)") }
            offset += sectorSize
            sector += 1
        }
    }
}
