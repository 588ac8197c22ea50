import Foundation
import SEVImageKit

/// Prints one JSON object on stdout: the whole of stdout for `--json`.
func printJSON(_ value: some Encodable) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    var data = try encoder.encode(value)
    data.append(0x0A)
    FileHandle.standardOutput.write(data)
}

/// `SOURCE_DATE_EPOCH` from the environment, checked.
func sourceDateEpoch() throws -> Int64? {
    guard let text = ProcessInfo.processInfo.environment["SOURCE_DATE_EPOCH"], !text.isEmpty else { return nil }
    guard let value = Int64(text), value >= 0 else {
        throw GeneralError.invalidArgument("SOURCE_DATE_EPOCH must be a whole number of seconds, not '\(text)'")
    }
    return value
}
