import ArgumentParser
import Foundation
import SEVImageKit

/// `sevimage firmware measure OVMF.fd --mode ...`: the launch digest, and with the session's TIK and
/// nonce the value QEMU's `query-sev-launch-measure` reports.
struct FirmwareMeasure: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "measure",
        abstract: "Compute the SEV, SEV-ES or SEV-SNP launch digest of an OVMF image (and the launch measurement)."
    )

    @Argument(help: "The OVMF flash image (OVMF.fd).")
    var firmware: String

    @Option(help: "Launch mode: sev, sev-es or sev-snp.")
    var mode: String

    @Option(help: "Number of vCPUs (sev-es, sev-snp).")
    var vcpus: Int = 1

    @Option(help: "QEMU -cpu model (sev-es, sev-snp), e.g. EPYC-v4, EPYC-Milan, EPYC-Genoa.")
    var vcpuType: String?

    @Option(help: "Guest policy (decimal or 0x hex): 32-bit for sev/sev-es, 64-bit for sev-snp.")
    var policy: String?

    @Option(help: "SEV_FEATURES of every VMSA (sev-es default 0, sev-snp default 0x1).")
    var guestFeatures: String?

    @Option(help: "The session's TIK: 16 bytes, or 32 bytes (TEK then TIK).")
    var tikFile: String?

    @Option(help: "The 16-byte nonce of the launch measurement, base64 or hex.")
    var nonce: String?

    @Option(help: "SEV API major version of the platform.")
    var apiMajor: UInt8?

    @Option(help: "SEV API minor version of the platform.")
    var apiMinor: UInt8?

    @Option(help: "SEV firmware build id of the platform.")
    var build: UInt8?

    @Flag(help: "Print one JSON object on stdout.")
    var json = false

    struct MeasurementOutput: Encodable {
        var apiMajor: UInt8
        var apiMinor: UInt8
        var build: UInt8
        var policy: String
        var nonce: String
        /// HMAC-SHA256 over the digest and the platform values, hex.
        var measurement: String
        /// base64(measurement ‖ nonce), as `query-sev-launch-measure` returns it.
        var launchMeasure: String
    }

    struct Output: Encodable {
        var file: String
        var size: Int
        var sha256: String
        var mode: String
        var vcpus: Int?
        var vcpuType: String?
        var cpuSignature: String?
        var guestFeatures: String?
        var policy: String?
        var digest: String
        var measurement: MeasurementOutput?
    }

    func run() throws {
        let launchMode = try LaunchMode(parsing: mode)
        let features = try guestFeatures.map { try Firmware.integer($0, option: "--guest-features", max: .max) }
        if launchMode == .sev && features != nil {
            throw FirmwareError.optionNotForMode(option: "--guest-features", mode: "sev", why: "a plain SEV launch has no VMSA")
        }
        let policyValue = try policy.map { try Firmware.integer($0, option: "--policy", max: .max) }
        if let policyValue { try LaunchMeasurement.checkPolicy(policyValue, mode: launchMode) }
        let measurementInputs: [String?] = [tikFile, nonce, apiMajor.map(String.init), apiMinor.map(String.init), build.map(String.init)]
        let wantsMeasurement = measurementInputs.contains { $0 != nil }
        if wantsMeasurement && launchMode == .sevSNP {
            throw FirmwareError.optionNotForMode(option: "--tik-file", mode: "sev-snp",
                                                 why: "SEV-SNP reports the launch digest in the attestation report, not as an HMAC")
        }
        if wantsMeasurement && (measurementInputs.contains { $0 == nil } || policyValue == nil) {
            throw GeneralError.invalidArgument("the launch measurement needs all of --tik-file, --nonce, --api-major, --api-minor, --build and --policy")
        }
        let type = launchMode == .sev ? nil : try vcpuType.map(VCPUType.named)

        let image = try OVMFImage.load(path: firmware)
        let digest = try SEVLaunchDigest.compute(image, mode: launchMode, vcpus: vcpus, vcpuType: type, guestFeatures: features)

        var output = Output(file: firmware, size: image.size, sha256: hex(image.sha256), mode: launchMode.rawValue,
                            policy: policyValue.map { "0x" + String($0, radix: 16) }, digest: hex(digest))
        if launchMode != .sev, let type {
            output.vcpus = vcpus
            output.vcpuType = type.name
            output.cpuSignature = "0x" + String(type.signature, radix: 16)
            output.guestFeatures = "0x" + String(features ?? launchMode.defaultGuestFeatures, radix: 16)
        }
        if wantsMeasurement, let tikFile, let nonce, let apiMajor, let apiMinor, let build, let policyValue {
            let nonceBytes = try LaunchMeasurement.parseNonce(nonce)
            let tik = try LaunchMeasurement.readTIK(path: tikFile)
            let mac = LaunchMeasurement.measurement(tik: tik, apiMajor: apiMajor, apiMinor: apiMinor, build: build,
                                                    policy: UInt32(truncatingIfNeeded: policyValue), digest: digest, nonce: nonceBytes)
            output.measurement = MeasurementOutput(apiMajor: apiMajor, apiMinor: apiMinor, build: build,
                                                   policy: "0x" + String(policyValue, radix: 16), nonce: hex(nonceBytes),
                                                   measurement: hex(mac),
                                                   launchMeasure: LaunchMeasurement.qemuLaunchMeasure(measurement: mac, nonce: nonceBytes))
        }

        if json {
            try Firmware.printJSON(output)
            return
        }
        var lines = ["firmware:        \(firmware) (\(image.size) bytes, sha256 \(output.sha256))"]
        lines.append("mode:            \(launchMode.rawValue)")
        if let type = output.vcpuType, let signature = output.cpuSignature, let features = output.guestFeatures {
            lines.append("vcpus:           \(vcpus) x \(type) (cpuid signature \(signature)), guest features \(features)")
        }
        if let policy = output.policy { lines.append("policy:          \(policy)") }
        lines.append("launch digest:   \(output.digest)")
        if let measurement = output.measurement {
            lines.append("measurement:     \(measurement.measurement)")
            lines.append("launch-measure:  \(measurement.launchMeasure)")
        }
        Console.write(lines.joined(separator: "\n") + "\n")
    }
}
