import Foundation

/// Work on a thread of its own (a long child process, say) while the caller goes on; `wait` gives its result.
final class BackgroundWork<Value: Sendable>: @unchecked Sendable {
    private let group = DispatchGroup()
    private let lock = NSLock()
    private var result: Result<Value, Error>?

    init(_ name: String, _ body: @escaping @Sendable () throws -> Value) {
        group.enter()
        let thread = Thread { [self] in
            let outcome = Result { try body() }
            lock.withLock { result = outcome }
            group.leave()
        }
        thread.name = name
        thread.start()
    }

    /// Waits for the work to end and returns what it returned or threw.
    func wait() -> Result<Value, Error> {
        group.wait()
        return lock.withLock { result! }
    }
}
