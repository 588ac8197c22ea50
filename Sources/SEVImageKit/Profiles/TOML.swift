/// A value of the TOML subset that profiles use.
public enum TOMLValue: Sendable, Equatable {
    case string(String)
    case integer(Int64)
    case boolean(Bool)
    case array([TOMLValue])

    /// The type's name as an error message says it ("expected an integer, found a string").
    public var typeDescription: String {
        switch self {
        case .string: "a string"
        case .integer: "an integer"
        case .boolean: "a boolean"
        case .array: "an array"
        }
    }
}

/// One `key = value` line, with the `[table]` it sits in ("" at the top level) and its line number.
public struct TOMLEntry: Sendable, Equatable {
    public var table: String
    public var key: String
    public var value: TOMLValue
    public var line: Int

    /// `table.key`, or `key` at the top level.
    public var qualifiedKey: String { table.isEmpty ? key : "\(table).\(key)" }
}

/// A `[table]` header and its line number.
public struct TOMLTable: Sendable, Equatable {
    public var name: String
    public var line: Int
}

/// What a TOML text holds: its entries in order, and its table headers (some tables may hold no key).
public struct TOMLDocument: Sendable, Equatable {
    public var entries: [TOMLEntry] = []
    public var tables: [TOMLTable] = []
}

/// A syntax error: the line it is on (1-based) and what is wrong, in lowercase.
public struct TOMLSyntaxError: Error, Sendable, Equatable {
    public var line: Int
    public var message: String
}

/// A reader for the part of TOML 1.0 that profiles need, and nothing more.
///
/// Supported: `#` comments, `[table]` headers with bare names, `key = value` with bare keys, basic strings
/// (`"..."` with `\b \t \n \f \r \" \\ \uXXXX \UXXXXXXXX`), literal strings (`'...'`), decimal integers
/// (with `_` between digits), `true`/`false`, and arrays of those (over several lines, trailing comma allowed).
/// Everything else TOML has (floats, dates, inline tables, arrays of tables, dotted or quoted keys, multi-line
/// strings, hexadecimal integers) is refused with the line number, never misread. The reader never traps:
/// every index is checked and nesting is bounded.
public enum TOMLReader {
    /// Arrays nest at most this deep (profiles need one level).
    static let maximumDepth = 8

    public static func parse(_ text: String) throws(TOMLSyntaxError) -> TOMLDocument {
        try parse(Array(text.utf8))
    }

    public static func parse(_ bytes: [UInt8]) throws(TOMLSyntaxError) -> TOMLDocument {
        var parser = Parser(bytes: bytes)
        return try parser.document()
    }
}

private struct Parser {
    let bytes: [UInt8]
    var position = 0
    var line = 1
    var entries: [TOMLEntry] = []
    var table = ""
    var tables: [String: Int] = [:]
    var keys: [String: Int] = [:]

    init(bytes: [UInt8]) {
        self.bytes = bytes
    }

    var current: UInt8? { position < bytes.count ? bytes[position] : nil }

    func peek(_ offset: Int) -> UInt8? {
        let index = position + offset
        return index >= 0 && index < bytes.count ? bytes[index] : nil
    }

    func fail(_ message: String) -> TOMLSyntaxError {
        TOMLSyntaxError(line: line, message: message)
    }

    /// How an error message names the byte at the current position.
    var found: String {
        guard let byte = current else { return "the end of the file" }
        switch byte {
        case UInt8(ascii: "\n"), UInt8(ascii: "\r"): return "the end of the line"
        case 0x21...0x7e: return "'\(Character(Unicode.Scalar(byte)))'"
        case UInt8(ascii: " "): return "a space"
        default: return String(format0x: byte)
        }
    }

    mutating func document() throws(TOMLSyntaxError) -> TOMLDocument {
        try checkEncoding()
        if bytes.starts(with: [0xef, 0xbb, 0xbf]) { position = 3 }
        while true {
            skipBlank()
            guard let byte = current else { break }
            switch byte {
            case UInt8(ascii: "\n"), UInt8(ascii: "\r"):
                try newline()
            case UInt8(ascii: "#"):
                try comment()
            case UInt8(ascii: "["):
                try tableHeader()
                try endOfLine()
            default:
                try keyValue()
                try endOfLine()
            }
        }
        return TOMLDocument(entries: entries, tables: tables.map { TOMLTable(name: $0.key, line: $0.value) }.sorted { $0.line < $1.line })
    }

