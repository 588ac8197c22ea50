import ArgumentParser
import Foundation
import SEVImageKit

/// `sevimage firmware inspect OVMF.fd`: size, hashes, the GUIDed table and whether it can serve encrypted boot.
struct FirmwareInspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Show an OVMF image's GUIDed table, SEV metadata and whether it has a usable SEV secret area."
    )

    @Argument(help: "The OVMF flash image (OVMF.fd).")
    var firmware: String

    @Flag(help: "Print one JSON object on stdout.")
    var json = false

    func run() throws {
        let inspection = FirmwareInspection(try OVMFImage.load(path: firmware))
        if json {
            try Firmware.printJSON(inspection)
        } else {
            Console.write(inspection.text)
        }
    }
}

extension Firmware {
    /// One pretty, key-sorted JSON object and a newline on stdout.
    static func printJSON(_ value: some Encodable) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        var data = try encoder.encode(value)
        data.append(0x0A)
        JSONOutput.write(data)
    }

    /// An integer option in decimal or with a 0x prefix.
    static func integer(_ text: String, option: String, max: UInt64) throws -> UInt64 {
        let lower = text.lowercased()
        let value = lower.hasPrefix("0x") ? UInt64(lower.dropFirst(2), radix: 16) : UInt64(lower)
        guard let value, value <= max else {
            throw GeneralError.invalidArgument("\(option) \(text) is not an integer in 0...\(max) (decimal or 0x hex)")
        }
        return value
    }
}
