import Foundation
import Testing
@testable import SEVImageKit

@Suite(.serialized) struct FirmwareCLITests {
    func json(_ result: RunResult) throws -> [String: Any] {
        try #require(JSONSerialization.jsonObject(with: result.stdoutData) as? [String: Any], "\(result)")
    }

    @Test func inspectSyntheticAmdSevImage() throws {
        let scratch = try Scratch()
        let path = scratch.file("OVMF.fd")
        try SyntheticOVMF().write(to: path)
        let result = try sevimage(["firmware", "inspect", path, "--json"])
        #expect(result.status == 0, "\(result)")
        let object = try json(result)
        #expect(object["size"] as? Int == 256 * 1024)
        #expect(object["sha256"] as? String == hex(Crypto.sha256(SyntheticOVMF().build())))
        #expect(object["sha384"] as? String == hex(Crypto.sha384(SyntheticOVMF().build())))
        #expect((object["entries"] as? [Any])?.count == 6)
        let secret = try #require(object["secretArea"] as? [String: Any])
        #expect(secret["base"] as? Int == 0x80B000 && secret["size"] as? Int == 0xC00)
        #expect(object["resetAddress"] as? Int == 0x80B004)
        #expect(object["tdxMetadata"] as? Bool == true)
        let sections = try #require((object["sevMetadata"] as? [String: Any])?["sections"] as? [[String: Any]])
        #expect(sections.map { $0["typeName"] as? String } == ["snp-sec-mem", "snp-sec-mem", "snp-secrets", "cpuid", "snp-kernel-hashes", "svsm-caa", "snp-sec-mem"])
        let verdict = try #require(object["verdict"] as? [String: Any])
        #expect(verdict["encryptedBoot"] as? Bool == true)
        #expect(verdict["secretTableCapacity"] as? Int == 3072)

        let human = try sevimage(["firmware", "inspect", path])
        #expect(human.status == 0 && human.stdout.isEmpty)
        #expect(human.stderr.contains("usable for encrypted boot"))
        #expect(human.stderr.split(separator: "\n").count <= 30)
    }

    @Test(.enabled(if: FileManager.default.fileExists(atPath: "/usr/share/ovmf/OVMF.fd"), "needs Debian's ovmf package"))
    func inspectDebianOVMF() throws {
        let result = try sevimage(["firmware", "inspect", "/usr/share/ovmf/OVMF.fd"])
        #expect(result.status == 0, "\(result)")
        #expect(result.stderr.contains("not an AmdSev build"))
        #expect(result.stderr.contains("sev-es reset:    0x0080b004"))
        #expect(result.stderr.split(separator: "\n").count <= 30)
    }

    @Test(.enabled(if: hasSevSnpMeasure, "needs PyPI sev-snp-measure"))
    func measureWithTIKAgreesWithPython() throws {
        let scratch = try Scratch()
        let synthetic = scratch.file("amdsev.fd")
        try SyntheticOVMF().write(to: synthetic)
        let tik = scratch.file("tik.bin"), tk = scratch.file("tk.bin")
        let tikBytes: [UInt8] = (0..<16).map { UInt8($0 * 7 + 1) }
        try Data(tikBytes).write(to: URL(fileURLWithPath: tik))
        try Data([UInt8](repeating: 0xEE, count: 16) + tikBytes).write(to: URL(fileURLWithPath: tk))
        let nonce: [UInt8] = (0..<16).map { UInt8(255 - $0) }
        var firmware = [synthetic]
        if FileManager.default.fileExists(atPath: "/usr/share/ovmf/OVMF.fd") { firmware.append("/usr/share/ovmf/OVMF.fd") }

        struct Run { var args: [String]; var digestJob: [String: Any]; var policy: Int }
        var runs: [Run] = []
        for path in firmware {
            runs.append(Run(args: [path, "--mode", "sev", "--policy", "0x1", "--tik-file", tik, "--nonce", hex(nonce),
                                   "--api-major", "1", "--api-minor", "55", "--build", "21"],
                            digestJob: ["kind": "digest", "ovmf": path, "mode": "sev"], policy: 1))
            runs.append(Run(args: [path, "--mode", "sev-es", "--vcpus", "4", "--vcpu-type", "EPYC-Rome", "--policy", "5", "--tik-file", tk,
                                   "--nonce", Data(nonce).base64EncodedString(), "--api-major", "1", "--api-minor", "51", "--build", "3"],
                            digestJob: ["kind": "digest", "ovmf": path, "mode": "sev-es", "vcpus": 4, "vcpuType": "EPYC-Rome"], policy: 5))
        }
        let digests = try firmwareOracle(runs.map(\.digestJob))
        var outputs: [[String: Any]] = []
        for run in runs {
            let result = try sevimage(["firmware", "measure"] + run.args + ["--json"])
            #expect(result.status == 0 && result.stderr.isEmpty, "\(result)")
            outputs.append(try json(result))
        }
        let api: [(Int, Int, Int)] = [(1, 55, 21), (1, 51, 3)]
        let macs = try firmwareOracle(zip(runs.indices, digests).map { index, answer in
            let (major, minor, build) = api[index % 2]
            return ["kind": "measurement", "tik": hex(tikBytes), "apiMajor": major, "apiMinor": minor, "build": build,
                    "policy": runs[index].policy, "digest": answer["digest"] as? String ?? "", "nonce": hex(nonce)]
        })
        for (index, output) in outputs.enumerated() {
            #expect(output["digest"] as? String == digests[index]["digest"] as? String)
            let measurement = try #require(output["measurement"] as? [String: Any])
            #expect(measurement["measurement"] as? String == macs[index]["measurement"] as? String)
            #expect(measurement["launchMeasure"] as? String == macs[index]["launchMeasure"] as? String)
        }
    }

