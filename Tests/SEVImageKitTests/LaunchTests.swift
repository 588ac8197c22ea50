import Foundation
import Testing
@testable import SEVImageKit

/// A manifest for launch tests: only the firmware section matters.
func secretTestManifest(firmware: FirmwareLink?) -> Manifest {
    Manifest(tool: .init(), createdAt: "2026-01-01T00:00:00Z",
             image: .init(file: "test.qcow2", format: "qcow2", virtualSize: 1 << 30, blockSHA256: String(repeating: "0", count: 64),
                          diskGUID: "00000000-0000-4000-8000-000000000000"),
             partitions: [],
             luks: .init(uuid: "00000000-0000-4000-8000-000000000001", version: 2, cipher: "aes-xts-plain64", keySizeBits: 512,
                         sectorSize: 4096, dataOffset: 16 << 20, keyslots: [], encryptedExtent: "used-blocks"),
             secret: .init(tableGUID: KnownGUID.secretTableHeader.description, entryGUID: KnownGUID.diskPassphraseEntry.description,
                           passphraseFile: "test.passphrase"),
             profile: "default", firmware: firmware, reproducible: .init(sourceDateEpoch: nil, seeded: false))
}

func secretTestFirmware(digests: [FirmwareLink.LaunchDigest], area: FirmwareLink.SecretArea? = .init(gpa: 0x80B000, size: 3072)) -> FirmwareLink {
    FirmwareLink(file: "OVMF.fd", size: 4 << 20, sha256: String(repeating: "a", count: 64), sha384: String(repeating: "b", count: 96),
                 secretArea: area, launchDigests: digests)
}

/// `sevimage launch` against `Tests/Oracles/secret_fake_qmp.py`, a QMP peer playing a paused SEV guest.
@Suite("Launch against a fake QMP guest", .enabled(if: hasTool("python3"), "the fake QMP peer is a Python script"))
struct LaunchTests {
    static let rightDigest = hex(Crypto.sha256(Array("the right OVMF.fd".utf8)))
    static let wrongDigest = hex(Crypto.sha256(Array("some other OVMF.fd".utf8)))

    struct Outcome {
        var run: RunResult
        var commands: [[String: Any]]
        var names: [String] { commands.compactMap { $0["execute"] as? String } }
        var injections: [[String: Any]] { commands.filter { $0["execute"] as? String == "sev-inject-launch-secret" } }
    }

    /// Starts the fake peer, runs `sevimage launch` against it, and returns what the peer saw.
    func launch(scenario: String = "ok", guestDigest: String = rightDigest, policy: Int = 3,
                manifestDigests: [FirmwareLink.LaunchDigest] = [.init(mode: "sev", vcpus: nil, vcpuType: nil, digest: rightDigest)],
                firmware: FirmwareLink?? = nil, extraArguments: [String] = [], tcp: Bool = false) throws -> Outcome {
        let scratch = try Scratch()
        let pw = scratch.file("pw"), tk = scratch.file("tk"), manifestPath = scratch.file("m.json"), log = scratch.file("log")
        try writeSecretTestFile(pw, Array("launch test passphrase\n".utf8))
        try writeSecretTestFile(tk, try randomBytes(32))
        let link = firmware ?? secretTestFirmware(digests: manifestDigests)
        try secretTestManifest(firmware: link).encoded().write(to: URL(fileURLWithPath: manifestPath))
        let socket = scratch.file("qmp.sock"), portFile = scratch.file("port")
        let peer = Process()
        peer.executableURL = URL(fileURLWithPath: try ExternalTool(python3, package: "python3").resolve())
        peer.arguments = [repositoryRoot.path + "/Tests/Oracles/secret_fake_qmp.py", "--tk-file", tk, "--digest", guestDigest,
                          "--policy", String(policy), "--scenario", scenario, "--log", log]
            + (tcp ? ["--tcp-port-file", portFile] : ["--socket", socket])
        let peerErr = Pipe()
        peer.standardError = peerErr
        try peer.run()
        // SIGKILL: the test process may hand SIGTERM down ignored.
        defer { if peer.isRunning { kill(peer.processIdentifier, SIGKILL) } }
        let waitFor = tcp ? portFile : socket
        for _ in 0..<200 where !FileManager.default.fileExists(atPath: waitFor) { usleep(50_000) }
        let address = tcp ? "127.0.0.1:" + (try String(contentsOfFile: portFile, encoding: .utf8)) : "unix:" + socket
        let run = try sevimage(["launch", "--qmp", address, "--manifest", manifestPath, "--passphrase-file", pw, "--tk-file", tk,
                                "--timeout", "20", "--json"] + extraArguments)
        // The peer ends when sevimage hangs up; if sevimage never connected, stop it.
        for _ in 0..<100 where peer.isRunning { usleep(20_000) }
        if peer.isRunning { kill(peer.processIdentifier, SIGKILL) }
        peer.waitUntilExit()
        let lines = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        let commands = lines.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        return Outcome(run: run, commands: commands)
    }

