/// The value QEMU's `query-sev-launch-measure` reports for a plain SEV or SEV-ES launch.
///
/// measurement = HMAC-SHA256(TIK, 0x04 ‖ api_major ‖ api_minor ‖ build ‖ policy (u32 LE) ‖ digest ‖ nonce)
/// (AMD SEV API, LAUNCH_MEASURE). QEMU returns base64 of measurement (32 bytes) ‖ nonce (16 bytes).
public enum LaunchMeasurement {
    public static func measurement(tik: SecretBytes, apiMajor: UInt8, apiMinor: UInt8, build: UInt8,
                                   policy: UInt32, digest: [UInt8], nonce: [UInt8]) -> [UInt8] {
        var message: [UInt8] = [0x04, apiMajor, apiMinor, build]
        message += withUnsafeBytes(of: policy.littleEndian, Array.init)
        message += digest
        message += nonce
        return tik.withUnsafeBytes { Crypto.hmacSHA256(key: $0, message) }
    }
}