    @Test func measureSNPReportsItsParameters() throws {
        let scratch = try Scratch()
        let path = scratch.file("amdsev.fd")
        try SyntheticOVMF().write(to: path)
        let result = try sevimage(["firmware", "measure", path, "--mode", "sev-snp", "--vcpus", "2", "--vcpu-type", "epyc-milan",
                                   "--guest-features", "0x21", "--policy", "0x30000", "--json"])
        #expect(result.status == 0, "\(result)")
        let object = try json(result)
        #expect(object["vcpuType"] as? String == "EPYC-Milan")
        #expect(object["cpuSignature"] as? String == "0xa00f11")
        #expect(object["guestFeatures"] as? String == "0x21")
        #expect((object["digest"] as? String)?.count == 96)
        let image = try OVMFImage(bytes: SyntheticOVMF().build(), path: path)
        #expect(object["digest"] as? String == hex(try SEVLaunchDigest.compute(image, mode: .sevSNP, vcpus: 2, vcpuType: VCPUType.named("EPYC-Milan"), guestFeatures: 0x21)))
    }

    struct BadRun: CustomTestStringConvertible, Sendable {
        var name: String
        var args: @Sendable (String) -> [String]
        /// Written to the file given to the command; nil to leave the path missing.
        var bytes: (@Sendable () -> [UInt8])?
        var message: String
        var testDescription: String { name }
    }

