import Foundation
import Testing
@testable import SEVImageKit

/// Runs `Tests/Oracles/firmware_oracle.py` once for a whole batch of jobs (see the script for their shape).
func firmwareOracle(_ jobs: [[String: Any]]) throws -> [[String: Any]] {
    let scratch = try Scratch()
    let jobsFile = scratch.file("jobs.json")
    try JSONSerialization.data(withJSONObject: jobs).write(to: URL(fileURLWithPath: jobsFile))
    let script = repositoryRoot.appendingPathComponent("Tests/Oracles/firmware_oracle.py").path
    let result = try runProgram(python3, [script, jobsFile])
    guard result.status == 0, let answers = try JSONSerialization.jsonObject(with: result.stdoutData) as? [[String: Any]],
          answers.count == jobs.count else {
        throw GeneralError.toolFailed("firmware_oracle.py", status: result.status, stderr: result.stderr)
    }
    return answers
}

/// Whether the Python oracle (PyPI `sev-snp-measure`) is installed; CI installs it.
let hasSevSnpMeasure: Bool = (try? runProgram(python3, ["-c", "import sevsnpmeasure"]).status) == 0

/// Debian's OVMF builds (package `ovmf`), one path per distinct file.
let debianFirmware: [String] = {
    let candidates = ["/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_CODE.secboot.fd", "/usr/share/OVMF/OVMF_CODE_4M.fd",
                      "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd", "/usr/share/ovmf/OVMF.fd"]
    return candidates.filter { FileManager.default.fileExists(atPath: $0) }
}()

@Suite(.serialized) struct FirmwareDigestTests {
    struct Case {
        var path: String
        var mode: LaunchMode
        var vcpus: Int
        var type: String
        var features: UInt64?

        var job: [String: Any] {
            var job: [String: Any] = ["kind": "digest", "ovmf": path, "mode": mode.rawValue, "vcpus": vcpus, "vcpuType": type]
            if let features { job["guestFeatures"] = features }
            return job
        }
    }

    static let types = ["EPYC", "EPYC-v4", "EPYC-Rome", "EPYC-Milan", "EPYC-Genoa"]

