import Foundation
import Testing
@testable import SEVImageKit

/// One SEV launch as it happened (on the firmware and TK a test calls "measured") and what each verifier is
/// then told: `sevimage launch` through a fake QMP guest (`Tests/Oracles/secret_fake_qmp.py`, which reports the
/// given LAUNCH_MEASURE blob and query-sev values), libvirt's `virt-qemu-sev-validate` offline through its
/// command line (--firmware, --tk, --measurement, --api-major, --api-minor, --build-id, --policy). The
/// measurement itself comes from `Tests/Oracles/sev_validate_harness.py measure` (Python's hmac over the
/// firmware's SHA-256 from coreutils), never from sevimage.
struct SEVLaunchBench {
    let scratch: Scratch
    /// The firmware and TK of the real launch, and another of each.
    let firmware: String, otherFirmware: String
    let tk: String, otherTK: String, otherTEKSameTIK: String
    let passphrase: String

    init(passphrase text: String = "cross-check passphrase") throws {
        scratch = try Scratch()
        firmware = scratch.file("OVMF.fd")
        otherFirmware = scratch.file("OTHER.fd")
        try SyntheticOVMF(seed: 1).write(to: firmware)
        try SyntheticOVMF(seed: 2).write(to: otherFirmware)
        tk = scratch.file("tk.bin")
        otherTK = scratch.file("other-tk.bin")
        otherTEKSameTIK = scratch.file("other-tek-tk.bin")
        let keys = try randomBytes(32)
        try writeSecretTestFile(tk, keys)
        try writeSecretTestFile(otherTK, try randomBytes(32))
        try writeSecretTestFile(otherTEKSameTIK, try randomBytes(16) + Array(keys[16..<32]))
        passphrase = scratch.file("passphrase")
        try writeSecretTestFile(passphrase, Array(text.utf8))
    }

    /// The LAUNCH_MEASURE blob (base64 of measurement and nonce) of a launch of `digest` under the measured TK.
    func launchMeasure(digest: String, policy: UInt32, apiMajor: Int, apiMinor: Int, build: Int) throws -> String {
        try runChecked(python3, [sevValidateHarness, "measure", "--digest", digest, "--tk-file", tk, "--policy", String(policy),
                                 "--api-major", String(apiMajor), "--api-minor", String(apiMinor), "--build", String(build)])
            .stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// A manifest linked to `firmware` the way `create --ovmf` links it (SEV, and SEV-ES for 2 EPYC vCPUs).
    func manifest(for firmware: String) throws -> String {
        let path = scratch.file("manifest-\(UUID().uuidString).json")
        let link = try FirmwareLink.make(ovmfPath: firmware, modes: ["sev", "sev-es"], vcpus: [2], vcpuType: "EPYC", allowNoSecretArea: false)
        try secretTestManifest(firmware: link).encoded().write(to: URL(fileURLWithPath: path))
        return path
    }

    struct LaunchOutcome {
        var run: RunResult
        var injections: [[String: Any]]
        var resumed: Bool
    }

    /// `sevimage launch` against a fake guest that reports `launchMeasure` and these query-sev values.
    func sevimageLaunch(launchMeasure: String, policy: UInt32, apiMajor: Int, apiMinor: Int, build: Int,
                        manifest: String, tk: String, arguments: [String] = []) throws -> LaunchOutcome {
        let socket = scratch.file("qmp-\(UUID().uuidString.prefix(8)).sock"), log = scratch.file("qmp-\(UUID().uuidString).log")
        let peer = Process()
        peer.executableURL = URL(fileURLWithPath: try ExternalTool(python3, package: "python3").resolve())
        peer.arguments = [repositoryRoot.path + "/Tests/Oracles/secret_fake_qmp.py", "--socket", socket, "--tk-file", self.tk,
                          "--launch-measure", launchMeasure, "--policy", String(policy), "--api-major", String(apiMajor),
                          "--api-minor", String(apiMinor), "--build", String(build), "--log", log]
        peer.standardError = FileHandle.nullDevice
        try peer.run()
        defer { if peer.isRunning { kill(peer.processIdentifier, SIGKILL) } }
        for _ in 0..<200 where !FileManager.default.fileExists(atPath: socket) { usleep(50_000) }
        let run = try sevimage(["launch", "--qmp", "unix:" + socket, "--manifest", manifest, "--passphrase-file", passphrase,
                                "--tk-file", tk, "--timeout", "20"] + arguments)
        for _ in 0..<100 where peer.isRunning { usleep(20_000) }
        if peer.isRunning { kill(peer.processIdentifier, SIGKILL) }
        peer.waitUntilExit()
        let commands = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        return LaunchOutcome(run: run, injections: commands.filter { $0["execute"] as? String == "sev-inject-launch-secret" },
                             resumed: commands.contains { $0["execute"] as? String == "cont" })
    }

    /// libvirt's validator, offline: exit 0 is "Looks good to me", 1 an attestation failure; anything else is a
    /// usage error of the harness and fails the test.
    func validator(launchMeasure: String, policy: UInt32, apiMajor: Int, apiMinor: Int, build: Int, firmware: String, tk: String,
                   extra: [String] = []) throws -> RunResult {
        try runProgram(systemPython, [sevValidator, "--firmware", firmware, "--tk", tk, "--measurement", launchMeasure,
                                      "--api-major", String(apiMajor), "--api-minor", String(apiMinor), "--build-id", String(build),
                                      "--policy", String(policy)] + extra)
    }
}

/// What `sevimage launch` accepts and refuses, against what libvirt's `virt-qemu-sev-validate` accepts and refuses,
/// on the same inputs; and the secret table each would inject for the same disk passphrase.
@Suite("launch agrees with virt-qemu-sev-validate", .serialized,
       .enabled(if: hasSEVValidator, "needs libvirt-clients-qemu's virt-qemu-sev-validate with python3-lxml and python3-cryptography"))
struct ValidatorCrossCheckTests {
    /// The query-sev values of a launch.
    struct Platform: Sendable, Equatable {
        var policy: UInt32 = 0x3
        var apiMajor = 0
        var apiMinor = 24
        var build = 15
    }