    static let badRuns: [BadRun] = [
        BadRun(name: "missing file", args: { ["firmware", "inspect", $0] }, bytes: nil, message: "no such file or directory"),
        BadRun(name: "empty file", args: { ["firmware", "inspect", $0] }, bytes: { [] }, message: "too small to hold the ovmf table footer"),
        BadRun(name: "truncated", args: { ["firmware", "inspect", $0] }, bytes: { Array(SyntheticOVMF().build().prefix(200_000)) }, message: "looks truncated"),
        BadRun(name: "no footer", args: { ["firmware", "measure", $0, "--mode", "sev"] }, bytes: { [UInt8](repeating: 0xFF, count: 8192) }, message: "has no ovmf guided table"),
        BadRun(name: "table length", args: { ["firmware", "inspect", $0] }, bytes: { ovmfPatched(SyntheticOVMF().build(), at: 256 * 1024 - 50, ovmfLE16(17)) }, message: "the ovmf table claims 17 bytes"),
        BadRun(name: "entry length", args: { ["firmware", "inspect", $0, "--json"] }, bytes: { ovmfPatched(SyntheticOVMF().build(), at: 256 * 1024 - 68, ovmfLE16(2)) }, message: "claims 2 bytes"),
        BadRun(name: "metadata offset", args: { ["firmware", "inspect", $0] }, bytes: { SyntheticOVMF(metadataOffset: nil).withEntry(KnownGUID.sevMetadata, ovmfLE32(0x7000_0000)) }, message: "points outside the"),
        BadRun(name: "section type", args: { ["firmware", "inspect", $0] }, bytes: { ovmfPatched(SyntheticOVMF().build(), at: 256 * 1024 - 0x1000 + 16 + 8, ovmfLE32(9)) }, message: "unknown type 9"),
        BadRun(name: "unknown vcpu type", args: { ["firmware", "measure", $0, "--mode", "sev-es", "--vcpu-type", "Skylake-Server"] }, bytes: { SyntheticOVMF().build() }, message: "known types: epyc, epyc-v1"),
        BadRun(name: "no vcpu type", args: { ["firmware", "measure", $0, "--mode", "sev-snp"] }, bytes: { SyntheticOVMF().build() }, message: "needs --vcpu-type"),
        BadRun(name: "unknown mode", args: { ["firmware", "measure", $0, "--mode", "tdx"] }, bytes: { SyntheticOVMF().build() }, message: "unknown launch mode tdx"),
        BadRun(name: "zero vcpus", args: { ["firmware", "measure", $0, "--mode", "sev-es", "--vcpus", "0", "--vcpu-type", "EPYC"] }, bytes: { SyntheticOVMF().build() }, message: "vcpu count 0"),
        BadRun(name: "no reset block", args: { ["firmware", "measure", $0, "--mode", "sev-es", "--vcpu-type", "EPYC"] }, bytes: { SyntheticOVMF(resetAddress: nil).build() }, message: "no usable sev-es reset block"),
        BadRun(name: "no snp metadata", args: { ["firmware", "measure", $0, "--mode", "sev-snp", "--vcpu-type", "EPYC"] }, bytes: { SyntheticOVMF(metadataOffset: nil).build() }, message: "cannot launch under sev-snp"),
        BadRun(name: "es policy", args: { ["firmware", "measure", $0, "--mode", "sev-es", "--vcpu-type", "EPYC", "--policy", "1"] }, bytes: { SyntheticOVMF().build() }, message: "lacks the sev-es bit"),
        BadRun(name: "partial measurement inputs", args: { ["firmware", "measure", $0, "--mode", "sev", "--nonce", "AAAAAAAAAAAAAAAAAAAAAA=="] }, bytes: { SyntheticOVMF().build() }, message: "needs all of --tik-file"),
        BadRun(name: "bad nonce", args: { ["firmware", "measure", $0, "--mode", "sev", "--policy", "1", "--tik-file", $0, "--nonce", "xyz", "--api-major", "1", "--api-minor", "2", "--build", "3"] },
               bytes: { SyntheticOVMF().build() }, message: "neither 16 bytes of base64"),
        BadRun(name: "bad tik", args: { ["firmware", "measure", $0, "--mode", "sev", "--policy", "1", "--tik-file", $0, "--nonce", String(repeating: "ab", count: 16), "--api-major", "1", "--api-minor", "2", "--build", "3"] },
               bytes: { SyntheticOVMF().build() }, message: "a tik file is 16 bytes"),
        BadRun(name: "snp measurement", args: { ["firmware", "measure", $0, "--mode", "sev-snp", "--vcpu-type", "EPYC", "--tik-file", $0] }, bytes: { SyntheticOVMF().build() }, message: "does not apply to --mode sev-snp"),
        BadRun(name: "features for sev", args: { ["firmware", "measure", $0, "--mode", "sev", "--guest-features", "1"] }, bytes: { SyntheticOVMF().build() }, message: "does not apply to --mode sev"),
    ]

    @Test(arguments: badRuns)
    func badInputGivesOneLineAndNonZeroExit(_ bad: BadRun) throws {
        let scratch = try Scratch()
        let path = scratch.file("OVMF.fd")
        if let bytes = bad.bytes { try Data(bytes()).write(to: URL(fileURLWithPath: path)) }
        let result = try sevimage(bad.args(path))
        #expect(result.status == ExitStatus.invalidInput.rawValue, "\(result)")
        // Nothing on stdout, or with --json the error object (README, "Exit codes").
        #expect(result.stdout.isEmpty || (bad.args(path).contains("--json") && result.stdout.hasPrefix("{\n  \"error\" : {")), "\(result)")
        let lines = result.stderr.split(separator: "\n")
        #expect(lines.count == 1, "\(result)")
        #expect(result.stderr.lowercased().contains(bad.message), "\(result)")
        #expect(!result.stderr.contains("Fatal error"))
    }
}
