import ArgumentParser
import Foundation
import SEVImageKit

/// `sevimage secret inspect`: decodes a table; values only with --show-values.
struct SecretInspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "List a secret table's entries (GUID, name, length) without their values unless asked."
    )

    @Argument(help: "The secret table file.")
    var tableFile: String

    @Flag(name: .customLong("show-values"), help: "Also print each entry's value (hex, and text when printable). This reveals secrets.")
    var showValues = false

    @Flag(name: .customLong("json"), help: "Print the result as JSON on stdout.")
    var json = false

    struct EntryInfo: Encodable {
        var offset: Int
        var guid: String
        var name: String?
        var length: Int
        var dataLength: Int
        var valueHex: String?
        var valueText: String?

        init(_ entry: SecretTable.DecodedEntry, showValue: Bool) {
            offset = entry.offset
            guid = entry.guid.description
            name = entry.knownName
            length = entry.length
            dataLength = entry.data.count
            if showValue {
                entry.data.withUnsafeBytes { bytes in
                    valueHex = hex(bytes)
                    var text = Array(bytes)
                    if text.last == 0 { text.removeLast() }
                    if text.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) { valueText = String(decoding: text, as: UTF8.self) }
                    text.withUnsafeMutableBytes { wipe($0) }
                }
            }
        }
    }

    struct Report: Encodable {
        var file: String
        var size: Int
        var totalLength: Int
        var padded: Bool
        var paddingIsZero: Bool
        var entries: [EntryInfo]
    }

    func run() throws {
        let bytes = try SecretFile.read(tableFile, what: "secret table", maxSize: 1 << 20)
        let decoded = try bytes.withUnsafeBytes { try SecretTable.decode($0) }
        let report = Report(file: tableFile, size: decoded.size, totalLength: decoded.totalLength, padded: decoded.isPadded,
                            paddingIsZero: decoded.paddingIsZero,
                            entries: decoded.entries.map { EntryInfo($0, showValue: showValues) })
        if json {
            try printSecretJSON(report)
            return
        }
        var text = "\(tableFile): secret table, \(report.size) bytes, total length \(report.totalLength), \(report.entries.count) entries\n"
        if !report.padded { text += "  warning: the size is not a multiple of 16; LAUNCH_SECRET needs 16-byte units\n" }
        if !report.paddingIsZero { text += "  warning: bytes after the last entry are not zero\n" }
        for entry in report.entries {
            text += "  \(entry.guid)  \(entry.name ?? "unknown")  \(entry.dataLength) bytes of data\n"
            if let valueHex = entry.valueHex {
                text += "    hex: \(valueHex)\n"
                if let valueText = entry.valueText { text += "    text: \(valueText)\n" }
            }
        }
        Console.write(text)
    }
}
