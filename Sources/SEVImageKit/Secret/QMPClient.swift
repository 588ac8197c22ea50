import Foundation

/// Where QEMU's monitor listens: `unix:PATH` (`-qmp unix:PATH,server=on,wait=off`) or `HOST:PORT`
/// (`-qmp tcp:HOST:PORT,server=on,wait=off`).
public enum QMPAddress: Sendable, Equatable, CustomStringConvertible {
    case unix(String)
    case tcp(host: String, port: UInt16)

    public init(_ text: String) throws {
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            guard !path.isEmpty else { throw GeneralError.invalidArgument("--qmp unix: needs a socket path") }
            self = .unix(path)
            return
        }
        var rest = Substring(text)
        if rest.hasPrefix("tcp:") { rest = rest.dropFirst(4) }
        guard let colon = rest.lastIndex(of: ":"), let port = UInt16(rest[rest.index(after: colon)...]), port > 0 else {
            throw GeneralError.invalidArgument("--qmp \(text) is neither unix:PATH nor HOST:PORT")
        }
        var host = String(rest[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { throw GeneralError.invalidArgument("--qmp \(text) has no host") }
        self = .tcp(host: host, port: port)
    }

    public var description: String {
        switch self {
        case .unix(let path): "unix:\(path)"
        case .tcp(let host, let port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        }
    }
}

/// A scalar argument of a QMP command.
public enum QMPArgument: Sendable, Equatable {
    case string(String)
    case unsigned(UInt64)
    case bool(Bool)

    var json: Any {
        switch self {
        case .string(let s): s
        case .unsigned(let n): NSNumber(value: n)
        case .bool(let b): b
        }
    }
}

/// `query-status`: whether the guest runs, and QEMU's run state (`prelaunch` after `-S`).
public struct QMPStatus: Decodable, Sendable, Equatable {
    public var running: Bool
    public var status: String
}

/// `query-sev` (QEMU qapi/misc-i386.json `SevInfo`): `policy` and `handle` exist for SEV and SEV-ES
/// guests, `sev-type` since QEMU 6.2.
public struct SEVInfo: Decodable, Sendable, Equatable {
    public var enabled: Bool
    public var apiMajor: UInt8
    public var apiMinor: UInt8
    public var buildID: UInt8
    public var state: String
    public var policy: UInt32?
    public var handle: UInt32?
    public var sevType: String?

    enum CodingKeys: String, CodingKey {
        case enabled, state, policy, handle
        case apiMajor = "api-major", apiMinor = "api-minor", buildID = "build-id", sevType = "sev-type"
    }

    public init(enabled: Bool, apiMajor: UInt8, apiMinor: UInt8, buildID: UInt8, state: String,
                policy: UInt32?, handle: UInt32?, sevType: String?) {
        self.enabled = enabled; self.apiMajor = apiMajor; self.apiMinor = apiMinor; self.buildID = buildID
        self.state = state; self.policy = policy; self.handle = handle; self.sevType = sevType
    }
}

/// A client for the QEMU Machine Protocol: one JSON object per line in each direction.
///
/// ```
/// <- {"QMP": {"version": {...}, "capabilities": [...]}}     greeting
/// -> {"execute": "qmp_capabilities"}                          leave negotiation mode
/// <- {"return": {}}
/// -> {"execute": "query-sev", "id": "sevimage-2"}
/// <- {"event": "...", "data": {...}, "timestamp": {...}}      events may come at any time: skipped
/// <- {"return": {...}, "id": "sevimage-2"}  or  {"error": {"class": "...", "desc": "..."}, "id": ...}
/// ```
///
/// Every read has a deadline; a closed socket, a line that is not a JSON object, a reply for another
/// command and an `error` reply each become a `QMPError` naming the command. Owns its socket, so it
/// is not `Sendable`.
public final class QMPClient {
    public let address: QMPAddress
    public let timeout: TimeInterval
    /// `QMP.version.qemu` from the greeting, as `major.minor.micro`.
    public private(set) var qemuVersion: String?
    /// Names of the asynchronous events seen (and skipped) while waiting for replies.
    public private(set) var skippedEvents: [String] = []
    private var fd: Int32
    private var buffer: [UInt8] = []
    private var nextID = 1
    private static let maxLine = 1 << 20

    /// Connects, reads the greeting and negotiates capabilities.
    public init(address: QMPAddress, timeout: TimeInterval = 10) throws {
        self.address = address
        self.timeout = timeout
        fd = try Self.connect(address)
        do {
            let greeting = try readMessage(waitingFor: "the QMP greeting")
            guard let qmp = greeting["QMP"] as? [String: Any] else {
                throw QMPError.malformed(address.description, "the first message is not a QMP greeting")
            }
            if let version = (qmp["version"] as? [String: Any])?["qemu"] as? [String: Any],
               let major = version["major"] as? Int, let minor = version["minor"] as? Int, let micro = version["micro"] as? Int {
                qemuVersion = "\(major).\(minor).\(micro)"
            }
            _ = try execute("qmp_capabilities")
        } catch {
            close()
            throw error
        }
    }

    deinit { close() }

    public func close() {
        if fd >= 0 { Foundation.close(fd) }
        fd = -1
    }

    // MARK: Commands

    /// Runs a command and returns its `return` value (a JSON object, array or scalar as Foundation types).
    @discardableResult
    public func execute(_ command: String, arguments: [String: QMPArgument] = [:]) throws -> Any {
        guard fd >= 0 else { throw QMPError.closed(address.description, command) }
        let id = "sevimage-\(nextID)"
        nextID += 1
        var request: [String: Any] = ["execute": command, "id": id]
        if !arguments.isEmpty { request["arguments"] = arguments.mapValues(\.json) }
        var line = try JSONSerialization.data(withJSONObject: request, options: [.sortedKeys])
        line.append(0x0A)
        try send(line, command: command)
        while true {
            let message = try readMessage(waitingFor: "the reply to \(command)")
            if let event = message["event"] as? String {
                skippedEvents.append(event)
                continue
            }
            if let replyID = message["id"], (replyID as? String) != id {
                throw QMPError.malformed(address.description, "a reply for another command (id \(replyID)) came while waiting for \(command)")
            }
            if let error = message["error"] as? [String: Any] {
                throw QMPError.commandFailed(command, errorClass: error["class"] as? String ?? "?",
                                             description: error["desc"] as? String ?? "no description")
            }
            if let value = message["return"] { return value }
            throw QMPError.malformed(address.description, "the reply to \(command) has neither return nor error")
        }
    }

    /// Runs a command and decodes its `return` value.
    public func execute<R: Decodable>(_ command: String, arguments: [String: QMPArgument] = [:], as type: R.Type) throws -> R {
        let value = try execute(command, arguments: arguments)
        do {
            let data = try JSONSerialization.data(withJSONObject: value, options: [.fragmentsAllowed])
            return try JSONDecoder().decode(R.self, from: data)
        } catch {
            throw QMPError.malformed(address.description, "the reply to \(command) is not what QEMU documents: \(jsonProblem(error))")
        }
    }

    public func queryStatus() throws -> QMPStatus { try execute("query-status", as: QMPStatus.self) }

    /// Resumes a guest paused by `-S`.
    public func cont() throws { try execute("cont") }

    public func querySEV() throws -> SEVInfo { try execute("query-sev", as: SEVInfo.self) }

    public func queryLaunchMeasure() throws -> LaunchMeasure {
        struct Reply: Decodable { var data: String }
        let reply = try execute("query-sev-launch-measure", as: Reply.self)
        return try LaunchMeasure(base64: reply.data)
    }

    /// `sev-inject-launch-secret` with the packet's header and payload at `gpa`.
    public func injectLaunchSecret(_ packet: LaunchSecretPacket, gpa: UInt64) throws {
        try execute("sev-inject-launch-secret", arguments: [
            "packet-header": .string(packet.headerBase64),
            "secret": .string(packet.payloadBase64),
            "gpa": .unsigned(gpa),
        ])
    }

    // MARK: Transport

    private func send(_ data: Data, command: String) throws {
        try data.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                #if os(Linux)
                let n = Foundation.send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                #else
                let n = Foundation.send(fd, raw.baseAddress! + offset, raw.count - offset, 0)
                #endif
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else {
                    if errno == EPIPE || errno == ECONNRESET { throw QMPError.closed(address.description, command) }
                    throw QMPError.io(address.description, "send \(command)", errnoDescription(errno))
                }
                offset += n
            }
        }
    }

