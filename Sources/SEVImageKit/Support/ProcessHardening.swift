import Foundation

/// Process-wide protection of the secrets this tool holds in memory.
public enum ProcessHardening {
    // prctl(2) options (linux/prctl.h); prctl is variadic, which Swift cannot call directly.
    private static let PR_SET_DUMPABLE: Int32 = 4
    private static let PR_GET_DUMPABLE: Int32 = 3
    private typealias PrctlFunction = @convention(c) (Int32, UInt, UInt, UInt, UInt) -> Int32

    private static let prctl: PrctlFunction? = {
        guard let handle = dlopen(nil, RTLD_NOW), let symbol = dlsym(handle, "prctl") else { return nil }
        return unsafeBitCast(symbol, to: PrctlFunction.self)
    }()

    /// Makes the process non-dumpable for its whole life: no core file (which would hold passphrases and
    /// volume keys), no ptrace attach and no /proc/PID/mem or environ for other processes of the same user.
    /// Children get their own, dumpable, state at exec. Also sets the core size limit to zero.
    /// Returns whether the kernel accepted it.
    @discardableResult
    public static func disableCoreDumps() -> Bool {
        var limit = rlimit(rlim_cur: 0, rlim_max: 0)
        _ = withUnsafePointer(to: &limit) { setrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), $0) }
        guard let prctl else { return false }
        return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    }

    /// Whether the process may dump core (`PR_GET_DUMPABLE`).
    public static var isDumpable: Bool {
        guard let prctl else { return true }
        return prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0
    }
}
