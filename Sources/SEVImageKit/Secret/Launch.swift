import Foundation

/// The guest owner's verified launch: attest a paused SEV guest over QMP, and only if its launch
/// measurement matches the firmware the manifest names, inject the secret table and resume it.
///
/// ```
/// query-sev                  enabled, state launch-secret, policy (NODBG, NOKS, ES), API >= 0.17, build
/// query-sev-launch-measure   measurement (32) ‖ nonce (16)
/// for each manifest digest of the guest's mode (policy bit 2: sev-es, else sev):
///     HMAC-SHA256(TIK, 0x04 ‖ api major ‖ api minor ‖ build ‖ policy ‖ digest ‖ nonce) == measurement ?
/// match:    sev-inject-launch-secret at firmware.secretArea.gpa, then cont
/// no match: nothing is sent; LaunchError.measurementMismatch (exit status 4)
/// ```
public enum GuestLaunch {
    /// SEV guest policy bits (AMD SEV API, "Guest Policy").
    public enum Policy {
        public static let noDebug: UInt32 = 1 << 0
        public static let noKeySharing: UInt32 = 1 << 1
        public static let encryptedState: UInt32 = 1 << 2
    }

    public struct Options: Sendable {
        public var allowDebug = false
        public var allowKeySharing = false
        public init(allowDebug: Bool = false, allowKeySharing: Bool = false) {
            self.allowDebug = allowDebug
            self.allowKeySharing = allowKeySharing
        }
    }

    /// What happened, for `--json` and the human summary.
    public struct Result: Codable, Sendable, Equatable {
        public var qemuVersion: String?
        public var mode: String
        public var policy: UInt32
        public var apiMajor: UInt8
        public var apiMinor: UInt8
        public var build: UInt8
        public var measurement: String
        public var nonce: String
        public var matchedDigest: String
        public var vcpus: Int?
        public var gpa: UInt64
        public var tableSize: Int
        public var injected: Bool
        public var resumed: Bool
    }

    /// The secret area the manifest's firmware offers; errors when the manifest has no firmware link or area.
    public static func secretArea(of manifest: Manifest) throws -> FirmwareLink.SecretArea {
        guard let firmware = manifest.firmware else { throw LaunchError.noFirmwareLink }
        guard let area = firmware.secretArea, area.gpa != 0, area.size != 0 else {
            throw LaunchError.noSecretArea(firmware.file)
        }
        return area
    }

    /// The guest's mode from its policy: SEV-ES when the ES bit is set.
    public static func mode(forPolicy policy: UInt32) -> String {
        policy & Policy.encryptedState != 0 ? "sev-es" : "sev"
    }

    /// Runs the whole check-then-inject sequence on a negotiated client.
    public static func run(client: QMPClient, manifest: Manifest, passphrase: Passphrase, extraEntries: [SecretTable.Entry] = [],
                           keys: TransportKeys, options: Options = Options()) throws -> Result {
        // Everything that depends only on local inputs first, so that a bad manifest fails before QMP.
        let area = try secretArea(of: manifest)
        guard let firmware = manifest.firmware else { throw LaunchError.noFirmwareLink }
        let table = try SecretTable.build(passphrase: passphrase, extra: extraEntries, areaSize: Int(area.size))

        let sev = try client.querySEV()
        guard sev.enabled else { throw LaunchError.sevDisabled }
        if let type = sev.sevType, type != "sev" { throw LaunchError.unsupportedGuestType(type) }
        guard let policy = sev.policy else { throw LaunchError.unsupportedGuestType(sev.sevType ?? "without a policy") }
        guard sev.state == "launch-secret" else { throw LaunchError.wrongState(sev.state) }
        if policy & Policy.noDebug == 0 && !options.allowDebug { throw LaunchError.debugAllowed(policy) }
        if policy & Policy.noKeySharing == 0 && !options.allowKeySharing { throw LaunchError.keySharingAllowed(policy) }
        guard (sev.apiMajor, sev.apiMinor) >= (0, 17) else { throw LaunchError.oldAPI(sev.apiMajor, sev.apiMinor) }

        let measure = try client.queryLaunchMeasure()
        let mode = mode(forPolicy: policy)
        let candidates = firmware.launchDigests.filter { $0.mode == mode }
        guard !candidates.isEmpty else { throw LaunchError.noDigestForMode(mode, firmware.file) }

        var matched: FirmwareLink.LaunchDigest?
        var expectedValues: [String] = []
        for candidate in candidates {
            guard let digest = hexBytes(candidate.digest), digest.count == 32 else {
                throw LaunchError.badDigest(candidate.digest)
            }
            let expected = LaunchMeasurement.measurement(tik: keys.tik, apiMajor: sev.apiMajor, apiMinor: sev.apiMinor,
                                                         build: sev.buildID, policy: policy, digest: digest, nonce: measure.nonce)
            if constantTimeEqual(expected, measure.measurement) {
                matched = candidate
                break
            }
            expectedValues.append(hex(expected))
        }
        guard let matched else {
            throw LaunchError.measurementMismatch(reported: hex(measure.measurement), expected: expectedValues, mode: mode,
                                                  firmware: firmware.file, policy: policy, api: "\(sev.apiMajor).\(sev.apiMinor)",
                                                  build: sev.buildID, nonce: hex(measure.nonce))
        }

        let packet = try LaunchSecretPacket(table: table, keys: keys, measurement: measure.measurement)
        try client.injectLaunchSecret(packet, gpa: area.gpa)
        do {
            try client.cont()
        } catch {
            throw LaunchError.resumeFailed(String(describing: error))
        }
        return Result(qemuVersion: client.qemuVersion, mode: mode, policy: policy, apiMajor: sev.apiMajor, apiMinor: sev.apiMinor,
                      build: sev.buildID, measurement: hex(measure.measurement), nonce: hex(measure.nonce),
                      matchedDigest: matched.digest, vcpus: matched.vcpus, gpa: area.gpa, tableSize: table.count,
                      injected: true, resumed: true)
    }

