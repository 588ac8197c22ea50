import ArgumentParser
import Foundation
import SEVImageKit

/// `sevimage keys list|add|remove`: an image's keyslots, changed in place like `rotate` does.
struct KeysCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys",
        abstract: "List, add and remove an image's LUKS keyslots (e.g. a recovery passphrase a person types).",
        subcommands: [KeysList.self, KeysAdd.self, KeysRemove.self]
    )
}

struct KeysList: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "Show the keyslots: PBKDF, hash, iterations, priority and the manifest's role.",
        discussion: "Example: sevimage keys list vm.qcow2 --json"
    )

    @Argument(help: "The QCOW2 image.")
    var image: String

    @Flag(help: "Print one JSON object on stdout.")
    var json = false

    func run() throws {
        let listing = try Keyslots.list(image: image)
        if json { return try printJSON(listing) }
        var lines = ["\(image): LUKS2 \(listing.luksUUID)", "slot  pbkdf   hash    iterations  priority  role"]
        for slot in listing.keyslots {
            func column(_ text: String, _ width: Int) -> String { text.padding(toLength: max(width, text.count), withPad: " ", startingAt: 0) }
            let iterations = String(slot.iterations)
            lines.append(String(repeating: " ", count: max(0, 4 - String(slot.slot).count)) + "\(slot.slot)  " + column(slot.pbkdf, 6) + "  "
                         + column(slot.hash, 6) + "  " + String(repeating: " ", count: max(0, 10 - iterations.count)) + iterations + "  "
                         + column(slot.priority, 8) + "  " + (slot.role ?? "-"))
        }
        Console.write(lines.joined(separator: "\n") + "\n")
    }
}

struct KeysAdd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add",
        abstract: "Add a PBKDF2 keyslot for another passphrase, by default a recovery passphrase with the profile's costly iteration count.",
        discussion: "Example: sevimage keys add vm.qcow2 --passphrase-file vm.passphrase --new-passphrase-file recovery.txt"
    )

    @Argument(help: "The QCOW2 image.")
    var image: String

    @Option(help: ArgumentHelp("A passphrase that opens the image now.", valueName: "file"))
    var passphraseFile: String

    @Option(help: ArgumentHelp("The passphrase for the new keyslot.", valueName: "file"))
    var newPassphraseFile: String

    @Option(help: ArgumentHelp("The new keyslot's role in the manifest: recovery, given or keyfile.", valueName: "role"))
    var role: String = "recovery"

    @Option(help: ArgumentHelp("PBKDF2-SHA256 iterations; default: the profile's recovery_pbkdf2_iterations.", valueName: "n"))
    var iterations: UInt32?

    @Option(help: ArgumentHelp("The profile whose recovery_pbkdf2_iterations applies.", valueName: "name|file"))
    var profile: String = "default"

    @Flag(help: "Print one JSON object on stdout.")
    var json = false

    @Flag(help: "Print no progress on stderr.")
    var quiet = false

    func validate() throws {
        guard ["recovery", "given", "keyfile", "generated"].contains(role) else {
            throw GeneralError.invalidArgument("--role \(role) is not one of recovery, given, keyfile, generated")
        }
        if let iterations, !Profile.pbkdf2IterationRange.contains(Int64(iterations)) {
            throw GeneralError.invalidArgument("--iterations \(iterations) is outside \(Profile.pbkdf2IterationRange.lowerBound)...\(Profile.pbkdf2IterationRange.upperBound)")
        }
    }

    func run() throws {
        let count = try iterations ?? Profile.load(nameOrPath: profile).recoveryPbkdf2Iterations
        let newPassphrase = try Passphrase.read(from: newPassphraseFile)
        // A recovery passphrase is typed at GRUB's prompt; a key file never is.
        switch role {
        case "recovery": try newPassphrase.checkTypableAtGrub(path: newPassphraseFile, role: "recovery passphrase")
        case "keyfile": break
        default: newPassphrase.warnIfNotTypableAtGrub(path: newPassphraseFile)
        }
        let change = try Keyslots.add(image: image, passphrase: try Passphrase.read(from: passphraseFile),
                                      newPassphrase: newPassphrase, iterations: count,
                                      role: role, progress: Progress(quiet: quiet || json))
        if json { try printJSON(change) }
    }
}

struct KeysRemove: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remove",
        abstract: "Destroy a keyslot; the passphrase given must open another keyslot, which stays.",
        discussion: "Example: sevimage keys remove vm.qcow2 --slot 1 --passphrase-file vm.passphrase"
    )

    @Argument(help: "The QCOW2 image.")
    var image: String

    @Option(help: "The keyslot to destroy.")
    var slot: Int

    @Option(help: ArgumentHelp("A passphrase of a keyslot that stays.", valueName: "file"))
    var passphraseFile: String

    @Flag(help: "Print one JSON object on stdout.")
    var json = false

    @Flag(help: "Print no progress on stderr.")
    var quiet = false

    func validate() throws {
        guard (0..<32).contains(slot) else { throw GeneralError.invalidArgument("--slot \(slot) is not a LUKS2 keyslot number (0-31)") }
    }

    func run() throws {
        let change = try Keyslots.remove(image: image, slot: slot, passphrase: try Passphrase.read(from: passphraseFile),
                                         progress: Progress(quiet: quiet || json))
        if json { try printJSON(change) }
    }
}
