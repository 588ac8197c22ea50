import TOMLKit

/// A TOML value as profiles see it, converted from what TOMLKit (toml++) parsed.
public enum TOMLValue: Sendable, Equatable {
    case string(String)
    case integer(Int64)
    case boolean(Bool)
    case array([TOMLValue])
    case float(Double)
    /// A local date, time, or a date and time (offset or local), as TOML writes it: `1979-05-27`,
    /// `07:32:00`, `1979-05-27T07:32:00Z`. No profile key takes one; only error messages look at them.
    case date(String)
    case time(String)
    case dateTime(String)
    /// A table that holds no key (`image = {}`), or a table inside an array (`[[x]]`, `[{ a = 1 }]`).
    /// Tables with keys outside arrays are flattened into `TOMLEntry` values, one per key path.
    case table([String: TOMLValue])

    /// The type's name as an error message says it ("expected an integer, found a string").
    public var typeDescription: String {
        switch self {
        case .string: "a string"
        case .integer: "an integer"
        case .boolean: "a boolean"
        case .array: "an array"
        case .float: "a float"
        case .date: "a date"
        case .time: "a time"
        case .dateTime: "a date and time"
        case .table: "a table"
        }
    }
}

/// One value at the end of a key path, with the table it sits in and the line its key is on.
///
/// `[boot]\nkernel_cmdline = "x"`, `boot.kernel_cmdline = "x"` and `boot = { kernel_cmdline = "x" }` all give
/// table `boot`, key `kernel_cmdline`. Components that are not bare keys are written quoted, as TOML would
/// (`"a.b"`), so that `table` and `key` name one path only.
public struct TOMLEntry: Sendable, Equatable {
    public var table: String
    public var key: String
    public var value: TOMLValue
    public var line: Int

    /// `table.key`, or `key` at the top level.
    public var qualifiedKey: String { table.isEmpty ? key : "\(table).\(key)" }
}

/// A `[table]` header and its line number (the tables `[[...]]` headers make are array values instead).
public struct TOMLTable: Sendable, Equatable {
    public var name: String
    public var line: Int
}

/// What a TOML text holds: its values in the order their keys appear, and its `[table]` headers.
public struct TOMLDocument: Sendable, Equatable {
    public var entries: [TOMLEntry] = []
    public var tables: [TOMLTable] = []
}

/// Why a text is not a TOML document: the line (1-based), the column where known, and what is wrong.
public struct TOMLSyntaxError: Error, Sendable, Equatable {
    public var line: Int
    public var column: Int? = nil
    public var message: String
}

/// Reads TOML 1.0 with TOMLKit (toml++ 3.4), and gives each value the line of its key.
///
/// toml++ checks the syntax and builds the values; TOMLKit does not hand out the source positions toml++
/// keeps for each node, so `TOMLKeyLocator` finds the line of every key path in the text (it reads keys and
/// table headers, and skips over values without interpreting them). Some things are checked before toml++
/// sees the text. TOMLKit passes text and strings as C strings, so the text must be UTF-8 (line given) and
/// hold no NUL byte, and no string or key may hold a `\u0000` escape (toml++ would read it, TOMLKit would cut
/// the string there). A few invalid texts reach an assertion inside toml++ 3.4.0; the locator refuses them
/// first. The reader never traps: tables and arrays nest at most `maximumDepth` deep.
///
/// TOMLKit 0.6.0 never frees a parsed table (`TOMLTable` has no `deinit`): each parse leaks the document's
/// nodes, a few KiB for a profile. `sevimage` reads a handful of profiles per run.
public enum TOMLReader {
    /// Tables and arrays nest at most this deep (profiles need two levels; toml++ allows arrays 256).
    static let maximumDepth = 64

    public static func parse(_ text: String) throws(TOMLSyntaxError) -> TOMLDocument {
        try parse(Array(text.utf8))
    }