    func expectedTableHex() throws -> String {
        hex(secretBytesArray(try SecretTable.build(passphrase: Passphrase(SecretBytes(Array("launch test passphrase".utf8))))))
    }

    @Test func rightFirmwareGetsTheSecretOnceThenCont() throws {
        let outcome = try launch()
        #expect(outcome.run.status == 0, "\(outcome.run)")
        #expect(outcome.injections.count == 1)
        let injection = try #require(outcome.injections.first)
        #expect(injection["hmacValid"] as? Bool == true)
        #expect(injection["headerLength"] as? Int == 52)
        #expect(injection["tableHex"] as? String == (try expectedTableHex()))
        #expect(((injection["arguments"] as? [String: Any])?["gpa"] as? NSNumber)?.uint64Value == 0x80B000)
        let names = outcome.names
        let inject = try #require(names.firstIndex(of: "sev-inject-launch-secret"))
        let cont = try #require(names.firstIndex(of: "cont"))
        #expect(inject < cont && names.filter { $0 == "cont" }.count == 1)
        let result = try #require(try JSONSerialization.jsonObject(with: outcome.run.stdoutData) as? [String: Any])
        #expect(result["injected"] as? Bool == true && result["mode"] as? String == "sev")
        #expect(!outcome.run.stdout.contains("launch test passphrase") && !outcome.run.stderr.contains("launch test passphrase"))
    }

    @Test func tcpAddressWorks() throws {
        let outcome = try launch(tcp: true)
        #expect(outcome.run.status == 0, "\(outcome.run)")
        #expect(outcome.injections.count == 1 && outcome.names.last == "cont")
    }

    @Test func sevESPolicyUsesTheSEVESDigest() throws {
        let outcome = try launch(policy: 7, manifestDigests: [
            .init(mode: "sev", vcpus: nil, vcpuType: nil, digest: Self.rightDigest),
            .init(mode: "sev-es", vcpus: 1, vcpuType: "EPYC", digest: Self.wrongDigest),
            .init(mode: "sev-es", vcpus: 2, vcpuType: "EPYC", digest: Self.rightDigest),
        ])
        #expect(outcome.run.status == 0, "\(outcome.run)")
        let result = try #require(try JSONSerialization.jsonObject(with: outcome.run.stdoutData) as? [String: Any])
        #expect(result["mode"] as? String == "sev-es" && result["vcpus"] as? Int == 2)
        #expect(outcome.injections.count == 1)
    }