    /// TOML files are UTF-8; report the first line that is not.
    func checkEncoding() throws(TOMLSyntaxError) {
        guard String(validating: bytes, as: UTF8.self) == nil else { return }
        var lineNumber = 1
        var start = 0
        for index in 0...bytes.count where index == bytes.count || bytes[index] == UInt8(ascii: "\n") {
            if String(validating: bytes[start..<index], as: UTF8.self) == nil {
                throw TOMLSyntaxError(line: lineNumber, message: "the text is not valid utf-8")
            }
            lineNumber += 1
            start = index + 1
        }
        throw TOMLSyntaxError(line: lineNumber, message: "the text is not valid utf-8")
    }

    mutating func skipBlank() {
        while let byte = current, byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") { position += 1 }
    }

    mutating func newline() throws(TOMLSyntaxError) {
        if current == UInt8(ascii: "\r") {
            guard peek(1) == UInt8(ascii: "\n") else { throw fail("a carriage return must be followed by a line feed") }
            position += 1
        }
        position += 1
        line += 1
    }

    /// Skips a comment up to (not including) the end of the line.
    mutating func comment() throws(TOMLSyntaxError) {
        position += 1
        while let byte = current, byte != UInt8(ascii: "\n") {
            if byte == UInt8(ascii: "\r") && peek(1) == UInt8(ascii: "\n") { break }
            if (byte < 0x20 && byte != UInt8(ascii: "\t")) || byte == 0x7f {
                throw fail("control character \(String(format0x: byte)) in a comment")
            }
            position += 1
        }
    }

    /// After a header or a value: only blanks and a comment may follow on the line.
    mutating func endOfLine() throws(TOMLSyntaxError) {
        skipBlank()
        if current == UInt8(ascii: "#") { try comment() }
        guard let byte = current else { return }
        guard byte == UInt8(ascii: "\n") || byte == UInt8(ascii: "\r") else {
            throw fail("expected the end of the line, found \(found)")
        }
        try newline()
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

    mutating func bareKey(what: String) throws(TOMLSyntaxError) -> String {
        if current == UInt8(ascii: "\"") || current == UInt8(ascii: "'") {
            throw fail("quoted \(what)s are not supported; use letters, digits, '_' and '-'")
        }
        let start = position
        while let byte = current, Parser.isBareKeyByte(byte) { position += 1 }
        guard position > start else { throw fail("expected a \(what), found \(found)") }
        return String(decoding: bytes[start..<position], as: UTF8.self)
    }

    mutating func tableHeader() throws(TOMLSyntaxError) {
        position += 1
        if current == UInt8(ascii: "[") { throw fail("arrays of tables ([[...]]) are not supported") }
        skipBlank()
        let name = try bareKey(what: "table name")
        skipBlank()
        if current == UInt8(ascii: ".") { throw fail("dotted table names are not supported") }
        guard current == UInt8(ascii: "]") else { throw fail("expected ']' after the table name, found \(found)") }
        position += 1
        if let first = tables[name] { throw fail("table [\(name)] is defined twice (first on line \(first))") }
        tables[name] = line
        table = name
    }

    mutating func keyValue() throws(TOMLSyntaxError) {
        let key = try bareKey(what: "key")
        skipBlank()
        if current == UInt8(ascii: ".") { throw fail("dotted keys are not supported; put '\(key)' under a [\(key)] table header") }
        guard current == UInt8(ascii: "=") else { throw fail("expected '=' after '\(key)', found \(found)") }
        position += 1
        skipBlank()
        let startLine = line
        let value = try self.value(depth: 0)
        let qualified = table.isEmpty ? key : "\(table).\(key)"
        if let first = keys[qualified] {
            throw TOMLSyntaxError(line: startLine, message: "key '\(qualified)' is defined twice (first on line \(first))")
        }
        keys[qualified] = startLine
        entries.append(TOMLEntry(table: table, key: key, value: value, line: startLine))
    }

    mutating func value(depth: Int) throws(TOMLSyntaxError) -> TOMLValue {
        guard let byte = current else { throw fail("expected a value, found the end of the file") }
        switch byte {
        case UInt8(ascii: "\""):
            if peek(1) == UInt8(ascii: "\"") && peek(2) == UInt8(ascii: "\"") {
                throw fail("multi-line strings (\"\"\") are not supported")
            }
            return .string(try basicString())
        case UInt8(ascii: "'"):
            if peek(1) == UInt8(ascii: "'") && peek(2) == UInt8(ascii: "'") {
                throw fail("multi-line strings (''') are not supported")
            }
            return .string(try literalString())
        case UInt8(ascii: "["):
            guard depth < TOMLReader.maximumDepth else { throw fail("arrays nest too deeply") }
            return .array(try array(depth: depth + 1))
        case UInt8(ascii: "{"):
            throw fail("inline tables ({...}) are not supported; use a [table] header")
        case UInt8(ascii: "t"), UInt8(ascii: "f"):
            return .boolean(try boolean())
        case UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "i"), UInt8(ascii: "n"):
            return .integer(try integer())
        default:
            throw fail("expected a value (a string, an integer, true, false or an array), found \(found)")
        }
    }