    public static func parse(_ bytes: [UInt8]) throws(TOMLSyntaxError) -> TOMLDocument {
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw TOMLSyntaxError(line: firstInvalidUTF8Line(bytes), message: "the text is not valid utf-8")
        }
        if let nul = bytes.firstIndex(of: 0) {
            let (line, column) = position(of: nul, in: bytes)
            throw TOMLSyntaxError(line: line, column: column, message: "a nul byte (0x00), which toml does not allow")
        }
        // Before toml++: the locator also refuses what toml++ 3.4 must not see (see TOMLKeyLocator).
        let locations = try TOMLKeyLocator.locate(bytes, maximumDepth: maximumDepth)
        let root: TOMLKit.TOMLTable
        do {
            root = try TOMLKit.TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw TOMLSyntaxError(line: max(1, error.source.begin.line), column: max(1, error.source.begin.column),
                                  message: printable(lowercasedFirst(error.description)))
        } catch {
            throw TOMLSyntaxError(line: 1, message: "toml could not be read: \(error)")
        }
        return try document(root, locations: locations)
    }

    // MARK: - From TOMLKit's tree to entries

    static func document(_ root: TOMLKit.TOMLTable, locations: TOMLKeyLocations) throws(TOMLSyntaxError) -> TOMLDocument {
        var leaves: [(path: [String], value: TOMLValue)] = []
        // Depth first, without recursion: a table's keys below its own path.
        var pending: [(path: [String], table: TOMLKit.TOMLTable)] = [([], root)]
        while let (path, table) = pending.popLast() {
            if path.count > maximumDepth { throw tooDeep(path, locations) }
            if table.isEmpty && !path.isEmpty && !locations.isHeader(path) {
                leaves.append((path, .table([:])))
                continue
            }
            for (key, member) in table {
                let memberPath = path + [key]
                if member.type == .table, let inner = member.table {
                    pending.append((memberPath, inner))
                } else {
                    leaves.append((memberPath, try value(member, depth: 1, path: memberPath, locations: locations)))
                }
            }
        }
        let ordered = leaves.map { leaf in (leaf, locations.place(of: leaf.path)) }
            .sorted { $0.1.order < $1.1.order }
        var result = TOMLDocument()
        result.entries = ordered.map { leaf, place in
            TOMLEntry(table: displayPath(leaf.path.dropLast()), key: displayPath(leaf.path.suffix(1)),
                      value: leaf.value, line: place.line)
        }
        result.tables = locations.headers.map { TOMLTable(name: displayPath($0.path[...]), line: $0.line) }
        return result
    }

    static func value(_ node: TOMLValueConvertible, depth: Int, path: [String],
                      locations: TOMLKeyLocations) throws(TOMLSyntaxError) -> TOMLValue {
        switch node.type {
        case .string: return .string(node.string ?? "")
        case .int: return .integer(Int64(node.int ?? 0))
        case .bool: return .boolean(node.bool ?? false)
        case .double: return .float(node.double ?? .nan)
        case .date:
            guard let date = node.date else { return .date("") }
            return .date(dateText(date))
        case .time:
            guard let time = node.time else { return .time("") }
            return .time(timeText(time))
        case .dateTime:
            guard let dateTime = node.dateTime else { return .dateTime("") }
            return .dateTime(dateTimeText(dateTime))
        case .array:
            guard depth <= maximumDepth else { throw tooDeep(path, locations) }
            var elements: [TOMLValue] = []
            for element in node.array ?? TOMLArray() {
                elements.append(try value(element, depth: depth + 1, path: path, locations: locations))
            }
            return .array(elements)
        case .table:
            guard depth <= maximumDepth else { throw tooDeep(path, locations) }
            var members: [String: TOMLValue] = [:]
            for (key, member) in node.table ?? TOMLKit.TOMLTable() {
                members[key] = try value(member, depth: depth + 1, path: path, locations: locations)
            }
            return .table(members)
        }
    }

    static func tooDeep(_ path: [String], _ locations: TOMLKeyLocations) -> TOMLSyntaxError {
        TOMLSyntaxError(line: locations.place(of: Array(path.prefix(1))).line,
                        message: "tables or arrays nest more than \(maximumDepth) levels deep")
    }

    // MARK: - Text

    /// Key path components joined with dots, each written as a bare key where it can be and quoted otherwise.
    static func displayPath(_ components: ArraySlice<String>) -> String {
        components.map { component in
            let bare = !component.isEmpty && component.utf8.allSatisfy(TOMLKeyLocator.isBareKeyByte)
            return bare ? component : TOMLValue.string(component).tomlText
        }.joined(separator: ".")
    }

    static func dateText(_ date: TOMLDate) -> String {
        padded(date.year, 4) + "-" + padded(date.month, 2) + "-" + padded(date.day, 2)
    }

    static func timeText(_ time: TOMLTime) -> String {
        var text = padded(time.hour, 2) + ":" + padded(time.minute, 2) + ":" + padded(time.second, 2)
        if time.nanoSecond != 0 {
            var fraction = padded(time.nanoSecond, 9)
            while fraction.hasSuffix("0") { fraction.removeLast() }
            text += "." + fraction
        }
        return text
    }

    static func dateTimeText(_ dateTime: TOMLDateTime) -> String {
        var text = dateText(dateTime.date) + "T" + timeText(dateTime.time)
        if let offset = dateTime.offset?.offset {
            text += offset == 0 ? "Z" : (offset < 0 ? "-" : "+") + padded(abs(offset) / 60, 2) + ":" + padded(abs(offset) % 60, 2)
        }
        return text
    }

    static func padded(_ number: Int, _ width: Int) -> String {
        let digits = String(number)
        return String(repeating: "0", count: max(0, width - digits.count)) + digits
    }

    static func lowercasedFirst(_ text: String) -> String {
        guard let first = text.first else { return "invalid toml" }
        return first.lowercased() + text.dropFirst()
    }

    /// The line and column (1-based, in characters) of a byte offset in valid UTF-8.
    static func position(of offset: Int, in bytes: [UInt8]) -> (line: Int, column: Int) {
        var line = 1, column = 1
        for byte in bytes[..<offset] {
            if byte == UInt8(ascii: "\n") {
                line += 1
                column = 1
            } else if byte & 0xc0 != 0x80 {
                column += 1
            }
        }
        return (line, column)
    }

    /// TOML files are UTF-8; the first line that is not.
    static func firstInvalidUTF8Line(_ bytes: [UInt8]) -> Int {
        var lineNumber = 1
        var start = 0
        for index in 0...bytes.count where index == bytes.count || bytes[index] == UInt8(ascii: "\n") {
            if String(validating: bytes[start..<index], as: UTF8.self) == nil { return lineNumber }
            lineNumber += 1
            start = index + 1
        }
        return lineNumber
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
