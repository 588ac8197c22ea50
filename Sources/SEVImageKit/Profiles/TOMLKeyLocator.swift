/// Where each key path of a TOML text is defined: its line, and the order keys appear in.
struct TOMLKeyLocations: Sendable {
    struct Place: Sendable, Equatable {
        /// The key's position among all keys and headers of the text (the first time the path appears).
        var order: Int
        var line: Int
    }

    /// `[table]` headers in order (not `[[array]]` ones).
    var headers: [(path: [String], line: Int)] = []
    var places: [[String]: Place] = [:]
    var headerPaths: Set<[String]> = []

    func isHeader(_ path: [String]) -> Bool { headerPaths.contains(path) }

    /// The path's own place, else that of the longest prefix that has one (a table whose keys the path is
    /// under), else the first line.
    func place(of path: [String]) -> Place {
        var prefix = path
        while !prefix.isEmpty {
            if let place = places[prefix] { return place }
            prefix.removeLast()
        }
        return Place(order: Int.max, line: 1)
    }

    mutating func record(_ path: [String], line: Int, header: Bool) {
        if places[path] == nil { places[path] = Place(order: places.count, line: line) }
        if header {
            headers.append((path, line))
            headerPaths.insert(path)
        }
    }
}

/// Finds the line of every key path in a TOML text, and refuses the few invalid texts toml++ 3.4 trips on.
///
/// It reads what names keys: `[table]` and `[[array]]` headers, dotted keys, quoted keys (decoding their
/// escapes, since `"caf\u00e9"` names the key `café`) and the keys of inline tables. Values are skipped over
/// by their delimiters (quotes, brackets, braces, the end of a line) and never interpreted: toml++ gives the
/// values. Keys inside arrays are not recorded (profiles take no arrays of tables; such an array is one
/// value at its key's line).
///
/// It runs before toml++, on any text, and always ends without trapping. It refuses:
/// - `\u0000` escapes, which TOMLKit would cut strings at, and key paths deeper than the reader's limit;
/// - three shapes of invalid TOML that reach a precondition of toml++ 3.4.0's parser (an `assert` that aborts
///   the process: SwiftPM compiles C++ without `NDEBUG`, in debug and release builds alike; with `NDEBUG` it
///   would be `__builtin_assume` of a false condition, undefined behaviour): a table
///   header whose name starts with a byte no key starts with (`[`, a line end or `#` after `[`; the bug
///   upstream fixed in toml++ pull request 301), an array element that starts with `}` (`a = [}`), and a
///   date-like value followed by `T` or by a space and a digit but not by a time's `HH:` (`1979-05-27T'`,
///   `[1979-05-27 0]`).
///   Each is invalid TOML, so no valid text is refused; `ProfileFuzzTests` and `Fuzz/FuzzProfile` feed the
///   the parser, where toml++'s asserts are live, to find any other.
/// Only the text before the first error need be understood alike by toml++ and the locator: toml++ stops
/// there, and on valid TOML the locator follows the structure exactly.
struct TOMLKeyLocator {
    let bytes: [UInt8]
    let maximumDepth: Int
    var position = 0
    var line = 1
    var lineStart = 0
    var locations = TOMLKeyLocations()

    static func locate(_ bytes: [UInt8], maximumDepth: Int) throws(TOMLSyntaxError) -> TOMLKeyLocations {
        var locator = TOMLKeyLocator(bytes: bytes, maximumDepth: maximumDepth)
        try locator.document()
        return locator.locations
    }

