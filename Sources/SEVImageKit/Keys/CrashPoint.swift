import Foundation

/// Fault injection for the crash-safety tests: with `SEVIMAGE_TEST_CRASH_AFTER=N` in the environment,
/// the process kills itself with SIGKILL right after its N-th durable write step (an fsync'ed write,
/// rename or unlink). Without the variable, `durable()` only counts.
public enum CrashPoint {
    private static let state = CrashState(limit: ProcessInfo.processInfo.environment["SEVIMAGE_TEST_CRASH_AFTER"].flatMap { Int($0) })

    /// Marks one durable step done; dies here if the test asked for it.
    public static func durable(_ what: String) {
        let count = state.next()
        if let limit = state.limit, count == limit {
            if ProcessInfo.processInfo.environment["SEVIMAGE_TEST_CRASH_VERBOSE"] != nil {
                Console.write("sevimage: test crash after step \(count): \(what)\n")
            }
            kill(getpid(), SIGKILL)
            _exit(137)
        }
    }

    /// How many durable steps this process has taken.
    public static var count: Int { state.current }
}

private final class CrashState: @unchecked Sendable {
    let limit: Int?
    private let lock = NSLock()
    private var counter = 0
    init(limit: Int?) { self.limit = limit }
    func next() -> Int { lock.withLock { counter += 1; return counter } }
    var current: Int { lock.withLock { counter } }
}