    /// The next JSON object from the socket, within the timeout.
    private func readMessage(waitingFor what: String) throws -> [String: Any] {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if let newline = buffer.firstIndex(of: 0x0A) {
                let line = Array(buffer[..<newline])
                buffer.removeSubrange(...newline)
                let trimmed = line.filter { $0 != 0x0D && $0 != 0x20 && $0 != 0x09 }
                if trimmed.isEmpty { continue }
                guard let object = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any] else {
                    throw QMPError.malformed(address.description, "\(what) is not a JSON object: \(Self.excerpt(line))")
                }
                return object
            }
            guard buffer.count < Self.maxLine else {
                throw QMPError.malformed(address.description, "\(what) is longer than \(Self.maxLine) bytes without a line end")
            }
            let remaining = deadline.timeIntervalSinceNow
            guard remaining > 0 else { throw QMPError.timeout(address.description, what, timeout) }
            var pollFD = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&pollFD, 1, Int32(min(remaining * 1000 + 1, 60_000)))
            if ready < 0 && errno == EINTR { continue }
            guard ready >= 0 else { throw QMPError.io(address.description, "wait for \(what)", errnoDescription(errno)) }
            if ready == 0 { continue }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && (errno == EINTR || errno == EAGAIN) { continue }
            if n < 0 && errno == ECONNRESET { throw QMPError.closed(address.description, what) }
            guard n >= 0 else { throw QMPError.io(address.description, "read \(what)", errnoDescription(errno)) }
            if n == 0 {
                if !buffer.isEmpty {
                    throw QMPError.malformed(address.description, "the connection closed in the middle of \(what): \(Self.excerpt(buffer))")
                }
                throw QMPError.closed(address.description, what)
            }
            buffer += chunk[0..<n]
        }
    }

    private static func excerpt(_ bytes: [UInt8]) -> String {
        let text = String(decoding: bytes.prefix(80), as: UTF8.self)
            .map { $0.isASCII && !$0.isNewline ? String($0) : "?" }.joined()
        return bytes.count > 80 ? text + "..." : text
    }

    private static func connect(_ address: QMPAddress) throws -> Int32 {
        switch address {
        case .unix(let path):
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            let capacity = MemoryLayout.size(ofValue: addr.sun_path)
            let pathBytes = Array(path.utf8)
            guard pathBytes.count < capacity else {
                throw GeneralError.invalidArgument("QMP socket path \(path) is longer than \(capacity - 1) bytes")
            }
            withUnsafeMutableBytes(of: &addr.sun_path) { raw in
                raw.copyBytes(from: pathBytes)
                raw[pathBytes.count] = 0
            }
            #if os(Linux)
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            #else
            let fd = socket(AF_UNIX, SOCK_STREAM, 0)
            #endif
            guard fd >= 0 else { throw QMPError.io(address.description, "create a socket for", errnoDescription(errno)) }
            let result = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Foundation.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            guard result == 0 else {
                let code = errno
                Foundation.close(fd)
                throw QMPError.connect(address.description, errnoDescription(code))
            }
            return fd
        case .tcp(let host, let port):
            var hints = addrinfo()
            hints.ai_family = AF_UNSPEC
            #if os(Linux)
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            #else
            hints.ai_socktype = SOCK_STREAM
            #endif
            var list: UnsafeMutablePointer<addrinfo>?
            let status = getaddrinfo(host, String(port), &hints, &list)
            guard status == 0, let first = list else {
                throw QMPError.connect(address.description, "cannot resolve \(host): \(String(cString: gai_strerror(status)).lowercased())")
            }
            defer { freeaddrinfo(list) }
            var lastError = ECONNREFUSED
            var candidate: UnsafeMutablePointer<addrinfo>? = first
            while let info = candidate {
                candidate = info.pointee.ai_next
                let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype, info.pointee.ai_protocol)
                guard fd >= 0 else { lastError = errno; continue }
                if Foundation.connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 {
                    _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
                    return fd
                }
                lastError = errno
                Foundation.close(fd)
            }
            throw QMPError.connect(address.description, errnoDescription(lastError))
        }
    }
}

/// Why a QMP conversation failed.
public enum QMPError: SEVImageError {
    case connect(String, String)
    case closed(String, String)
    case timeout(String, String, TimeInterval)
    case malformed(String, String)
    case commandFailed(String, errorClass: String, description: String)
    case io(String, String, String)

    public var exitStatus: ExitStatus { .failure }

    public var description: String {
        switch self {
        case .connect(let address, let reason):
            "cannot connect to QMP at \(address): \(reason)"
        case .closed(let address, let what):
            "QEMU closed the QMP connection \(address) while sevimage sent or waited for \(what)"
        case .timeout(let address, let what, let seconds):
            "no answer from QMP \(address) within \(Int(seconds)) s while waiting for \(what)"
        case .malformed(let address, let what):
            "malformed QMP message from \(address): \(what)"
        case .commandFailed(let command, let errorClass, let description):
            "QEMU refused \(command): \(errorClass): \(description)"
        case .io(let address, let operation, let reason):
            "cannot \(operation) QMP \(address): \(reason)"
        }
    }
}
