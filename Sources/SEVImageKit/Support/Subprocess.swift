import Foundation

/// An external program the tool runs. Every one is a constant below, listed in `RuntimeRequirements.programs`
/// (what `sevimage doctor` prints and the stage image is built from); the initializer is internal so that the
/// library cannot start a program that list does not name.
///
/// Arguments never carry a secret: callers pass secrets through files or standard input.
public struct ExternalTool: Sendable, Hashable {
    public let name: String
    /// The Debian package that ships it, for the "not installed" message.
    public let package: String
    /// The commands that run it, and when (`RuntimeNeed`).
    public let needs: [RuntimeNeed]

    init(_ name: String, package: String, needs: [RuntimeNeed] = []) {
        self.name = name
        self.package = package
        self.needs = needs
    }

    public static let mke2fs = ExternalTool("mke2fs", package: "e2fsprogs", needs: [.always("create")])
    public static let debugfs = ExternalTool("debugfs", package: "e2fsprogs", needs: [.always("create")])
    public static let mkfsVfat = ExternalTool("mkfs.vfat", package: "dosfstools", needs: [.always("create")])
    public static let mcopy = ExternalTool("mcopy", package: "mtools", needs: [.always("create")])
    /// The ESP's GRUB; with SOURCE_DATE_EPOCH `create` assembles the same image with tar and grub-mkimage instead.
    public static let grubMkstandalone = ExternalTool("grub-mkstandalone", package: "grub-common",
                                                      needs: [.init("create", when: "without SOURCE_DATE_EPOCH")])
    public static let grubMkimage = ExternalTool("grub-mkimage", package: "grub-common",
                                                 needs: [.init("create", when: "with SOURCE_DATE_EPOCH"), .always("firmware grub")])
    public static let tar = ExternalTool("tar", package: "tar", needs: [.init("create", when: "with SOURCE_DATE_EPOCH")])
    /// Decompressors: of a compressed `--rootfs` tarball, and of the tree's initrd (which `create` reads).
    public static let gzip = ExternalTool("gzip", package: "gzip", needs: [.init("create", when: "for a gzip tarball or initrd")])
    public static let xz = ExternalTool("xz", package: "xz-utils", needs: [.init("create", when: "for an xz tarball, or an xz or lzma initrd")])
    public static let zstd = ExternalTool("zstd", package: "zstd", needs: [.init("create", when: "for a zstd tarball or initrd")])
    public static let bzip2 = ExternalTool("bzip2", package: "bzip2", needs: [.init("create", when: "for a bzip2 tarball or initrd")])
    public static let lz4 = ExternalTool("lz4", package: "lz4", needs: [.init("create", when: "for an lz4 initrd")])
    public static let lzop = ExternalTool("lzop", package: "lzop", needs: [.init("create", when: "for an lzo initrd")])
    public static let qemuSystem = ExternalTool("qemu-system-x86_64", package: "qemu-system-x86", needs: [.always("boot")])

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
