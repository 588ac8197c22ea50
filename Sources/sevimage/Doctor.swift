import ArgumentParser
import Foundation
import SEVImageKit

/// `sevimage doctor`: the programs and data files sevimage uses at run time, and whether they are here.
struct DoctorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "List the programs and data files sevimage uses at run time, and check that they are installed.",
        discussion: """
            Each line: the program or file, where it was found (or MISSING), the Debian package that ships it, \
            and the commands that use it (with the case, when not always). Only create, firmware grub and boot \
            start programs; the other commands need nothing beyond the libraries sevimage links.

            --pipeline selects what a pipeline stage needs: every command but boot (QEMU and OVMF). The stage \
            image (scripts/build-stage-image.sh) installs exactly `sevimage doctor --pipeline --packages`.

            Exit status: 0 when nothing a selected command always needs is missing (a decompressor needed for \
            one kind of input, or libeatmydata, may be), 4 otherwise. --packages always exits 0.

            Example: sevimage doctor --command create --json
            """
    )

    @Option(name: .customLong("command"), help: ArgumentHelp("Only what this command needs (create, firmware grub, boot); repeatable.",
                                                              valueName: "name"))
    var commands: [String] = []

    @Flag(help: "Only what a pipeline stage needs: every command but boot.")
    var pipeline = false

    @Flag(help: "Print only the Debian packages, one a line (for apt-get install or mmdebstrap --include).")
    var packages = false

    @Flag(help: "Print one JSON object on stdout.")
    var json = false

    func validate() throws {
        let known = Set(RuntimeRequirements.commands)
        let leaf = Set(SEVImageCommand.configuration.subcommands.map { $0._commandName })
        for command in commands where !known.contains(command) {
            let top = String(command.split(separator: " ").first ?? "")
            if leaf.contains(top) || leaf.contains(command) {
                continue  // a real command that starts no program: nothing to list for it
            }
            throw ValidationError("unknown command '\(command)' for --command (for example: \(known.sorted().joined(separator: ", ")))")
        }
    }

    func run() throws {
        let selection = Set(commands)
        if packages {
            let list = RuntimeRequirements.packages(commands: selection, pipeline: pipeline)
            if json {
                try printJSON(["packages": list])
            } else {
                print(list.joined(separator: "\n"))
            }
            return
        }
        let report = RuntimeRequirements.check(commands: selection, pipeline: pipeline)
        if json {
            try printJSON(report)
        } else if report.entries.isEmpty {
            Console.write("sevimage: \(commands.joined(separator: ", ")) starts no program and reads no system file\n")
        } else {
            print(report.text, terminator: "")
        }
        if !report.passed {
            let missing = report.entries.filter(\.missingAndRequired).map { "\($0.name) (\($0.package))" }
            throw DoctorError.missing(missing)
        }
    }
}

/// Something a selected command always needs is not installed.
enum DoctorError: SEVImageError {
    case missing([String])

    var exitStatus: ExitStatus { .verificationFailed }

    var description: String {
        switch self {
        case .missing(let names):
            "missing: \(names.joined(separator: ", ")); install those Debian packages"
        }
    }
}
