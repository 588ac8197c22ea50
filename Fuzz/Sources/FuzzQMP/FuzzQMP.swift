import Foundation
import SEVImageKit

/// The QMP client's message reader: a thread plays QEMU on a Unix socket and sends each input as the
/// whole of what QEMU says (greeting, replies, events), then hangs up. The client must fail cleanly on
/// anything that is not a QMP conversation.
private final class FakeQEMU: @unchecked Sendable {
    let path: String
    private let listener: Int32
    private let lock = NSLock()
    private var reply: [UInt8] = []

    init() {
        path = "\(NSTemporaryDirectory())/sevimage-fuzz-qmp-\(getpid()).sock"
        unlink(path)
        listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            let bytes = Array(path.utf8.prefix(raw.count - 1))
            raw.copyBytes(from: bytes)
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard listener >= 0, bound == 0, listen(listener, 16) == 0 else { fatalError("cannot listen on \(path)") }
        let thread = Thread { [self] in serve() }
        thread.start()
    }

    func set(_ bytes: [UInt8]) { lock.withLock { reply = bytes } }

    private func serve() {
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 { continue }
            let bytes = lock.withLock { reply }
            bytes.withUnsafeBytes { raw in
                var offset = 0
                while offset < raw.count {
                    let n = send(client, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                    if n <= 0 { break }
                    offset += n
                }
            }
            shutdown(client, Int32(SHUT_WR))
            close(client)
        }
    }
}

private let qemu = FakeQEMU()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzQMP(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    qemu.set(data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? [])
    if let client = try? QMPClient(address: .unix(qemu.path), timeout: 2) {
        _ = try? client.queryStatus()
        client.close()
    }
    return 0
}
