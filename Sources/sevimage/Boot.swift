import ArgumentParser
import Foundation
import SEVImageKit

/// `sevimage boot IMAGE --passphrase-file FILE`: the image author's smoke test. Boots the image on
/// plain OVMF in QEMU, types the passphrase at GRUB's prompt on the serial console and waits for the
/// expected text. The console streams to stderr; stdout carries only the `--json` result.
struct BootCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "boot",
        abstract: "Boot an image in QEMU with OVMF, type its passphrase at GRUB's prompt and wait for the guest to come up.",
        discussion: """
            The serial console streams to stderr. The image is opened with snapshot=on (the guest's writes go \
            to a temporary overlay and the image stays byte for byte as created) unless --writable is given. \
            Exit status 0 when the expected text appears, 5 when GRUB refuses the passphrase, 1 on timeout, \
            when the guest powers off without the text, or when QEMU fails.
            """
    )

    @Argument(help: "The image to boot (QCOW2 or raw).")
    var image: String

    @Option(name: .customLong("passphrase-file"), help: "The disk passphrase (one trailing newline is ignored).")
    var passphraseFile: String

    @Option(name: .customLong("ovmf-code"), help: "OVMF firmware code.")
    var ovmfCode: String = BootOptions.debianFirmwareCode

    @Option(name: .customLong("ovmf-vars"), help: "OVMF variables template (a private copy is used).")
    var ovmfVars: String = BootOptions.debianFirmwareVariables

    @Option(help: ArgumentHelp("A whole firmware in one file, given to QEMU as -bios (an AmdSev OVMF.fd with its own GRUB; see scripts/build-amdsev-ovmf.sh); replaces --ovmf-code and --ovmf-vars.", valueName: "OVMF.fd"))
    var bios: String?

    @Option(help: "Seconds to wait for the expected text, the whole boot included.")
    var timeout: Double = 300

    @Option(help: "Console text that means the guest is up; with '', a clean power-off after the passphrase was accepted.")
    var expect: String = BootOptions.defaultExpectedText

    @Option(help: "Guest memory (512, 512M, 2G).")
    var memory: String = "512M"

    @Option(help: "QEMU accelerator: kvm, tcg or auto (KVM when it can run the guest, TCG otherwise).")
    var accel: String = Accelerator.auto.rawValue

    @Flag(help: "Let the guest write to the image (no snapshot=on).")
    var writable = false

    @Flag(help: "Do not stream the console.")
    var quiet = false

    @Flag(help: "Print one JSON object on stdout.")
    var json = false

    func validate() throws {
        guard timeout > 0, timeout.isFinite, timeout <= 86_400 else {
            throw BootError.invalidTimeout(String(timeout))
        }
        _ = try parseMemoryMiB(memory)
        guard Accelerator(rawValue: accel) != nil else {
            throw GeneralError.invalidArgument("--accel \(accel) is not one of kvm, tcg, auto")
        }
        if bios != nil && (ovmfCode != BootOptions.debianFirmwareCode || ovmfVars != BootOptions.debianFirmwareVariables) {
            throw GeneralError.invalidArgument("--bios replaces --ovmf-code and --ovmf-vars; give one or the other")
        }
    }

    func run() throws {
        var options = BootOptions(image: image)
        options.firmwareCode = ovmfCode
        options.firmwareVariables = ovmfVars
        options.firmwareImage = bios
        options.timeout = .milliseconds(Int64(timeout * 1000))
        options.expectedText = expect
        options.memoryMiB = try parseMemoryMiB(memory)
        options.accelerator = Accelerator(rawValue: accel) ?? .auto
        options.writable = writable
        options.consoleSink = quiet ? nil : .standardError
        let passphrase = try Passphrase.read(from: passphraseFile)
        // boot types it at GRUB's prompt: one GRUB would mangle could only fail there.
        try passphrase.checkTypableAtGrub(path: passphraseFile, role: "passphrase")
        let report = try VirtualMachineBoot.run(options, passphrase: passphrase)
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            var data = try encoder.encode(report)
            data.append(0x0A)
            JSONOutput.write(data)
        } else {
            let prompt = report.passphrasePromptSeconds.map { ", passphrase prompt at \(String(format: "%.1f", $0)) s" } ?? ""
            let outcome = report.expectedTextSeconds.map { "\"\(report.expectedText)\" after \(String(format: "%.1f", $0)) s" }
                ?? "the guest powered off cleanly"
            Console.write("\nsevimage: \(image) booted under \(report.accelerator.rawValue): \(outcome)\(prompt)\n")
        }
    }
}
