import ArgumentParser
import Foundation
import SEVImageKit

/// `sevimage secret package`: wraps a table into a LAUNCH_SECRET packet for a given launch measurement.
struct SecretPackageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "package",
        abstract: "Wrap the secret table into the LAUNCH_SECRET packet QMP's sev-inject-launch-secret takes.",
        discussion: """
        The packet header (52 bytes: flags, a random IV, the HMAC-SHA256 under the TIK over the packet \
        and the launch measurement) and the payload (the table encrypted with AES-128-CTR under the TEK) \
        are printed in base64, with the secret area's GPA when --gpa, --manifest or --ovmf gives it. \
        This command does not check the measurement: `sevimage launch` does, then injects.
        """
    )

    @OptionGroup var table: SecretTableOptions
    @OptionGroup var keys: TransportKeyOptions
    @OptionGroup var area: SecretAreaOptions

    @Option(name: .customLong("launch-measure"), help: "query-sev-launch-measure's data: base64 of measurement (32) ‖ nonce (16).")
    var launchMeasure: String

    @Option(name: .customLong("gpa"), help: "The secret area's guest physical address (decimal or 0x hex).")
    var gpa: String?

    @Flag(name: .customLong("json"), help: "Print the packet as JSON on stdout.")
    var json = false

    struct Output: Encodable {
        var packetHeader: String
        var secret: String
        var gpa: UInt64?
        var tableSize: Int
        enum CodingKeys: String, CodingKey {
            case packetHeader = "packet-header", secret, gpa, tableSize
        }
    }

    func run() throws {
        let measure = try LaunchMeasure(base64: launchMeasure)
        let (areaSize, areaGPA) = try area.area()
        let explicitGPA = try gpa.map(parseGPA)
        let bytes = try SecretTable.build(passphrase: try table.passphrase(), extra: try table.extraEntries(), areaSize: areaSize)
        let packet = try LaunchSecretPacket(table: bytes, keys: try keys.keys(), measurement: measure.measurement)
        let output = Output(packetHeader: packet.headerBase64, secret: packet.payloadBase64, gpa: explicitGPA ?? areaGPA, tableSize: bytes.count)
        if json {
            try printSecretJSON(output)
        } else {
            var text = "packet-header: \(output.packetHeader)\nsecret: \(output.secret)\n"
            text += "gpa: \(output.gpa.map { "0x" + String($0, radix: 16) } ?? "unknown (QEMU finds it in the firmware's table when gpa is left out)")\n"
            Console.write(text)
        }
    }
}
