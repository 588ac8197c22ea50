import Foundation

/// Paths to remove if the process stops before it finishes: temporary files and half-built outputs.
///
/// Work registers a path before it creates it and unregisters it once the file is in place; a signal
/// handler (or an error path) removes whatever is still registered, newest first.
public final class Cleanup: @unchecked Sendable {
    public static let shared = Cleanup()
    private let lock = NSLock()
    private var paths: [String] = []

    public func register(_ path: String) { lock.withLock { paths.append(path) } }

    public func unregister(_ path: String) {
        lock.withLock { paths.removeAll { $0 == path } }
    }

    /// Removes every registered path, last registered first.
    public func removeAll() {
        let pending = lock.withLock { () -> [String] in
            defer { paths.removeAll() }
            return paths
        }
        for path in pending.reversed() {
            WorkDirectory.finish(path)
            // Another thread may still be creating a file in a work directory (until it notices the interruption),
            // which makes one removal pass fail on a directory that is not empty: try again a few times.
            for attempt in 0..<10 {
                try? FileManager.default.removeItem(atPath: path)
                var info = stat()
                if lstat(path, &info) != 0 { break }
                if attempt < 9 { usleep(20_000) }
            }
        }
    }
}

/// A private temporary directory next to the output (same filesystem, so renames are atomic),
/// removed when the value is released or the process is interrupted.
public final class TemporaryDirectory {
    public let path: String
    /// The locked owner file that tells a later run this directory is in use (Locking.swift).
    private var owner: Int32 = -1

    /// Removes the work directories that killed runs left beside `outputPath` first (`WorkDirectory.reapStale`), so
    /// that a SIGKILL'ed export, link or key operation leaves nothing behind for longer than the next run there.
    public init(near outputPath: String, purpose: String = "sevimage") throws {
        WorkDirectory.reapStale(near: outputPath)
        let directory = PathName.directory(of: outputPath)
        let parent = directory.isEmpty ? "." : directory
        var template = Array("\(parent)/.\(purpose)-XXXXXX".utf8CString)
        guard let created = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw GeneralError.io("create a temporary directory in", path: parent, errno: errno)
        }
        path = String(cString: created)
        Cleanup.shared.register(path)
        owner = WorkDirectory.claim(path, output: outputPath)
    }

    public func file(_ name: String) -> String { path + "/" + name }

    deinit {
        WorkDirectory.finish(path)
        try? FileManager.default.removeItem(atPath: path)
        Cleanup.shared.unregister(path)
        if owner >= 0 { close(owner) }
    }
}

/// Stops children and removes registered paths on SIGINT, SIGTERM and SIGHUP, then exits 130/143/129.
///
/// The main thread may be in the middle of a step that works on those paths (libfdisk asserts when its
/// file vanishes under it), so the handler first lets it reach a safe point: its children are killed, no
/// new child starts, its step fails and it parks (`Interruption.waitIfInterrupted`); after at most two
/// seconds the handler goes on anyway. It exits with `_exit`, because `exit` would run the process's global
/// destructors while worker threads (mke2fs's waiter, the encryption) still run.
public func installSignalHandlers() {
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        signal(sig, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
        source.setEventHandler {
            Interruption.begin()
            ChildProcesses.shared.terminateAll()
            Interruption.waitUntilParked(timeout: 2)
            Cleanup.shared.removeAll()
            Console.error("interrupted by signal \(sig); partial outputs were removed")
            _exit(128 + sig)
        }
        source.resume()
        SignalSources.keep.append(source)
    }
}

private enum SignalSources {
    nonisolated(unsafe) static var keep: [any DispatchSourceSignal] = []
}

/// Set once a signal handler has started cleaning up: from then on the signal handler alone ends the
/// process (with 128 + signal), and the main thread, which may see its children die, must not race it.
public enum Interruption {
    nonisolated(unsafe) private static var flag = false
    nonisolated(unsafe) private static var parked = false
    private static let lock = NSLock()

    static func begin() { lock.withLock { flag = true } }

    public static var isInterrupted: Bool { lock.withLock { flag } }

    /// Called by the main thread before it exits: parks it while a signal handler finishes.
    public static func waitIfInterrupted() {
        guard isInterrupted else { return }
        park()
    }

    /// Parks the calling thread for good, telling the signal handler it may clean up.
    static func park() -> Never {
        lock.withLock { parked = true }
        while true { sleep(60) }
    }

    /// The handler's wait for the main thread to park (or for `timeout` seconds).
    static func waitUntilParked(timeout: TimeInterval) {
        let deadline = Date().addingTimeInterval(timeout)
        while !lock.withLock({ parked }) && Date() < deadline { usleep(10_000) }
    }
}