    @Test func wrongFirmwareDigestInjectsNothing() throws {
        let outcome = try launch(guestDigest: Self.wrongDigest)
        #expect(outcome.run.status == ExitStatus.verificationFailed.rawValue, "\(outcome.run)")
        #expect(outcome.run.stderr.contains("launch measurement mismatch") && outcome.run.stderr.contains("nothing was injected"))
        #expect(outcome.injections.isEmpty && !outcome.names.contains("cont"))
        // --json: the error object, with the line stderr got (README, "Exit codes").
        let object = try #require(try JSONSerialization.jsonObject(with: outcome.run.stdoutData) as? [String: Any])
        let error = try #require(object["error"] as? [String: Any], "\(outcome.run.stdout)")
        #expect(error["exitStatus"] as? Int == 4 && (error["message"] as? String).map { outcome.run.stderr.contains($0) } == true)
    }

    @Test func wrongNonceInjectsNothing() throws {
        let outcome = try launch(scenario: "wrong-nonce")
        #expect(outcome.run.status == ExitStatus.verificationFailed.rawValue, "\(outcome.run)")
        #expect(outcome.run.stderr.contains("launch measurement mismatch"))
        #expect(outcome.injections.isEmpty && !outcome.names.contains("cont"))
    }

    @Test func debugPolicyIsRefusedUnlessAllowed() throws {
        let refused = try launch(policy: 2)
        #expect(refused.run.status == ExitStatus.verificationFailed.rawValue, "\(refused.run)")
        #expect(refused.run.stderr.contains("allows debugging"))
        #expect(refused.injections.isEmpty && !refused.names.contains("cont"))
        #expect(!refused.names.contains("query-sev-launch-measure"))

        let sharing = try launch(policy: 1)
        #expect(sharing.run.status == ExitStatus.verificationFailed.rawValue && sharing.run.stderr.contains("key sharing"), "\(sharing.run)")
        #expect(sharing.injections.isEmpty)

        let allowed = try launch(policy: 2, extraArguments: ["--allow-debug"])
        #expect(allowed.run.status == 0, "\(allowed.run)")
        #expect(allowed.injections.count == 1)
    }

    @Test func closedSocketInjectsNothing() throws {
        let outcome = try launch(scenario: "closed")
        #expect(outcome.run.status == ExitStatus.failure.rawValue, "\(outcome.run)")
        #expect(outcome.run.stderr.contains("closed the QMP connection"))
        #expect(outcome.injections.isEmpty)
    }

    @Test func malformedReplyInjectsNothing() throws {
        let outcome = try launch(scenario: "malformed")
        #expect(outcome.run.status == ExitStatus.failure.rawValue, "\(outcome.run)")
        #expect(outcome.run.stderr.contains("malformed QMP message"))
        #expect(outcome.injections.isEmpty && !outcome.names.contains("cont"))
    }

    @Test func qemuErrorReplyInjectsNothing() throws {
        let outcome = try launch(scenario: "measure-error")
        #expect(outcome.run.status == ExitStatus.failure.rawValue, "\(outcome.run)")
        #expect(outcome.run.stderr.contains("QEMU refused query-sev-launch-measure: GenericError: SEV launch measurement is not available"))
        #expect(outcome.injections.isEmpty && !outcome.names.contains("cont"))
    }

    @Test func failedInjectionDoesNotResume() throws {
        let outcome = try launch(scenario: "inject-error")
        #expect(outcome.run.status == ExitStatus.failure.rawValue, "\(outcome.run)")
        #expect(outcome.run.stderr.contains("QEMU refused sev-inject-launch-secret"))
        #expect(!outcome.names.contains("cont"))
    }

    @Test func manifestWithoutFirmwareOrSecretAreaIsRefusedBeforeConnecting() throws {
        let noLink = try launch(firmware: .some(nil))
        #expect(noLink.run.status == ExitStatus.invalidInput.rawValue && noLink.run.stderr.contains("not linked to a firmware"), "\(noLink.run)")
        #expect(noLink.commands.isEmpty)
        let noArea = try launch(firmware: secretTestFirmware(digests: [], area: nil))
        #expect(noArea.run.status == ExitStatus.invalidInput.rawValue && noArea.run.stderr.contains("no SEV secret area"), "\(noArea.run)")
        #expect(noArea.commands.isEmpty)
    }
}
