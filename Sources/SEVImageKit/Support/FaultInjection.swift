import Foundation

/// A test hook that stops the process at a named point, to prove that an interrupted run loses nothing.
///
/// Work calls `checkpoint("name")` between steps. Nothing happens unless the environment asks:
///
///     SEVIMAGE_FAULT=name[:SIGNAL]    stop at the first checkpoint called `name`
///     SEVIMAGE_FAULT_AFTER=N          stop at the N-th checkpoint, whatever its name
///                                     (SEVIMAGE_TEST_CRASH_AFTER=N is the older spelling)
///     SEVIMAGE_FAULT_SIGNAL=SIGNAL    the signal for SEVIMAGE_FAULT_AFTER
///     SEVIMAGE_FAULT_VERBOSE=1        say on stderr where it stopped
///
/// SIGNAL is KILL (the default: no handler runs, as after a power loss or the OOM killer), TERM, INT or HUP
/// (the handlers from `installSignalHandlers` clean up). For a catchable signal the calling thread then
/// waits, as real work would be in progress when a signal arrives, until the handler ends the process.
/// `CrashPoint.durable` (key operations) counts through the same checkpoints.
public enum FaultInjection {
    private static let state = FaultState(environment: ProcessInfo.processInfo.environment)

    /// Marks a point between two steps; the process stops here if the environment asked for it.
    public static func checkpoint(_ name: String) {
        guard let signal = state.hit(name) else { return }
        if state.verbose { Console.write("sevimage: test fault at checkpoint \(state.current) (\(name)): signal \(signal)\n") }
        kill(getpid(), signal)
        if signal == SIGKILL { _exit(128 + SIGKILL) }
        // A catchable signal: the handler runs on another thread and exits; this one parks meanwhile.
        Interruption.park()
    }

    /// How many checkpoints this process has passed.
    public static var count: Int { state.current }

    /// Signal numbers by name, as the environment spells them (`KILL`, `SIGTERM`, `15`).
    static func signalNumber(_ text: String) -> Int32? {
        let name = text.uppercased().hasPrefix("SIG") ? String(text.uppercased().dropFirst(3)) : text.uppercased()
        switch name {
        case "KILL": return SIGKILL
        case "TERM": return SIGTERM
        case "INT": return SIGINT
        case "HUP": return SIGHUP
        default: return Int32(name).flatMap { (1...64).contains($0) ? $0 : nil }
        }
    }
}

private final class FaultState: @unchecked Sendable {
    let name: String?
    let nameSignal: Int32
    let after: Int?
    let afterSignal: Int32
    let verbose: Bool
    private let lock = NSLock()
    private var counter = 0

    init(environment: [String: String]) {
        if let spec = environment["SEVIMAGE_FAULT"], !spec.isEmpty {
            let parts = spec.split(separator: ":", maxSplits: 1).map(String.init)
            name = parts[0]
            nameSignal = parts.count > 1 ? FaultInjection.signalNumber(parts[1]) ?? SIGKILL : SIGKILL
        } else {
            name = nil
            nameSignal = SIGKILL
        }
        after = (environment["SEVIMAGE_FAULT_AFTER"] ?? environment["SEVIMAGE_TEST_CRASH_AFTER"]).flatMap { Int($0) }
        afterSignal = environment["SEVIMAGE_FAULT_SIGNAL"].flatMap(FaultInjection.signalNumber) ?? SIGKILL
        verbose = environment["SEVIMAGE_FAULT_VERBOSE"] != nil || environment["SEVIMAGE_TEST_CRASH_VERBOSE"] != nil
    }

    /// Counts one checkpoint; the signal to stop with, if this is the one.
    func hit(_ checkpoint: String) -> Int32? {
        let count = lock.withLock { counter += 1; return counter }
        if let name, name == checkpoint { return nameSignal }
        if let after, after == count { return afterSignal }
        return nil
    }

    var current: Int { lock.withLock { counter } }
}