    private static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var diff: UInt8 = 0
        for i in 0..<a.count { diff |= a[i] ^ b[i] }
        return diff == 0
    }
}

/// Why `launch` stopped. Every case before the injection leaves the guest untouched.
public enum LaunchError: SEVImageError {
    case noFirmwareLink
    case noSecretArea(String)
    case sevDisabled
    case unsupportedGuestType(String)
    case wrongState(String)
    case debugAllowed(UInt32)
    case keySharingAllowed(UInt32)
    case oldAPI(UInt8, UInt8)
    case noDigestForMode(String, String)
    case badDigest(String)
    case measurementMismatch(reported: String, expected: [String], mode: String, firmware: String, policy: UInt32,
                             api: String, build: UInt8, nonce: String)
    case resumeFailed(String)

    public var exitStatus: ExitStatus {
        switch self {
        case .noFirmwareLink, .noSecretArea, .badDigest: .invalidInput
        case .sevDisabled, .unsupportedGuestType, .wrongState, .resumeFailed: .failure
        case .debugAllowed, .keySharingAllowed, .oldAPI, .noDigestForMode, .measurementMismatch: .verificationFailed
        }
    }

    public var description: String {
        switch self {
        case .noFirmwareLink:
            return "the manifest is not linked to a firmware (no firmware section); create the image with --ovmf to attest its launch"
        case .noSecretArea(let file):
            return "the manifest's firmware \(file) has no SEV secret area; use an OVMF AmdSev build"
        case .sevDisabled:
            return "query-sev says SEV is not enabled for this guest; start QEMU with -object sev-guest and -machine memory-encryption"
        case .unsupportedGuestType(let type):
            return "the guest is \(type); launch injects secrets into SEV and SEV-ES guests only (SEV-SNP has no LAUNCH_SECRET)"
        case .wrongState(let state):
            return "the guest's SEV state is \(state), not launch-secret; start QEMU with -S and run launch before anything resumes it"
        case .debugAllowed(let policy):
            return "the guest policy 0x\(String(policy, radix: 16)) allows debugging (NODBG clear), so the host could read the secret; refusing (pass --allow-debug to accept)"
        case .keySharingAllowed(let policy):
            return "the guest policy 0x\(String(policy, radix: 16)) allows key sharing (NOKS clear); refusing (pass --allow-key-sharing to accept)"
        case .oldAPI(let major, let minor):
            return "the SEV firmware API \(major).\(minor) predates 0.17, whose LAUNCH_SECRET packet format sevimage builds"
        case .noDigestForMode(let mode, let file):
            return "the manifest has no \(mode) launch digest for \(file); the guest runs in \(mode) mode (policy bit 2)"
        case .badDigest(let digest):
            return "the manifest's launch digest \(digest) is not 64 hex digits"
        case .measurementMismatch(let reported, let expected, let mode, let firmware, let policy, let api, let build, let nonce):
            let expectedText = expected.count == 1 ? expected[0] : "one of " + expected.joined(separator: ", ")
            return "launch measurement mismatch: the guest reported \(reported), but \(firmware) as \(mode) with policy 0x\(String(policy, radix: 16)), API \(api), build \(build) and nonce \(nonce) gives \(expectedText); the guest runs other firmware or the TK is not this launch's; nothing was injected"
        case .resumeFailed(let reason):
            return "the secret was injected but the guest did not resume: \(reason)"
        }
    }
}
