import Foundation

/// Tells a person what the tool is doing: one line per step, and for long steps a bar with rate and
/// time left when stderr is a terminal. Silent with `--quiet` (and with `--json` unless asked).
public final class Progress: @unchecked Sendable {
    private let enabled: Bool
    private let terminal: Bool
    private let lock = NSLock()

    public init(quiet: Bool) {
        enabled = !quiet
        terminal = Console.isTerminal
    }

    public func step(_ message: String) {
        guard enabled else { return }
        Console.write("sevimage: \(message)\n")
    }

    /// A meter for a step that moves `total` bytes; nil when there is nothing to draw.
    public func meter(_ label: String, total: UInt64) -> (@Sendable (UInt64) -> Void)? {
        guard enabled, terminal, total > 0 else { return nil }
        let start = Date()
        let state = MeterState()
        return { [lock] done in
            lock.withLock {
                let now = Date()
                guard done >= total || now.timeIntervalSince(state.lastDraw) > 0.1 else { return }
                state.lastDraw = now
                let elapsed = max(now.timeIntervalSince(start), 0.001)
                let rate = Double(done) / elapsed
                let left = rate > 0 ? Double(total - min(done, total)) / rate : 0
                let fraction = Double(done) / Double(total)
                let width = 30
                let filled = Int(fraction * Double(width))
                let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
                var line = String(format: "\r  %@ [%@] %3.0f%% %@/s %.0fs left  ", label, bar, fraction * 100,
                                  readableSize(UInt64(rate)), left)
                if done >= total { line += "\n" }
                Console.write(line)
            }
        }
    }
}

private final class MeterState: @unchecked Sendable {
    var lastDraw = Date.distantPast
}
