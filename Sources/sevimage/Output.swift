import Foundation
import SEVImageKit

/// Prints one JSON object on stdout: the whole of stdout for `--json`.
func printJSON(_ value: some Encodable) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    var data = try encoder.encode(value)
    data.append(0x0A)
    JSONOutput.write(data)
}

/// The `--json` contract: stdout holds exactly one JSON object whatever the outcome, the command's result or, when
/// the command fails before printing one, `{"error": {"exitStatus": N, "message": "..."}}` with the line stderr gets.
enum JSONOutput {
    /// Whether a result object went to stdout (verify's and launch's reports come before their exit 4).
    nonisolated(unsafe) static var printed = false

    /// Every JSON result goes through here.
    static func write(_ data: Data) {
        printed = true
        FileHandle.standardOutput.write(data)
    }

    /// Whether the command line asks for JSON: `--json` before any `--` (it may not have parsed).
    static var requested: Bool {
        CommandLine.arguments.dropFirst().prefix { $0 != "--" }.contains("--json")
    }

    /// The error object, unless a result was printed already.
    static func writeError(_ message: String, status: Int32) {
        guard requested, !printed else { return }
        struct Failure: Encodable {
            struct Detail: Encodable { var exitStatus: Int32; var message: String }
            var error: Detail
        }
        try? printJSON(Failure(error: .init(exitStatus: status, message: message)))
    }
}

/// The largest `SOURCE_DATE_EPOCH`: 2^33 − 1 (2242-03-16T12:56:31Z), the largest time in the 11 octal digits of
/// the ustar archive GRUB's memdisk is built from (GNU tar refused 2^33 after the whole root was built).
let maximumSourceDateEpoch: Int64 = (1 << 33) - 1

/// `SOURCE_DATE_EPOCH` from the environment, checked.
func sourceDateEpoch() throws -> Int64? {
    guard let text = ProcessInfo.processInfo.environment["SOURCE_DATE_EPOCH"], !text.isEmpty else { return nil }
    guard let value = Int64(text), value >= 0 else {
        throw GeneralError.invalidArgument("SOURCE_DATE_EPOCH must be a whole number of seconds, not '\(text)'")
    }
    guard value <= maximumSourceDateEpoch else {
        throw GeneralError.invalidArgument("SOURCE_DATE_EPOCH \(text) is after 2242-03-16T12:56:31Z: at most \(maximumSourceDateEpoch) (the tar format of GRUB's memdisk ends there)")
    }
    return value
}

/// Refuses, before any work, an output path that cannot name a file: empty, or ending in `/`, `.` or `..`.
func checkOutputFileName(_ path: String, option: String = "--output") throws {
    guard !path.isEmpty else { throw GeneralError.invalidArgument("\(option) is empty: give the name of the file to write") }
    if path.hasSuffix("/") {
        throw GeneralError.invalidArgument("\(option) \(path) ends with '/': give the name of a file, not a directory")
    }
    let name = PathName.name(of: path)
    if name == "." || name == ".." {
        throw GeneralError.invalidArgument("\(option) \(path) names a directory: give the name of a file")
    }
}
