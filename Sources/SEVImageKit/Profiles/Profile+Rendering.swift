import Foundation

extension Profile {
    /// The profile as a complete TOML file: every key, each with its one-line summary as a comment.
    /// Reading the text back gives the same profile.
    public func tomlText(header: [String] = []) -> String {
        var lines = header.map { "# " + $0 }
        for table in Profile.tables {
            if !lines.isEmpty { lines.append("") }
            lines.append("[\(table)]")
            for key in Profile.keys where key.table == table {
                lines.append("# \(key.summary)")
                lines.append("\(key.key) = \(key.get(self).tomlText)")
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// The profile as JSON, laid out like the TOML file (`{"image": {"size": 8589934592}, ...}`), sizes in bytes.
    public func jsonData(chain: [String] = []) throws -> Data {
        var object: [String: Any] = ["name": name]
        if !chain.isEmpty { object["chain"] = chain }
        for table in Profile.tables {
            var values: [String: Any] = [:]
            for key in Profile.keys where key.table == table {
                values[key.key] = jsonValue(key.get(self), sizeKey: key.key == "size")
            }
            object[table] = values
        }
        return try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
    }

    private func jsonValue(_ value: TOMLValue, sizeKey: Bool) -> Any {
        switch value {
        case .string(let text):
            if sizeKey, let bytes = try? parseSize(text) { return bytes }
            return text
        case .integer(let number): return number
        case .boolean(let flag): return flag
        case .array(let values): return values.map { jsonValue($0, sizeKey: false) }
        // No key's getter gives these; written as TOML would, should one ever.
        case .float, .date, .time, .dateTime, .table: return value.tomlText
        }
    }
}
