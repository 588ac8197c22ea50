import Foundation

/// One running `qemu-system-x86_64`, its serial console on pipes: stdin carries keystrokes, stdout the
/// console, stderr QEMU's own messages.
///
/// The process is registered with `ChildProcesses` (a signal stops it) and stopped when this value is
/// released, so no exit path leaves a VM behind. Not `Sendable`: one boot loop owns it.
final class QEMUProcess {
    private let process = Process()
    private let stdinPipe = Pipe()
    private let stdoutPipe = Pipe()
    private let stderrPipe = Pipe()
    private var stopped = false

    var consoleDescriptor: Int32 { stdoutPipe.fileHandleForReading.fileDescriptor }
    var messagesDescriptor: Int32 { stderrPipe.fileHandleForReading.fileDescriptor }
    var processIdentifier: Int32 { process.processIdentifier }

    /// Starts QEMU. Its argv and environment never carry a secret: keystrokes go through `type(_:)`.
    init(executable: String, arguments: [String]) throws {
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        var environment = ProcessInfo.processInfo.environment
        environment["LC_ALL"] = "C"
        process.environment = environment
        process.standardInput = stdinPipe
        process.standardOutput = stdoutPipe
        process.standardError = stderrPipe
        // Writing to a QEMU that just exited must fail with EPIPE, not kill us with SIGPIPE.
        signal(SIGPIPE, SIG_IGN)
        try process.run()
        ChildProcesses.shared.add(process.processIdentifier)
    }

    deinit {
        stop()
    }

    var isRunning: Bool { process.isRunning }

    /// Sends bytes to the serial console. Returns false if QEMU no longer reads them.
    @discardableResult
    func type(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let base = bytes.baseAddress else { return true }
        let fd = stdinPipe.fileHandleForWriting.fileDescriptor
        var offset = 0
        while offset < bytes.count {
            let n = Foundation.write(fd, base + offset, bytes.count - offset)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return false }
            offset += n
        }
        return true
    }

    /// Reads what is available on `descriptor` (after poll said so); empty at end of file.
    func read(_ descriptor: Int32) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { Foundation.read(descriptor, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            return n > 0 ? Array(buffer[0..<n]) : []
        }
    }

    /// Waits for QEMU to exit by itself and returns its status.
    func waitForExit() -> Int32 {
        process.waitUntilExit()
        finish()
        return process.terminationStatus
    }

    /// SIGTERM, then SIGKILL if QEMU is still there two seconds later; waits for it either way.
    func stop() {
        guard !stopped else { return }
        if process.isRunning {
            kill(process.processIdentifier, SIGTERM)
            let deadline = ContinuousClock.now + .seconds(2)
            while process.isRunning && ContinuousClock.now < deadline { usleep(20_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        }
        process.waitUntilExit()
        finish()
    }

    private func finish() {
        guard !stopped else { return }
        stopped = true
        ChildProcesses.shared.remove(process.processIdentifier)
        try? stdinPipe.fileHandleForWriting.close()
    }
}
