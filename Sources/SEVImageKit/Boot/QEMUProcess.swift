import Foundation

/// One running `qemu-system-x86_64`, its serial console on pipes: stdin carries keystrokes, stdout the
/// console, stderr QEMU's own messages.
///
/// Started with `posix_spawn` rather than Foundation's `Process`, because the child must not inherit
/// our signal dispositions: sevimage ignores SIGINT/SIGTERM/SIGHUP (dispatch sources handle them) and
/// SIGPIPE, and a QEMU that inherited "ignore SIGTERM" would survive the signal handler's SIGTERM
/// if it arrived before QEMU installed its own handlers. The child gets default dispositions and an
/// empty signal mask. The process is registered with `ChildProcesses` (a signal stops it) and stopped
/// when this value is released, so no exit path leaves a VM behind. Not `Sendable`: one boot loop owns it.
final class QEMUProcess {
    let processIdentifier: pid_t
    /// Our ends of the pipes.
    private let keyboard: Int32
    let consoleDescriptor: Int32
    let messagesDescriptor: Int32
    private var exitStatus: Int32?

    /// Starts QEMU. Its argv and environment never carry a secret: keystrokes go through `type(_:)`.
    init(executable: String, arguments: [String]) throws {
        // Writing to a QEMU that just exited must fail with EPIPE, not kill us with SIGPIPE.
        signal(SIGPIPE, SIG_IGN)
        let stdinPipe = try Self.makePipe()
        let stdoutPipe: (read: Int32, write: Int32)
        let stderrPipe: (read: Int32, write: Int32)
        do {
            stdoutPipe = try Self.makePipe()
        } catch {
            close(stdinPipe.read); close(stdinPipe.write)
            throw error
        }
        do {
            stderrPipe = try Self.makePipe()
        } catch {
            for fd in [stdinPipe.read, stdinPipe.write, stdoutPipe.read, stdoutPipe.write] { close(fd) }
            throw error
        }
        defer {
            // The child's ends: closed here whether or not the spawn worked.
            close(stdinPipe.read); close(stdoutPipe.write); close(stderrPipe.write)
        }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, stdinPipe.read, STDIN_FILENO)
        posix_spawn_file_actions_adddup2(&actions, stdoutPipe.write, STDOUT_FILENO)
        posix_spawn_file_actions_adddup2(&actions, stderrPipe.write, STDERR_FILENO)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for sig in [SIGINT, SIGTERM, SIGHUP, SIGPIPE, SIGQUIT] { sigaddset(&defaults, sig) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        var mask = sigset_t()
        sigemptyset(&mask)
        posix_spawnattr_setsigmask(&attributes, &mask)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))

        var environment = ProcessInfo.processInfo.environment
        environment["LC_ALL"] = "C"
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard result == 0 else {
            for fd in [stdinPipe.write, stdoutPipe.read, stderrPipe.read] { close(fd) }
            throw GeneralError.io("start", path: executable, errno: result)
        }
        processIdentifier = pid
        ChildProcesses.shared.add(pid)
        keyboard = stdinPipe.write
        consoleDescriptor = stdoutPipe.read
        messagesDescriptor = stderrPipe.read
    }

    deinit {
        stop()
        close(keyboard)
        close(consoleDescriptor)
        close(messagesDescriptor)
    }

    private static func makePipe() throws -> (read: Int32, write: Int32) {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw GeneralError.io("create a pipe for", path: "qemu", errno: errno) }
        // Close-on-exec: only the dup2'ed copies reach QEMU (pipe2 is not visible from Swift's Glibc).
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        return (fds[0], fds[1])
    }

    /// Whether QEMU still runs (reaps it if it has exited).
    var isRunning: Bool {
        if exitStatus != nil { return false }
        var status: Int32 = 0
        let result = waitpid(processIdentifier, &status, WNOHANG)
        if result == processIdentifier || (result < 0 && errno == ECHILD) {
            record(status: result == processIdentifier ? status : 0)
            return false
        }
        return true
    }

    /// Sends bytes to the serial console. Returns false if QEMU no longer reads them.
    @discardableResult
    func type(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let base = bytes.baseAddress else { return true }
        var offset = 0
        while offset < bytes.count {
            let n = Foundation.write(keyboard, base + offset, bytes.count - offset)
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

    /// Waits for QEMU to exit and returns its exit code (128 + the signal if a signal ended it).
    func waitForExit() -> Int32 {
        if let exitStatus { return exitStatus }
        var status: Int32 = 0
        while true {
            let result = waitpid(processIdentifier, &status, 0)
            if result < 0 && errno == EINTR { continue }
            record(status: result == processIdentifier ? status : 0)
            return exitStatus ?? 0
        }
    }

    /// SIGTERM, then SIGKILL if QEMU is still there two seconds later; waits for it either way.
    func stop() {
        guard isRunning else { return }
        kill(processIdentifier, SIGTERM)
        let deadline = ContinuousClock.now + .seconds(2)
        while isRunning && ContinuousClock.now < deadline { usleep(20_000) }
        if isRunning { kill(processIdentifier, SIGKILL) }
        _ = waitForExit()
    }

    private func record(status: Int32) {
        guard exitStatus == nil else { return }
        // The wait status: low 7 bits the terminating signal (0 if it exited), bits 8-15 the exit code.
        let signal = status & 0x7F
        exitStatus = signal == 0 ? (status >> 8) & 0xFF : 128 + signal
        ChildProcesses.shared.remove(processIdentifier)
    }
}
