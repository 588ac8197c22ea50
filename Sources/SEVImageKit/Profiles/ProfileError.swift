/// Why a profile could not be used. Every message names the file and, where there is one, the line and key.
public enum ProfileError: SEVImageError, Equatable {
    /// The TOML reader refused the text (toml++'s message and position, or the reader's own checks).
    case syntax(file: String, line: Int, column: Int? = nil, message: String)
    /// A key the profile format does not have, with the closest known key if one is close.
    case unknownKey(file: String, line: Int, key: String, suggestion: String?)
    /// A `[table]` the profile format does not have.
    case unknownTable(file: String, line: Int, table: String, suggestion: String?)
    /// A key whose value has the wrong TOML type.
    case wrongType(file: String, line: Int, key: String, expected: String, found: String)
    /// A float where an integer or a size belongs.
    case notWholeNumber(file: String, line: Int, key: String, text: String)
    /// A value of the right type that is not allowed.
    case invalidValue(file: String, line: Int, key: String, message: String)
    /// A bare name that no profile directory and no built-in profile has.
    case notFound(name: String, searched: [String])
    /// A profile file that cannot be read.
    case unreadable(path: String, reason: String)
    /// `extends` leads back to a profile already in the chain.
    case cycle([String])

    public var exitStatus: ExitStatus { .invalidInput }

    /// One line, whatever bytes a profile held.
    public var description: String { printable(message) }

    private var message: String {
        switch self {
        case .syntax(let file, let line, let column, let message):
            return "profile \(file), line \(line)\(column.map { ", column \($0)" } ?? ""): \(message)"
        case .unknownKey(let file, let line, let key, let suggestion):
            let hint = suggestion.map { " (did you mean '\($0)'?)" } ?? ""
            return "profile \(file), line \(line): unknown key '\(key)'\(hint)"
        case .unknownTable(let file, let line, let table, let suggestion):
            let hint = suggestion.map { " (did you mean [\($0)]?)" } ?? ""
            return "profile \(file), line \(line): unknown table [\(table)]\(hint)"
        case .wrongType(let file, let line, let key, let expected, let found):
            return "profile \(file), line \(line): '\(key)' must be \(expected), not \(found)"
        case .notWholeNumber(let file, let line, _, let text):
            return "profile \(file), line \(line): floating-point numbers like '\(text)' are not supported; use a whole number"
        case .invalidValue(let file, let line, let key, let message):
            return "profile \(file), line \(line): '\(key)' \(message)"
        case .notFound(let name, let searched):
            return "no profile named '\(name)' (looked in \(searched.joined(separator: ", "))); give a path to a .toml file or run 'sevimage profiles list'"
        case .unreadable(let path, let reason):
            return "cannot read profile \(path): \(reason)"
        case .cycle(let chain):
            return "profile \(chain.first ?? "?") extends itself: \(chain.joined(separator: " -> "))"
        }
    }
}
