import Foundation

/// An external program the tool runs (mke2fs, mkfs.vfat, mtools, grub-mkstandalone, qemu-img).
///
/// Arguments never carry a secret: callers pass secrets through files or standard input.
public struct ExternalTool: Sendable {
    public let name: String
    /// The Debian package that ships it, for the "not installed" message.
    public let package: String

    public init(_ name: String, package: String) {
        self.name = name
        self.package = package
    }

    public static let mke2fs = ExternalTool("mke2fs", package: "e2fsprogs")
    public static let debugfs = ExternalTool("debugfs", package: "e2fsprogs")
    public static let mkfsVfat = ExternalTool("mkfs.vfat", package: "dosfstools")
    public static let mmd = ExternalTool("mmd", package: "mtools")
    public static let mcopy = ExternalTool("mcopy", package: "mtools")
    public static let grubMkstandalone = ExternalTool("grub-mkstandalone", package: "grub-efi-amd64-bin and grub-common")
    public static let grubMkimage = ExternalTool("grub-mkimage", package: "grub-efi-amd64-bin and grub-common")
    public static let qemuImg = ExternalTool("qemu-img", package: "qemu-utils")
    public static let qemuSystem = ExternalTool("qemu-system-x86_64", package: "qemu-system-x86")

    /// The program's absolute path, searched in PATH and the sbin directories (mke2fs lives there).
    public func resolve() throws -> String {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        let directories = path.split(separator: ":").map(String.init) + ["/usr/sbin", "/sbin", "/usr/local/sbin"]
        for directory in directories {
            let candidate = directory + "/" + name
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        throw GeneralError.missingTool(name, package: package)
    }

    public struct Output: Sendable {
        public var status: Int32
        public var stdout: Data
        public var stderr: Data
        public var stderrText: String { String(decoding: stderr, as: UTF8.self) }
        public var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
    }

    /// Runs the tool to completion and throws `toolFailed` on a non-zero status.
    @discardableResult
    public func run(_ arguments: [String], environment: [String: String] = [:], input: Data? = nil,
                    currentDirectory: String? = nil) throws -> Output {
        let output = try runUnchecked(arguments, environment: environment, input: input, currentDirectory: currentDirectory)
        guard output.status == 0 else {
            if let full = Self.fullDirectory(among: arguments) {
                // Each tool words a full disk its own way ("failed whilst writing FAT"); say what happened.
                throw GeneralError.io("write \(name)'s output in", path: full, errno: ENOSPC)
            }
            throw GeneralError.toolFailed(name, status: output.status, stderr: output.stderrText)
        }
        return output
    }

    /// The directory of a path argument whose filesystem has no room left (less than 64 KiB), if any.
    static func fullDirectory(among arguments: [String]) -> String? {
        for argument in arguments where argument.hasPrefix("/") {
            let path = argument.split(separator: "=").last.map(String.init) ?? argument
            let directory = PathName.directory(of: path)
            if FileManager.default.fileExists(atPath: directory), let free = try? FreeSpace.available(in: directory), free < 64 << 10 {
                return directory
            }
        }
        return nil
    }

    /// Runs the tool to completion and returns whatever status it ended with.
    public func runUnchecked(_ arguments: [String], environment: [String: String] = [:], input: Data? = nil,
                             currentDirectory: String? = nil) throws -> Output {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try resolve())
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        env["LC_ALL"] = "C"
        for (key, value) in environment { env[key] = value }
        process.environment = env
        if let currentDirectory { process.currentDirectoryURL = URL(fileURLWithPath: currentDirectory) }
        let stdoutPipe = Pipe(), stderrPipe = Pipe(), stdinPipe = Pipe()
        process.standardOutput = stdoutPipe
        process.standardError = stderrPipe
        process.standardInput = input == nil ? FileHandle.nullDevice : stdinPipe
        // Foundation's `waitUntilExit` polls every 50 ms; its termination handler runs as soon as the child is reaped.
        let exited = DispatchSemaphore(value: 0)
        process.terminationHandler = { _ in exited.signal() }
        // Once a signal handler is cleaning up, no new child: it could write into what is being removed.
        guard !Interruption.isInterrupted else { throw GeneralError.interrupted }
        try process.run()
        ChildProcesses.shared.add(process.processIdentifier)
        // A handler that took its list of children just before this one was added has missed it.
        if Interruption.isInterrupted { kill(process.processIdentifier, SIGKILL) }
        defer { ChildProcesses.shared.remove(process.processIdentifier) }
        if let input {
            // Write from another thread so a child that fills its stdout first cannot deadlock us.
            let writer = Thread {
                stdinPipe.fileHandleForWriting.write(input)
                try? stdinPipe.fileHandleForWriting.close()
            }
            writer.start()
        }
        // Drain stderr concurrently with stdout.
        let stderrBox = DataBox()
        let group = DispatchGroup()
        group.enter()
        DispatchQueue.global().async {
            stderrBox.data = stderrPipe.fileHandleForReading.readDataToEndOfFile()
            group.leave()
        }
        let stdout = stdoutPipe.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        exited.wait()
        return Output(status: process.terminationStatus, stdout: stdout, stderr: stderrBox.data)
    }
}

private final class DataBox: @unchecked Sendable {
    var data = Data()
}

/// The children running right now, so that a signal handler can stop them before cleaning up.
public final class ChildProcesses: @unchecked Sendable {
    public static let shared = ChildProcesses()
    private let lock = NSLock()
    private var pids: Set<Int32> = []

    func add(_ pid: Int32) { lock.withLock { _ = pids.insert(pid) } }
    func remove(_ pid: Int32) { lock.withLock { _ = pids.remove(pid) } }
    /// The children running now.
    var running: Set<Int32> { lock.withLock { pids } }

    /// Kills every child still running. SIGKILL, not SIGTERM: children started through Foundation's
    /// `Process` inherit our ignored SIGTERM, and their half-written outputs are removed anyway.
    public func terminateAll() {
        for pid in lock.withLock({ pids }) { kill(pid, SIGKILL) }
    }
}
