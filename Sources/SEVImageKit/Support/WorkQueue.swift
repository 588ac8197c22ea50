import Foundation

/// Items handed out one at a time to the threads of a `DispatchQueue.concurrentPerform`, with the bytes
/// done so far (for a progress meter) and the first error, after which no more items are handed out.
final class WorkQueue<Item: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private let items: [Item]
    private var index = 0
    private var bytes: UInt64 = 0
    private var firstError: Error?

    init(_ items: [Item]) { self.items = items }

    func next() -> Item? {
        lock.withLock {
            guard firstError == nil, index < items.count else { return nil }
            defer { index += 1 }
            return items[index]
        }
    }

    /// Adds `count` bytes done and returns the total so far.
    @discardableResult
    func finished(_ count: UInt64) -> UInt64 { lock.withLock { bytes += count; return bytes } }

    func fail(_ error: Error) { lock.withLock { if firstError == nil { firstError = error } } }
    var error: Error? { lock.withLock { firstError } }
}