    static func isBareKeyByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "_"), UInt8(ascii: "-"):
            return true
        default:
            return false
        }
    }

    var current: UInt8? { position < bytes.count ? bytes[position] : nil }

    func peek(_ offset: Int) -> UInt8? {
        let index = position + offset
        return index < bytes.count ? bytes[index] : nil
    }

    func starts(with text: String) -> Bool {
        var index = position
        for byte in text.utf8 {
            guard index < bytes.count, bytes[index] == byte else { return false }
            index += 1
        }
        return true
    }

    /// Moves one byte on, counting lines.
    mutating func advance() {
        guard position < bytes.count else { return }
        if bytes[position] == UInt8(ascii: "\n") {
            line += 1
            lineStart = position + 1
        }
        position += 1
    }

    mutating func advance(_ count: Int) {
        for _ in 0..<count { advance() }
    }

    mutating func document() throws(TOMLSyntaxError) {
        if bytes.starts(with: [0xef, 0xbb, 0xbf]) { position = 3 }
        var table: [String] = []
        while true {
            skipSpace(newlines: true)
            guard let byte = current else { return }
            let start = position
            if byte == UInt8(ascii: "[") {
                let array = peek(1) == UInt8(ascii: "[")
                let headerLine = line
                advance()
                skipBlanks()
                if array {
                    advance()
                    skipBlanks()
                }
                if let first = current, first != UInt8(ascii: "]"), first != UInt8(ascii: "\""), first != UInt8(ascii: "'"),
                   !TOMLKeyLocator.isBareKeyByte(first) {
                    throw refusal("expected a table name after '[', found \(found)")
                }
                table = try keyPath()
                try checkDepth(table, line: headerLine)
                locations.record(table, line: headerLine, header: !array)
                skipSpace(newlines: false)
                advance(array ? 2 : 1)
            } else {
                try keyValue(under: table, recording: true, depth: 0)
            }
            skipToEndOfLine()
            if position == start { advance() }
        }
    }

    /// Spaces and tabs only.
    mutating func skipBlanks() {
        while let byte = current, byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") { advance() }
    }

    /// The current column, 1-based, in characters.
    var column: Int { String(decoding: bytes[lineStart..<min(position, bytes.count)], as: UTF8.self).count + 1 }

    /// How a message names the byte at the current position.
    var found: String {
        guard let byte = current else { return "the end of the file" }
        switch byte {
        case UInt8(ascii: "\n"), UInt8(ascii: "\r"): return "the end of the line"
        case UInt8(ascii: " "): return "a space"
        case 0x21...0x7e: return "'\(Character(Unicode.Scalar(byte)))'"
        default: return "a byte 0x" + String(byte, radix: 16)
        }
    }

    func refusal(_ message: String) -> TOMLSyntaxError {
        TOMLSyntaxError(line: line, column: column, message: message)
    }

    /// Blanks and comments, and line ends too where `newlines`.
    mutating func skipSpace(newlines: Bool) {
        while let byte = current {
            switch byte {
            case UInt8(ascii: " "), UInt8(ascii: "\t"):
                advance()
            case UInt8(ascii: "\n"), UInt8(ascii: "\r"):
                guard newlines else { return }
                advance()
            case UInt8(ascii: "#"):
                while let next = current, next != UInt8(ascii: "\n") { advance() }
            default:
                return
            }
        }
    }

    /// What is left of a line after a header or a value: blanks and a comment.
    mutating func skipToEndOfLine() {
        while let byte = current, byte != UInt8(ascii: "\n") { advance() }
    }

    func checkDepth(_ path: [String], line: Int) throws(TOMLSyntaxError) {
        if path.count > maximumDepth {
            throw TOMLSyntaxError(line: line, message: "keys nest more than \(maximumDepth) tables deep")
        }
    }

    /// `a.b."c d"`: the components, decoded.
    mutating func keyPath() throws(TOMLSyntaxError) -> [String] {
        var components: [String] = []
        while true {
            skipSpace(newlines: false)
            let start = position
            components.append(try simpleKey())
            if components.count > maximumDepth { try checkDepth(components, line: line) }
            skipSpace(newlines: false)
            guard current == UInt8(ascii: "."), position > start else { return components }
            advance()
        }
    }

    mutating func simpleKey() throws(TOMLSyntaxError) -> String {
        switch current {
        case UInt8(ascii: "\""):
            return try basicString()
        case UInt8(ascii: "'"):
            advance()
            let start = position
            while let byte = current, byte != UInt8(ascii: "'"), byte != UInt8(ascii: "\n") { advance() }
            let key = String(decoding: bytes[start..<position], as: UTF8.self)
            advance()
            return key
        default:
            let start = position
            while let byte = current, TOMLKeyLocator.isBareKeyByte(byte) { advance() }
            return String(decoding: bytes[start..<position], as: UTF8.self)
        }
    }

    /// `key = value`, its key recorded under `table` (inline tables record theirs below it). `depth` counts the
    /// arrays and inline tables around it, so that nesting of either kind is bounded.
    mutating func keyValue(under table: [String], recording: Bool, depth: Int) throws(TOMLSyntaxError) {
        let keyLine = line
        let path = table + (try keyPath())
        try checkDepth(path, line: keyLine)
        if recording { locations.record(path, line: keyLine, header: false) }
        skipSpace(newlines: false)
        guard current == UInt8(ascii: "=") else { return }
        advance()
        skipSpace(newlines: false)
        try skipValue(path: path, recording: recording, depth: depth + 1)
    }

    mutating func skipValue(path: [String], recording: Bool, depth: Int) throws(TOMLSyntaxError) {
        guard let byte = current else { return }
        switch byte {
        case UInt8(ascii: "\""):
            if starts(with: "\"\"\"") { try multiLineString(quote: UInt8(ascii: "\"")) } else { _ = try basicString() }
        case UInt8(ascii: "'"):
            if starts(with: "'''") { try multiLineString(quote: UInt8(ascii: "'")) } else { skipLiteralString() }
        case UInt8(ascii: "["):
            guard depth <= maximumDepth else { throw TOMLSyntaxError(line: line, message: "arrays nest more than \(maximumDepth) levels deep") }
            advance()
            while true {
                skipSpace(newlines: true)
                guard let next = current else { return }
                if next == UInt8(ascii: "]") { advance(); return }
                if next == UInt8(ascii: ",") { advance(); continue }
                if next == UInt8(ascii: "}") { throw refusal("expected a value or ']' in an array, found '}'") }
                let start = position
                try skipValue(path: path, recording: false, depth: depth + 1)
                if position == start { advance() }
            }
        case UInt8(ascii: "{"):
            guard depth <= maximumDepth else { throw TOMLSyntaxError(line: line, message: "inline tables nest more than \(maximumDepth) levels deep") }
            advance()
            while true {
                skipSpace(newlines: true)
                guard let next = current else { return }
                if next == UInt8(ascii: "}") { advance(); return }
                if next == UInt8(ascii: ",") { advance(); continue }
                let start = position
                try keyValue(under: path, recording: recording, depth: depth)
                if position == start { advance() }
            }
        default:
            // A number, boolean, date or time: up to what ends a value (a date and time may hold a space).
            try checkDateTimeShape()
            while let next = current {
                switch next {
                case UInt8(ascii: ","), UInt8(ascii: "]"), UInt8(ascii: "}"), UInt8(ascii: "#"),
                     UInt8(ascii: "\n"), UInt8(ascii: "\r"):
                    return
                default:
                    advance()
                }
            }
        }
    }

    /// A scalar of ten bytes or more with `-` at offsets 4 and 7 (toml++ takes it for a date, whatever the other
    /// bytes) followed by `T` (or, ten bytes long, by a space and a digit) must go on with a time's `HH:`.
    /// See the type's comment; in valid TOML only a date and time has that shape, and its time starts so.
    func checkDateTimeShape() throws(TOMLSyntaxError) {
        func digit(_ offset: Int) -> Bool {
            guard let byte = peek(offset) else { return false }
            return byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")
        }
        var length = 0
        scan: while let byte = peek(length) {
            switch byte {
            case UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\n"), UInt8(ascii: "\r"), UInt8(ascii: ","),
                 UInt8(ascii: "]"), UInt8(ascii: "}"), UInt8(ascii: "#"):
                break scan
            default:
                length += 1
            }
        }
        guard length >= 10, peek(4) == UInt8(ascii: "-"), peek(7) == UInt8(ascii: "-") else { return }
        let separator = peek(10)
        let timed = (length > 10 && (separator == UInt8(ascii: "T") || separator == UInt8(ascii: "t")))
            || (length == 10 && separator == UInt8(ascii: " ") && digit(11))
        if timed && !(digit(11) && digit(12) && peek(13) == UInt8(ascii: ":")) {
            throw refusal("a date and time needs its time as HH:MM:SS after the date")
        }
    }

    /// A `"..."` string or key, decoded (keys need their text; a value's text is thrown away).
    mutating func basicString() throws(TOMLSyntaxError) -> String {
        advance()
        var result: [UInt8] = []
        while let byte = current, byte != UInt8(ascii: "\""), byte != UInt8(ascii: "\n") {
            if byte == UInt8(ascii: "\\") {
                try escape(into: &result)
            } else {
                result.append(byte)
                advance()
            }
        }
        advance()
        return String(decoding: result, as: UTF8.self)
    }

    mutating func skipLiteralString() {
        advance()
        while let byte = current, byte != UInt8(ascii: "'"), byte != UInt8(ascii: "\n") { advance() }
        advance()
    }

    /// `"""..."""` or `'''...'''`: up to three quotes in a row, which may be followed by two more that belong
    /// to the text.
    mutating func multiLineString(quote: UInt8) throws(TOMLSyntaxError) {
        advance(3)
        while let byte = current {
            if byte == quote, peek(1) == quote, peek(2) == quote {
                var run = 0
                while current == quote, run < 5 {
                    advance()
                    run += 1
                }
                return
            }
            if quote == UInt8(ascii: "\""), byte == UInt8(ascii: "\\") {
                var ignored: [UInt8] = []
                try escape(into: &ignored)
            } else {
                advance()
            }
        }
    }

    /// One escape of a basic string, at its backslash. `\u0000` is refused (see the type's comment).
    mutating func escape(into result: inout [UInt8]) throws(TOMLSyntaxError) {
        let backslash = position
        advance()
        guard let byte = current else { return }
        if let replacement = TOMLKeyLocator.simpleEscapes[byte] {
            result.append(replacement)
            advance()
            return
        }
        let digits: Int
        switch byte {
        case UInt8(ascii: "u"): digits = 4
        case UInt8(ascii: "U"): digits = 8
        default:
            // A line-ending backslash in a multi-line string (its blanks and line ends are skipped by the caller).
            return
        }
        advance()
        var code: UInt32 = 0
        for _ in 0..<digits {
            guard let hex = current, let nibble = TOMLKeyLocator.hexValue(hex) else { return }
            code = code << 4 | nibble
            advance()
        }
        if code == 0 {
            let column = String(decoding: bytes[lineStart..<backslash], as: UTF8.self).count + 1
            throw TOMLSyntaxError(line: line, column: column,
                                  message: "a \\u0000 escape: profiles take no nul characters (tomlkit would cut the string there)")
        }
        if let scalar = Unicode.Scalar(code) { result.append(contentsOf: Array(String(Character(scalar)).utf8)) }
    }

    static let simpleEscapes: [UInt8: UInt8] = [
        UInt8(ascii: "b"): 0x08, UInt8(ascii: "t"): 0x09, UInt8(ascii: "n"): 0x0a, UInt8(ascii: "f"): 0x0c,
        UInt8(ascii: "r"): 0x0d, UInt8(ascii: "\""): 0x22, UInt8(ascii: "\\"): 0x5c,
    ]

    static func hexValue(_ byte: UInt8) -> UInt32? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): UInt32(byte - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): UInt32(byte - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): UInt32(byte - UInt8(ascii: "A") + 10)
        default: nil
        }
    }
}
