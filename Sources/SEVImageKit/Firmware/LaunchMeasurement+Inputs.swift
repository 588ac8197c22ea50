import Foundation

extension LaunchMeasurement {
    /// A 16-byte nonce as QEMU or a key broker hands it over: base64 (24 characters) or 32 hex digits.
    public static func parseNonce(_ text: String) throws -> [UInt8] {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if trimmed.utf8.count == 32, let bytes = hexBytes(trimmed) { return bytes }
        if let data = Data(base64Encoded: trimmed), data.count == 16 { return [UInt8](data) }
        throw FirmwareError.badNonce(text)
    }

    /// Reads the TIK: a 16-byte file, or a 32-byte combined transport key file (TEK first, then TIK).
    public static func readTIK(path: String) throws -> SecretBytes {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw GeneralError.io("open", path: path, errno: errno) }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 33)
        defer { buffer.withUnsafeMutableBytes { wipe($0) } }
        var count = 0
        while count < buffer.count {
            let n = buffer.withUnsafeMutableBytes { raw in raw.baseAddress.map { read(fd, $0 + count, raw.count - count) } ?? 0 }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw GeneralError.io("read", path: path, errno: errno) }
            if n == 0 { break }
            count += n
        }
        switch count {
        case 16: return SecretBytes(buffer[0..<16])
        case 32: return SecretBytes(buffer[16..<32])
        default: throw FirmwareError.badTIK(path: path, size: count > 32 ? Int(lseek(fd, 0, SEEK_END)) : count)
        }
    }

    /// What `query-sev-launch-measure` returns: base64 of the measurement followed by the nonce.
    public static func qemuLaunchMeasure(measurement: [UInt8], nonce: [UInt8]) -> String {
        Data(measurement + nonce).base64EncodedString()
    }

    /// Checks a guest policy against the launch mode. SEV and SEV-ES policies are 32 bits (SEV API,
    /// GUEST_POLICY): bit 2 (ES) must be set exactly for SEV-ES, or the secure processor measures a
    /// different launch. SEV-SNP policies are 64 bits with bit 17 reserved as one (SNP ABI); they are
    /// not part of the SNP launch digest.
    public static func checkPolicy(_ policy: UInt64, mode: LaunchMode) throws {
        switch mode {
        case .sev, .sevES:
            guard policy <= UInt64(UInt32.max) else {
                throw FirmwareError.policy("policy \(hexPolicy(policy)) does not fit the 32 bits of an SEV guest policy")
            }
            let es = policy & 0x4 != 0
            if mode == .sev && es {
                throw FirmwareError.policy("policy \(hexPolicy(policy)) has the SEV-ES bit (0x4) set: QEMU launches that as SEV-ES; use --mode sev-es")
            }
            if mode == .sevES && !es {
                throw FirmwareError.policy("policy \(hexPolicy(policy)) lacks the SEV-ES bit (0x4) that an SEV-ES launch needs (e.g. 0x5)")
            }
        case .sevSNP:
            guard policy & (1 << 17) != 0 else {
                throw FirmwareError.policy("SEV-SNP policy \(hexPolicy(policy)) lacks bit 17, which the SNP ABI requires set (e.g. 0x30000)")
            }
        }
    }

    static func hexPolicy(_ policy: UInt64) -> String { "0x" + String(policy, radix: 16) }
}