    mutating func basicString() throws(TOMLSyntaxError) -> String {
        position += 1
        var result: [UInt8] = []
        while true {
            guard let byte = current, byte != UInt8(ascii: "\n"), byte != UInt8(ascii: "\r") else {
                throw fail("unterminated string: a closing '\"' is missing")
            }
            position += 1
            switch byte {
            case UInt8(ascii: "\""):
                return String(decoding: result, as: UTF8.self)
            case UInt8(ascii: "\\"):
                try escape(into: &result)
            case 0x00..<0x20 where byte != UInt8(ascii: "\t"), 0x7f:
                throw fail("control character \(String(format0x: byte)) in a string; write it as an escape")
            default:
                result.append(byte)
            }
        }
    }

    mutating func escape(into result: inout [UInt8]) throws(TOMLSyntaxError) {
        guard let byte = current else { throw fail("unterminated string: a closing '\"' is missing") }
        position += 1
        let simple: [UInt8: UInt8] = [
            UInt8(ascii: "b"): 0x08, UInt8(ascii: "t"): 0x09, UInt8(ascii: "n"): 0x0a, UInt8(ascii: "f"): 0x0c,
            UInt8(ascii: "r"): 0x0d, UInt8(ascii: "\""): 0x22, UInt8(ascii: "\\"): 0x5c,
        ]
        if let replacement = simple[byte] {
            result.append(replacement)
            return
        }
        let digits: Int
        switch byte {
        case UInt8(ascii: "u"): digits = 4
        case UInt8(ascii: "U"): digits = 8
        default:
            position -= 1
            throw fail("unknown escape '\\\(found.trimmingQuotes)' in a string")
        }
        var code: UInt32 = 0
        for _ in 0..<digits {
            guard let hex = current, let nibble = Parser.hexValue(hex) else {
                throw fail("\\\(Character(Unicode.Scalar(byte))) needs \(digits) hexadecimal digits")
            }
            code = code << 4 | nibble
            position += 1
        }
        guard let scalar = Unicode.Scalar(code) else {
            throw fail("escape \\\(Character(Unicode.Scalar(byte)))\(String(code, radix: 16)) is not a unicode scalar value")
        }
        result.append(contentsOf: Array(String(Character(scalar)).utf8))
    }