    enum Verdict: Sendable, Equatable, CustomStringConvertible {
        case accept
        /// sevimage's exit status and a phrase of its line; the validator's refusal is always exit 1.
        case refuse(Int32, String)
        var description: String {
            switch self {
            case .accept: "accept"
            case .refuse(let status, let phrase): "refuse (\(status): \(phrase))"
            }
        }
    }

    /// One row of the table: the launch as measured, what the verifiers are told, and what each must answer.
    struct Case: CustomStringConvertible, Sendable {
        var description: String
        var measured = Platform()
        /// What query-sev reports, and what the validator's --policy, --api-major, --api-minor, --build-id say.
        var reported: Platform?
        /// A byte of the 48-byte LAUNCH_MEASURE blob flipped on the way (0-31 measurement, 32-47 nonce).
        var flippedByte: Int?
        var otherFirmware = false
        var verifierTK: TK = .measured
        var sevimageArguments: [String] = []
        var sevimage: Verdict
        var validator: Verdict

        enum TK: Sendable { case measured, other, otherTEKSameTIK }
    }

    static let mismatch: Verdict = .refuse(4, "launch measurement mismatch")

    static let cases: [Case] = [
        Case(description: "the launch as measured", sevimage: .accept, validator: .accept),
        Case(description: "a flipped measurement byte", flippedByte: 5, sevimage: mismatch, validator: mismatch),
        Case(description: "a flipped nonce byte", flippedByte: 40, sevimage: mismatch, validator: mismatch),
        Case(description: "another policy reported (NOSEND set)", reported: Platform(policy: 0xB), sevimage: mismatch, validator: mismatch),
        Case(description: "another API minor reported", reported: Platform(apiMinor: 23), sevimage: mismatch, validator: mismatch),
        Case(description: "another API major reported", reported: Platform(apiMajor: 1), sevimage: mismatch, validator: mismatch),
        Case(description: "another build reported", reported: Platform(build: 16), sevimage: mismatch, validator: mismatch),
        Case(description: "another firmware expected", otherFirmware: true, sevimage: mismatch, validator: mismatch),
        Case(description: "another TIK", verifierTK: .other, sevimage: mismatch, validator: mismatch),
        // The TEK only wraps the secret: the measurement is the TIK's alone, and both verifiers agree it holds.
        Case(description: "another TEK with the same TIK", verifierTK: .otherTEKSameTIK, sevimage: .accept, validator: .accept),
        // Where they legitimately differ: the validator checks the measurement only; sevimage also refuses
        // policies that let the host read or share the guest's key, and API versions whose packet it cannot build.
        Case(description: "key sharing allowed (policy 0x1)", measured: Platform(policy: 0x1),
             sevimage: .refuse(4, "allows key sharing"), validator: .accept),
        Case(description: "key sharing allowed, --allow-key-sharing", measured: Platform(policy: 0x1),
             sevimageArguments: ["--allow-key-sharing"], sevimage: .accept, validator: .accept),
        Case(description: "debugging allowed (policy 0x2)", measured: Platform(policy: 0x2),
             sevimage: .refuse(4, "allows debugging"), validator: .accept),
        Case(description: "SEV API 0.16", measured: Platform(apiMinor: 16), sevimage: .refuse(4, "predates 0.17"), validator: .accept),
    ]

