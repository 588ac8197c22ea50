import Foundation

/// Fault injection for the crash-safety tests of the key operations: with `SEVIMAGE_TEST_CRASH_AFTER=N`
/// (or `SEVIMAGE_FAULT_AFTER=N`) in the environment, the process kills itself with SIGKILL right after its
/// N-th step (a durable write, rename or unlink here, or a publish in `OutputFiles`). One mechanism for
/// every command: this counts through `FaultInjection` (Support/FaultInjection.swift), which also stops at
/// a step by name (`SEVIMAGE_FAULT=name[:signal]`).
public enum CrashPoint {
    /// Marks one durable step done; dies here if the test asked for it.
    public static func durable(_ what: String) {
        FaultInjection.checkpoint(what)
    }

    /// How many steps this process has taken.
    public static var count: Int { FaultInjection.count }
}
