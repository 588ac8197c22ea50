import Foundation
import Testing
@testable import SEVImageKit

@Suite("QMP client")
struct QMPClientTests {
    @Test func addresses() throws {
        #expect(try QMPAddress("unix:/run/q.sock") == .unix("/run/q.sock"))
        #expect(try QMPAddress("localhost:4444") == .tcp(host: "localhost", port: 4444))
        #expect(try QMPAddress("tcp:127.0.0.1:5") == .tcp(host: "127.0.0.1", port: 5))
        #expect(try QMPAddress("[::1]:4444") == .tcp(host: "::1", port: 4444))
        for bad in ["unix:", "/run/q.sock", "host:", "host:0", "host:99999", ":44"] {
            #expect(throws: GeneralError.self) { try QMPAddress(bad) }
        }
    }

    @Test func connectingToNothingIsAClearError() throws {
        let scratch = try Scratch()
        do {
            _ = try QMPClient(address: .unix(scratch.file("absent.sock")), timeout: 2)
            Issue.record("connected to a missing socket")
        } catch let error as QMPError {
            #expect(error.description.hasPrefix("cannot connect to QMP at unix:"))
        }
    }

    /// The generic part (greeting, qmp_capabilities, query-status, cont, an error reply) against a real QEMU.
    @Test(.enabled(if: hasTool("qemu-system-x86_64"), "needs qemu-system-x86_64 (apt qemu-system-x86)"))
    func realQEMU() throws {
        let scratch = try Scratch()
        let socket = scratch.file("qmp.sock")
        let qemu = Process()
        qemu.executableURL = URL(fileURLWithPath: try ExternalTool.qemuSystem.resolve())
        qemu.arguments = ["-S", "-machine", "q35,accel=tcg", "-display", "none", "-nodefaults", "-m", "64",
                          "-qmp", "unix:\(socket),server=on,wait=off"]
        qemu.standardOutput = FileHandle.nullDevice
        qemu.standardError = FileHandle.nullDevice
        try qemu.run()
        defer {
            if qemu.isRunning { kill(qemu.processIdentifier, SIGKILL) }
            qemu.waitUntilExit()
        }
        for _ in 0..<200 where !FileManager.default.fileExists(atPath: socket) { usleep(50_000) }
        let client = try QMPClient(address: .unix(socket), timeout: 20)
        defer { client.close() }
        #expect(client.qemuVersion != nil)
        let before = try client.queryStatus()
        #expect(before == QMPStatus(running: false, status: "prelaunch"))
        // No SEV under TCG: QEMU answers query-sev with an error or with enabled false.
        do {
            let sev = try client.querySEV()
            #expect(sev.enabled == false)
        } catch let error as QMPError {
            guard case .commandFailed("query-sev", _, _) = error else { throw error }
        }
        do {
            try client.execute("no-such-command")
            Issue.record("an unknown command succeeded")
        } catch let error as QMPError {
            guard case .commandFailed(_, "CommandNotFound", _) = error else { throw error }
        }
        try client.cont()
        let after = try client.queryStatus()
        #expect(after.running && after.status == "running")
        try client.execute("quit")
    }
}
