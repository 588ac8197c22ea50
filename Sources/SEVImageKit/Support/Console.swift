import Foundation

/// Where the tool talks to people: stderr only. Stdout carries results (`--json`) and nothing else.
public enum Console {
    nonisolated(unsafe) public static var quiet = false

    /// The one-line error message, prefixed with the tool's name.
    public static func error(_ message: String) {
        write("sevimage: error: \(message)\n")
    }

    public static func warning(_ message: String) {
        write("sevimage: warning: \(message)\n")
    }

    /// A step of the work, unless `--quiet`.
    public static func step(_ message: String) {
        guard !quiet else { return }
        write("\(message)\n")
    }

    public static func write(_ text: String) {
        FileHandle.standardError.write(Data(text.utf8))
    }

    /// Whether stderr is a terminal (progress bars) or a log (plain lines).
    public static var isTerminal: Bool { isatty(STDERR_FILENO) == 1 }
}