    /// Compares every case with the oracle; returns (agreed, refused by us because the firmware lacks SNP metadata).
    func compare(_ cases: [Case]) throws -> (agreed: Int, noMetadata: Int) {
        let answers = try firmwareOracle(cases.map(\.job))
        var images: [String: OVMFImage] = [:]
        var agreed = 0, noMetadata = 0
        for (c, answer) in zip(cases, answers) {
            let image = try images[c.path] ?? OVMFImage.load(path: c.path)
            images[c.path] = image
            if c.mode == .sevSNP && image.table.metadata == nil {
                // sev-snp-measure then hashes firmware and VMSAs only; QEMU refuses such a firmware
                // for SNP, and so do we.
                #expect(throws: FirmwareError.noSEVMetadata(path: c.path)) {
                    try SEVLaunchDigest.compute(image, mode: c.mode, vcpus: c.vcpus, vcpuType: VCPUType.named(c.type), guestFeatures: c.features)
                }
                noMetadata += 1
                continue
            }
            let ours = try SEVLaunchDigest.compute(image, mode: c.mode, vcpus: c.vcpus, vcpuType: VCPUType.named(c.type), guestFeatures: c.features)
            let theirs = answer["digest"] as? String
            #expect(hex(ours) == theirs, "\(c.path) \(c.mode.rawValue) \(c.vcpus) x \(c.type): oracle \(answer)")
            if hex(ours) == theirs { agreed += 1 }
        }
        return (agreed, noMetadata)
    }

    @Test(.enabled(if: hasSevSnpMeasure, "needs PyPI sev-snp-measure"), .enabled(if: !debianFirmware.isEmpty, "needs Debian's ovmf package"))
    func debianFirmwareAgreesWithSevSnpMeasure() throws {
        var cases: [Case] = []
        for path in debianFirmware {
            cases.append(Case(path: path, mode: .sev, vcpus: 1, type: "EPYC"))
            // Every type on the combined image, two types on the others.
            let types = path.hasSuffix("ovmf/OVMF.fd") ? Self.types : ["EPYC-v4", "EPYC-Milan"]
            for type in types {
                for vcpus in [1, 2, 4] {
                    cases.append(Case(path: path, mode: .sevES, vcpus: vcpus, type: type))
                    cases.append(Case(path: path, mode: .sevSNP, vcpus: vcpus, type: type))
                }
            }
        }
        let result = try compare(cases)
        print("firmware digests: \(result.agreed) of \(cases.count) Debian cases agree with sev-snp-measure; \(result.noMetadata) SNP cases refused (no SEV metadata)")
        #expect(result.agreed + result.noMetadata == cases.count)
    }

    @Test(.enabled(if: hasSevSnpMeasure, "needs PyPI sev-snp-measure"))
    func syntheticAmdSevImagesAgreeWithSevSnpMeasure() throws {
        let scratch = try Scratch()
        let variants: [(String, SyntheticOVMF)] = [
            ("amdsev", SyntheticOVMF()),
            ("other-reset", SyntheticOVMF(resetAddress: 0x0081_2344, seed: 2)),
            ("1mib", SyntheticOVMF(size: 1 << 20, secretBlock: (0x0080_C000, 0x1000), sections: [(0x0080_0000, 0x2000, 1), (0x0080_2000, 0x1000, 2), (0x0080_3000, 0x1000, 3)], seed: 3)),
        ]
        var cases: [Case] = []
        for (name, synthetic) in variants {
            let path = scratch.file("\(name).fd")
            try synthetic.write(to: path)
            cases.append(Case(path: path, mode: .sev, vcpus: 1, type: "EPYC"))
            for type in Self.types {
                for vcpus in [1, 2, 4] {
                    cases.append(Case(path: path, mode: .sevES, vcpus: vcpus, type: type))
                    cases.append(Case(path: path, mode: .sevSNP, vcpus: vcpus, type: type))
                }
            }
            cases.append(Case(path: path, mode: .sevSNP, vcpus: 3, type: "EPYC-Genoa", features: 0x21))
            cases.append(Case(path: path, mode: .sevSNP, vcpus: 1, type: "EPYC-Turin", features: 0x1))
        }
        let result = try compare(cases)
        print("firmware digests: \(result.agreed) of \(cases.count) synthetic AmdSev cases agree with sev-snp-measure")
        #expect(result.agreed == cases.count)
    }

    @Test(.enabled(if: hasSevSnpMeasure, "needs Python's hmac (runs through the oracle script)"))
    func hmacMeasurementAgreesWithPythonHMAC() throws {
        var rng = FirmwareTestRNG(seed: 42)
        func random(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8(truncatingIfNeeded: rng.next()) } }
        var inputs: [(tik: [UInt8], major: UInt8, minor: UInt8, build: UInt8, policy: UInt32, digest: [UInt8], nonce: [UInt8])] = []
        for i in 0..<50 {
            inputs.append((random(16), UInt8(i % 3), UInt8(truncatingIfNeeded: 17 + i), UInt8(truncatingIfNeeded: rng.next()),
                           [0x1, 0x5, 0x3, 0xFFFF_FFFF, 0][i % 5], random(32), random(16)))
        }
        let answers = try firmwareOracle(inputs.map {
            ["kind": "measurement", "tik": hex($0.tik), "apiMajor": Int($0.major), "apiMinor": Int($0.minor), "build": Int($0.build),
             "policy": Int($0.policy), "digest": hex($0.digest), "nonce": hex($0.nonce)]
        })
        for (input, answer) in zip(inputs, answers) {
            let mac = LaunchMeasurement.measurement(tik: SecretBytes(input.tik), apiMajor: input.major, apiMinor: input.minor, build: input.build,
                                                    policy: input.policy, digest: input.digest, nonce: input.nonce)
            #expect(hex(mac) == answer["measurement"] as? String)
            #expect(LaunchMeasurement.qemuLaunchMeasure(measurement: mac, nonce: input.nonce) == answer["launchMeasure"] as? String)
        }
    }
}