    static func hexValue(_ byte: UInt8) -> UInt32? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): UInt32(byte - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): UInt32(byte - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): UInt32(byte - UInt8(ascii: "A") + 10)
        default: nil
        }
    }

    mutating func literalString() throws(TOMLSyntaxError) -> String {
        position += 1
        let start = position
        while true {
            guard let byte = current, byte != UInt8(ascii: "\n"), byte != UInt8(ascii: "\r") else {
                throw fail("unterminated string: a closing \"'\" is missing")
            }
            if byte == UInt8(ascii: "'") { break }
            if (byte < 0x20 && byte != UInt8(ascii: "\t")) || byte == 0x7f {
                throw fail("control character \(String(format0x: byte)) in a string")
            }
            position += 1
        }
        let text = String(decoding: bytes[start..<position], as: UTF8.self)
        position += 1
        return text
    }

    /// Blanks, line ends and comments between array elements.
    mutating func skipArraySpace() throws(TOMLSyntaxError) {
        while let byte = current {
            switch byte {
            case UInt8(ascii: " "), UInt8(ascii: "\t"): position += 1
            case UInt8(ascii: "\n"), UInt8(ascii: "\r"): try newline()
            case UInt8(ascii: "#"): try comment()
            default: return
            }
        }
    }

    mutating func array(depth: Int) throws(TOMLSyntaxError) -> [TOMLValue] {
        let openingLine = line
        position += 1
        var elements: [TOMLValue] = []
        while true {
            try skipArraySpace()
            guard let byte = current else {
                throw TOMLSyntaxError(line: openingLine, message: "unterminated array: a closing ']' is missing")
            }
            if byte == UInt8(ascii: "]") {
                position += 1
                return elements
            }
            elements.append(try value(depth: depth))
            try skipArraySpace()
            switch current {
            case UInt8(ascii: ","): position += 1
            case UInt8(ascii: "]"): continue
            case nil: throw TOMLSyntaxError(line: openingLine, message: "unterminated array: a closing ']' is missing")
            default: throw fail("expected ',' or ']' in an array, found \(found)")
            }
        }
    }

    /// The bytes of a number, boolean or date-like token: up to a delimiter.
    mutating func token() -> [UInt8] {
        let start = position
        while let byte = current {
            switch byte {
            case UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\n"), UInt8(ascii: "\r"), UInt8(ascii: "#"),
                 UInt8(ascii: ","), UInt8(ascii: "]"), UInt8(ascii: "["), UInt8(ascii: "="), UInt8(ascii: "\""),
                 UInt8(ascii: "'"), UInt8(ascii: "{"), UInt8(ascii: "}"):
                return Array(bytes[start..<position])
            default:
                position += 1
            }
        }
        return Array(bytes[start..<position])
    }

    mutating func boolean() throws(TOMLSyntaxError) -> Bool {
        let text = printable(String(decoding: token(), as: UTF8.self))
        switch text {
        case "true": return true
        case "false": return false
        default: throw fail("expected true or false, found '\(text)' (strings need quotes)")
        }
    }

    mutating func integer() throws(TOMLSyntaxError) -> Int64 {
        let bytes = token()
        let text = printable(String(decoding: bytes, as: UTF8.self))
        var digits = bytes[...]
        var negative = false
        if let sign = digits.first, sign == UInt8(ascii: "+") || sign == UInt8(ascii: "-") {
            negative = sign == UInt8(ascii: "-")
            digits = digits.dropFirst()
        }
        let lowered = text.lowercased()
        let looksLikeDate = bytes.count >= 5 && bytes.prefix(4).allSatisfy { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
            && bytes[4] == UInt8(ascii: "-")
        if looksLikeDate || text.contains(":") {
            throw fail("dates and times like '\(text)' are not supported")
        }
        if lowered.hasSuffix("inf") || lowered.hasSuffix("nan") || lowered.contains(".") || lowered.contains("e") {
            throw fail("floating-point numbers like '\(text)' are not supported; use a whole number")
        }
        if digits.count > 1, digits.first == UInt8(ascii: "0") {
            if let second = digits.dropFirst().first, second == UInt8(ascii: "x") || second == UInt8(ascii: "o") || second == UInt8(ascii: "b") {
                throw fail("hexadecimal, octal and binary integers like '\(text)' are not supported; use decimal")
            }
            throw fail("integers must not have leading zeros: '\(text)'")
        }
        var value: Int64 = 0
        var previousWasDigit = false
        for byte in digits {
            if byte == UInt8(ascii: "_") {
                guard previousWasDigit else { throw fail("'_' must sit between digits in '\(text)'") }
                previousWasDigit = false
                continue
            }
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else {
                throw fail("invalid integer '\(text)' (strings need quotes)")
            }
            let digit = Int64(byte - UInt8(ascii: "0"))
            let (times, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = negative ? times.subtractingReportingOverflow(digit) : times.addingReportingOverflow(digit)
            if overflow1 || overflow2 { throw fail("integer '\(text)' is out of range") }
            value = sum
            previousWasDigit = true
        }
        guard previousWasDigit else {
            if digits.isEmpty { throw fail("invalid integer '\(text)'") }
            throw fail("'_' must sit between digits in '\(text)'")
        }
        return value
    }
}

private extension String {
    init(format0x byte: UInt8) {
        let hex = String(byte, radix: 16)
        self = "byte 0x" + (hex.count < 2 ? "0" + hex : hex)
    }

    var trimmingQuotes: String {
        hasPrefix("'") && hasSuffix("'") && count >= 2 ? String(dropFirst().dropLast()) : self
    }
}

/// A user's text made safe for a one-line message: control characters become `\u{..}` escapes.
func printable(_ text: String) -> String {
    var result = ""
    for scalar in text.unicodeScalars {
        if scalar.value < 0x20 || (0x7f...0x9f).contains(scalar.value) || scalar == "\u{2028}" || scalar == "\u{2029}" {
            result += "\\u{" + String(scalar.value, radix: 16) + "}"
        } else {
            result.unicodeScalars.append(scalar)
        }
    }
    return result
}
