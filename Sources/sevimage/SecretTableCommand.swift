import ArgumentParser
import Foundation
import SEVImageKit

/// `sevimage secret table`: writes the padded secret table to a new 0600 file.
struct SecretTableCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "table",
        abstract: "Write the SEV secret table (disk passphrase entry and extra entries) to a new file.",
        discussion: """
        The table is what OVMF's secret area receives: the header GUID and length, the disk passphrase \
        entry (736869e5-84f0-4973-92ec-06879ce3da0b, the passphrase and one NUL, as GRUB requires), any \
        --entry, and zero padding to 16 bytes. The output is created exclusively with mode 0600; it is \
        as secret as the passphrase. Its size is checked against the secret area (--ovmf, --manifest, \
        --area-size; 3072 bytes by default).
        """
    )

    @OptionGroup var table: SecretTableOptions
    @OptionGroup var area: SecretAreaOptions

    @Option(name: .customLong("output"), help: "The table file to create (must not exist).")
    var output: String

    @Flag(name: .customLong("force"), help: "Replace an existing output file.")
    var force = false

    @Flag(name: .customLong("json"), help: "Print a JSON summary on stdout.")
    var json = false

    struct Summary: Encodable {
        var output: String
        var size: Int
        var areaSize: Int
        var entries: [SecretInspectCommand.EntryInfo]
    }

    func validate() throws {
        try checkOutputFileName(output)
    }

    func run() throws {
        let (areaSize, _) = try area.area()
        let bytes = try SecretTable.build(passphrase: try table.passphrase(), extra: try table.extraEntries(), areaSize: areaSize)
        if force && unlink(output) != 0 && errno != ENOENT {
            throw GeneralError.io("remove", path: output, errno: errno)
        }
        try SecretFile.writeNew(bytes, to: output)
        let decoded = try bytes.withUnsafeBytes { try SecretTable.decode($0) }
        let summary = Summary(output: output, size: bytes.count, areaSize: areaSize,
                              entries: decoded.entries.map { SecretInspectCommand.EntryInfo($0, showValue: false) })
        if json {
            try printSecretJSON(summary)
        } else {
            Console.write("wrote \(output): \(bytes.count) bytes (secret area \(areaSize)), \(summary.entries.count) entries, mode 0600\n")
        }
    }
}