    @Test(arguments: cases)
    func bothVerifiersAnswerAsRecorded(_ item: Case) throws {
        let bench = try SEVLaunchBench()
        let digest = try coreutilsDigest("sha256sum", bench.firmware)
        let m = item.measured
        var blob = try #require(Data(base64Encoded: try bench.launchMeasure(digest: digest, policy: m.policy, apiMajor: m.apiMajor,
                                                                             apiMinor: m.apiMinor, build: m.build)))
        if let index = item.flippedByte { blob[index] ^= 0x01 }
        let launchMeasure = blob.base64EncodedString()
        let r = item.reported ?? m
        let firmware = item.otherFirmware ? bench.otherFirmware : bench.firmware
        let tk = switch item.verifierTK {
        case .measured: bench.tk
        case .other: bench.otherTK
        case .otherTEKSameTIK: bench.otherTEKSameTIK
        }

        let launch = try bench.sevimageLaunch(launchMeasure: launchMeasure, policy: r.policy, apiMajor: r.apiMajor, apiMinor: r.apiMinor,
                                              build: r.build, manifest: try bench.manifest(for: firmware), tk: tk,
                                              arguments: item.sevimageArguments)
        switch item.sevimage {
        case .accept:
            #expect(launch.run.status == 0, "sevimage: \(launch.run)")
            #expect(launch.injections.count == 1 && launch.resumed)
        case .refuse(let status, let phrase):
            #expect(launch.run.status == status && launch.run.stderr.contains(phrase), "sevimage: \(launch.run)")
            #expect(launch.injections.isEmpty && !launch.resumed)
        }

        let validated = try bench.validator(launchMeasure: launchMeasure, policy: r.policy, apiMajor: r.apiMajor, apiMinor: r.apiMinor,
                                            build: r.build, firmware: firmware, tk: tk)
        switch item.validator {
        case .accept:
            #expect(validated.status == 0 && validated.stdout.contains("OK: Looks good to me"), "validator: \(validated)")
        case .refuse:
            #expect(validated.status == 1 && validated.stderr.contains("Measurement does not match"), "validator: \(validated)")
        }
    }

    /// SEV-ES, two EPYC vCPUs: the launch digest covers the firmware and one VMSA page per vCPU. Measured from the
    /// pages PyPI's sev-snp-measure builds, sevimage accepts (its manifest's digest is its own computation) and so
    /// does the validator given those pages (--vmsa-cpu0/--vmsa-cpu1). The validator's own pages from the CPU
    /// signature (--cpu-family 23 --cpu-model 1 --cpu-stepping 2) differ from them in exactly two fields, MXCSR
    /// (0x408, 0x1F80) and the x87 control word (0x410, 0x037F), which libvirt 9.0's validator leaves zero, so
    /// it refuses that launch: the difference is recorded here, not hidden.
    @Test(.enabled(if: hasSevSnpMeasure, "the VMSA pages come from PyPI's sev-snp-measure"))
    func sevESAgreesGivenTheSameVMSAPages() throws {
        let bench = try SEVLaunchBench()
        let policy: UInt32 = 0x7
        let answers = try firmwareOracle([
            ["kind": "digest", "ovmf": bench.firmware, "mode": "sev-es", "vcpus": 2, "vcpuType": "EPYC"],
            ["kind": "vmsa", "ovmf": bench.firmware, "vcpuType": "EPYC", "out0": bench.scratch.file("vmsa0.bin"), "out1": bench.scratch.file("vmsa1.bin")],
        ])
        let digest = try #require(answers[0]["digest"] as? String)
        let launchMeasure = try bench.launchMeasure(digest: digest, policy: policy, apiMajor: 0, apiMinor: 24, build: 15)

        let launch = try bench.sevimageLaunch(launchMeasure: launchMeasure, policy: policy, apiMajor: 0, apiMinor: 24, build: 15,
                                              manifest: try bench.manifest(for: bench.firmware), tk: bench.tk, arguments: ["--json"])
        #expect(launch.run.status == 0 && launch.injections.count == 1, "\(launch.run)")
        #expect(try jsonObject(launch.run.stdoutData)["mode"] as? String == "sev-es")

        let given = try bench.validator(launchMeasure: launchMeasure, policy: policy, apiMajor: 0, apiMinor: 24, build: 15,
                                        firmware: bench.firmware, tk: bench.tk,
                                        extra: ["--num-cpus", "2", "--vmsa-cpu0", bench.scratch.file("vmsa0.bin"), "--vmsa-cpu1", bench.scratch.file("vmsa1.bin")])
        #expect(given.status == 0, "validator with sev-snp-measure's VMSAs: \(given)")
        let oneCPU = try bench.validator(launchMeasure: launchMeasure, policy: policy, apiMajor: 0, apiMinor: 24, build: 15,
                                         firmware: bench.firmware, tk: bench.tk, extra: ["--num-cpus", "1", "--vmsa-cpu0", bench.scratch.file("vmsa0.bin"),
                                                 // libvirt 9.0's validator multiplies the second page by 0 even for one vCPU: give it one.
                                                 "--vmsa-cpu1", bench.scratch.file("vmsa1.bin")])
        #expect(oneCPU.status == 1, "validator told of one vCPU: \(oneCPU)")

        let own = try bench.validator(launchMeasure: launchMeasure, policy: policy, apiMajor: 0, apiMinor: 24, build: 15,
                                      firmware: bench.firmware, tk: bench.tk,
                                      extra: ["--num-cpus", "2", "--cpu-family", "23", "--cpu-model", "1", "--cpu-stepping", "2"])
        #expect(own.status == 1, "validator with its own VMSAs: \(own)")
        _ = try runChecked(systemPython, [sevValidateHarness, "validator-vmsas", bench.firmware, "23", "1", "2",
                                          bench.scratch.file("own0.bin"), bench.scratch.file("own1.bin")])
        for index in 0..<2 {
            let theirs = [UInt8](try Data(contentsOf: URL(fileURLWithPath: bench.scratch.file("own\(index).bin"))))
            let measured = [UInt8](try Data(contentsOf: URL(fileURLWithPath: bench.scratch.file("vmsa\(index).bin"))))
            let differing = (0..<4096).filter { theirs[$0] != measured[$0] }
            #expect(differing == [0x408, 0x409, 0x410, 0x411], "vCPU \(index)")
            #expect(Array(measured[0x408..<0x40A]) == [0x80, 0x1F] && Array(measured[0x410..<0x412]) == [0x7F, 0x03])
            #expect(Array(theirs[0x408..<0x40A]) == [0, 0] && Array(theirs[0x410..<0x412]) == [0, 0])
        }
    }

    /// The packets: sevimage's (what `launch` injected) and the validator's (`--inject-secret luks-key:FILE
    /// --secret-header --secret-payload`, FILE holding the passphrase and the NUL GRUB needs, since the validator
    /// injects a file's bytes as they are), both decrypted with the TEK and their HMACs checked with the TIK by
    /// `sev_validate_harness.py decode-packet`. The tables agree field for field: header GUID, total length,
    /// one entry 736869e5-... ("luks-key" to the validator) of length 20 + passphrase + 1 holding the passphrase
    /// and its NUL. Padding: sevimage pads to the next multiple of 16 (none when the table is one already), the
    /// validator always adds 16 - length % 16 zero bytes, a whole block of 16 when the table is a multiple of
    /// 16. A 22-byte passphrase (table 63 bytes) gives identical 64-byte payloads; a 23-byte one (64 bytes) gives
    /// sevimage's 64 and the validator's 80, equal over the first 64, zeros after.
    @Test(arguments: [String(repeating: "x", count: 22), String(repeating: "y", count: 23)])
    func packetsDecodeToTheSameTable(_ passphrase: String) throws {
        let bench = try SEVLaunchBench(passphrase: passphrase)
        let digest = try coreutilsDigest("sha256sum", bench.firmware)
        let launchMeasure = try bench.launchMeasure(digest: digest, policy: 0x3, apiMajor: 0, apiMinor: 24, build: 15)
        let launch = try bench.sevimageLaunch(launchMeasure: launchMeasure, policy: 0x3, apiMajor: 0, apiMinor: 24, build: 15,
                                              manifest: try bench.manifest(for: bench.firmware), tk: bench.tk)
        #expect(launch.run.status == 0, "\(launch.run)")
        let injected = try #require(launch.injections.first?["arguments"] as? [String: Any])
        let ours = try decode(bench, launchMeasure: launchMeasure, header: try #require(injected["packet-header"] as? String),
                              secret: try #require(injected["secret"] as? String))

        let withNUL = bench.scratch.file("luks-key")
        try writeSecretTestFile(withNUL, Array(passphrase.utf8) + [0])
        let header = bench.scratch.file("header.b64"), payload = bench.scratch.file("payload.b64")
        let validated = try bench.validator(launchMeasure: launchMeasure, policy: 0x3, apiMajor: 0, apiMinor: 24, build: 15,
                                            firmware: bench.firmware, tk: bench.tk,
                                            extra: ["--inject-secret", "luks-key:" + withNUL, "--secret-header", header, "--secret-payload", payload])
        #expect(validated.status == 0 && validated.stdout.contains("OK: Injected 1 secrets"), "\(validated)")
        let theirs = try decode(bench, launchMeasure: launchMeasure, header: "@" + header, secret: "@" + payload)

        for packet in [ours, theirs] {
            #expect(packet["hmacValid"] as? Bool == true && packet["headerLength"] as? Int == 52 && packet["flags"] as? Int == 0)
        }
        let ourTable = try #require(ours["table"] as? [String: Any]), theirTable = try #require(theirs["table"] as? [String: Any])
        let length = 20 + 20 + passphrase.utf8.count + 1
        for table in [ourTable, theirTable] {
            #expect(table["guid"] as? String == "1e74f542-71dd-4d66-963e-ef4287ff173b")
            #expect(table["totalLength"] as? Int == length && table["paddingIsZero"] as? Bool == true && table["error"] == nil)
            let entries = try #require(table["entries"] as? [[String: Any]])
            #expect(entries.count == 1)
            #expect(entries.first?["guid"] as? String == "736869e5-84f0-4973-92ec-06879ce3da0b")
            #expect(entries.first?["length"] as? Int == 20 + passphrase.utf8.count + 1)
            #expect(entries.first?["dataHex"] as? String == hex(Array(passphrase.utf8) + [0]))
        }
        let ourPlain = try #require(ours["plaintextHex"] as? String), theirPlain = try #require(theirs["plaintextHex"] as? String)
        let padded = (length + 15) & ~15
        #expect(ourPlain.count == 2 * padded && ourTable["padding"] as? Int == padded - length)
        if length % 16 == 0 {
            #expect(theirPlain.count == 2 * (length + 16) && theirTable["padding"] as? Int == 16)
            #expect(theirPlain.hasPrefix(ourPlain) && theirPlain.dropFirst(ourPlain.count).allSatisfy { $0 == "0" })
        } else {
            #expect(theirPlain == ourPlain)
        }
    }

    func decode(_ bench: SEVLaunchBench, launchMeasure: String, header: String, secret: String) throws -> [String: Any] {
        try jsonObject(try runChecked(python3, [sevValidateHarness, "decode-packet", "--tk-file", bench.tk, "--launch-measure", launchMeasure,
                                                "--header", header, "--secret", secret]).stdoutData)
    }
}
