import ArgumentParser
import Foundation
import SEVImageKit

/// The root command: only the list of subcommands. Each subcommand lives in its own file.
struct SEVImageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sevimage",
        abstract: "Provision encrypted disk images for confidential VMs on AMD SEV.",
        version: SEVImageKit.version,
        subcommands: [
            Create.self,
            SecretCommand.self,
            LaunchCommand.self,
            Firmware.self,
            ProfilesCommand.self,
            BootCommand.self,
            InspectCommand.self,
            VerifyCommand.self,
            LinkCommand.self,
            Rotate.self,
            Reencrypt.self,
            KeysCommand.self,
            ExportCommand.self,
            DoctorCommand.self,
        ]
    )
}

@main
enum Main {
    static func main() {
        ProcessHardening.disableCoreDumps()
        installSignalHandlers()
        do {
            var command = try SEVImageCommand.parseAsRoot()
            try command.run()
        } catch {
            exitAfter(error)
        }
    }

    /// One line on stderr and the contract's exit status (with `--json`, also the error object on stdout);
    /// help and version go through unchanged.
    static func exitAfter(_ error: Error) -> Never {
        Interruption.waitIfInterrupted()
        switch error {
        case let error as SEVImageError:
            fail(error.description, status: error.exitStatus.rawValue)
        case let error as ExitCode:
            exit(error.rawValue)
        default:
            // A Foundation file error: what failed, on which path, exit 1 like every other I/O failure.
            if let io = GeneralError(foundation: error) {
                fail(io.description, status: io.exitStatus.rawValue)
            }
            let code = SEVImageCommand.exitCode(for: error)
            if code == .success { SEVImageCommand.exit(withError: error) }
            let message = SEVImageCommand.message(for: error)
                .split(separator: "\n").first.map(String.init) ?? "invalid arguments"
            fail("\(message.replacingOccurrences(of: "Error: ", with: "").lowercasedFirst) (see --help)", status: ExitStatus.invalidInput.rawValue)
        }
    }

    static func fail(_ message: String, status: Int32) -> Never {
        Console.error(message)
        JSONOutput.writeError(message, status: status)
        exit(status)
    }
}

extension String {
    var lowercasedFirst: String { prefix(1).lowercased() + dropFirst() }
}
