import ArgumentParser
import Foundation
import SEVImageKit

/// `sevimage secret`: build, read and wrap the SEV secret table.
struct SecretCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "secret",
        abstract: "Build, inspect and package the SEV secret table that unlocks the disk.",
        subcommands: [SecretTableCommand.self, SecretInspectCommand.self, SecretPackageCommand.self]
    )
}

/// Options shared by the commands that build a secret table.
struct SecretTableOptions: ParsableArguments {
    @Option(name: .customLong("passphrase-file"), help: "The disk passphrase (one trailing newline is ignored).")
    var passphraseFile: String

    @Option(name: .customLong("entry"), help: ArgumentHelp("An extra secret table entry: the GUID and a file with its data. Repeatable.", valueName: "GUID=FILE"))
    var entries: [String] = []

    func passphrase() throws -> Passphrase { try Passphrase.read(from: passphraseFile) }

    func extraEntries() throws -> [SecretTable.Entry] {
        try entries.map { spec in
            guard let equals = spec.firstIndex(of: "="), let guid = GUID(String(spec[..<equals])) else {
                throw GeneralError.invalidArgument("--entry \(spec) is not GUID=FILE")
            }
            let path = String(spec[spec.index(after: equals)...])
            guard !path.isEmpty else { throw GeneralError.invalidArgument("--entry \(spec) names no file") }
            let data = try SecretFile.read(path, what: "secret entry file", maxSize: 64 * 1024)
            return SecretTable.Entry(guid: guid, data: data)
        }
    }
}

/// Where the secret area's size (and address) come from: an OVMF image, a manifest, or a number.
struct SecretAreaOptions: ParsableArguments {
    @Option(name: .customLong("ovmf"), help: "Read the secret area from this OVMF.fd's GUIDed table.")
    var ovmf: String?

    @Option(name: .customLong("manifest"), help: "Read the secret area from this image manifest's firmware section.")
    var manifest: String?

    @Option(name: .customLong("area-size"), help: "The secret area's size in bytes (default 3072, OVMF AmdSev's).")
    var areaSize: Int?

    func validate() throws {
        guard [ovmf != nil, manifest != nil, areaSize != nil].filter({ $0 }).count <= 1 else {
            throw ValidationError("give at most one of --ovmf, --manifest and --area-size")
        }
        if let areaSize, areaSize < 32 { throw ValidationError("--area-size must be at least 32 bytes") }
    }

    /// The area's size and, when known, its guest physical address.
    func area() throws -> (size: Int, gpa: UInt64?) {
        if let ovmf {
            let image = try OVMFImage.load(path: ovmf)
            guard let area = image.secretArea else {
                throw GeneralError.invalidArgument("\(ovmf) has no SEV secret area (not an OVMF AmdSev build)")
            }
            return (Int(area.size), UInt64(area.base))
        }
        if let manifest {
            let area = try GuestLaunch.secretArea(of: try loadManifest(manifest))
            return (Int(area.size), area.gpa)
        }
        return (areaSize ?? SecretTable.defaultAreaSize, nil)
    }
}

/// The transport keys: one 32-byte TK file, or separate TEK and TIK files.
struct TransportKeyOptions: ParsableArguments {
    @Option(name: .customLong("tk-file"), help: "The launch session's 32-byte TEK ‖ TIK file (sev-tool's tmp_tk.bin).")
    var tkFile: String?

    @Option(name: .customLong("tek-file"), help: "The 16-byte TEK, with --tik-file instead of --tk-file.")
    var tekFile: String?

    @Option(name: .customLong("tik-file"), help: "The 16-byte TIK, with --tek-file instead of --tk-file.")
    var tikFile: String?

    func validate() throws {
        switch (tkFile, tekFile, tikFile) {
        case (.some, nil, nil), (nil, .some, .some): break
        case (.some, _, _): throw ValidationError("give either --tk-file or --tek-file and --tik-file, not both")
        default: throw ValidationError("give --tk-file, or both --tek-file and --tik-file")
        }
    }

    func keys() throws -> TransportKeys {
        if let tkFile { return try TransportKeys.read(tkFile: tkFile) }
        guard let tekFile, let tikFile else { throw GeneralError.invalidArgument("give --tk-file, or both --tek-file and --tik-file") }
        return try TransportKeys.read(tekFile: tekFile, tikFile: tikFile)
    }
}

func loadManifest(_ path: String) throws -> Manifest {
    guard let data = FileManager.default.contents(atPath: path) else {
        throw GeneralError.io("read", path: path, errno: FileManager.default.fileExists(atPath: path) ? EACCES : ENOENT)
    }
    return try Manifest.decode(data, path: path)
}

/// Prints exactly one JSON object on stdout.
func printSecretJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    var data = try encoder.encode(value)
    data.append(0x0A)
    JSONOutput.write(data)
}

/// A GPA given as decimal or 0x-prefixed hex.
func parseGPA(_ text: String) throws -> UInt64 {
    let value = text.lowercased().hasPrefix("0x") ? UInt64(text.dropFirst(2), radix: 16) : UInt64(text)
    guard let value else { throw GeneralError.invalidArgument("--gpa \(text) is not a number (decimal or 0x hex)") }
    return value
}
