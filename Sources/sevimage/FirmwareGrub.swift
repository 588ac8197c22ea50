import ArgumentParser
import Foundation
import SEVImageKit

/// `sevimage firmware grub --output grub.efi`: the GRUB for an AmdSev OVMF's firmware volume.
struct FirmwareGrubCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "grub",
        abstract: "Build the GRUB EFI binary for an AmdSev OVMF firmware volume (OvmfPkg/AmdSev/Grub/grub.efi).",
        discussion: """
            Made with grub-mkimage from Debian's grub-efi-amd64-bin, prefix (crypto0), its config in a memdisk. \
            When efisecret is among the modules (a GRUB that has it, --modules efisecret --directory DIR), \
            the config first unlocks the LUKS root with the SEV secret (cryptomount -s efisecret); it asks for the \
            passphrase when that is not built in or unlocked nothing (cryptomount -a), then loads \
            /boot/grub/grub.cfg from the first unlocked volume that has one. When nothing unlocks it prints one \
            line starting with "sevimage: " and powers off. scripts/build-amdsev-ovmf.sh builds an OVMF with it.
            """
    )

    @Option(help: "Where to write the GRUB EFI binary.")
    var output: String

    @Option(name: .customLong("modules"), parsing: .upToNextOption,
            help: "Extra GRUB modules to build in, besides the default set (space- or comma-separated); efisecret turns on the secret step.")
    var modules: [String] = []

    @Option(name: .customLong("directory"), help: "GRUB's x86_64-efi module directory (grub-mkimage -d).")
    var directory: String = FirmwareGrub.defaultModuleDirectory

    @Flag(help: "Replace an existing output.")
    var force = false

    @Flag(help: "Print one JSON object on stdout.")
    var json = false

    func validate() throws {
        try checkOutputFileName(output)
    }

    func run() throws {
        let extra = modules.flatMap { $0.split(whereSeparator: { $0 == "," || $0 == " " }).map(String.init) }
        let report = try FirmwareGrub.build(output: output, extraModules: extra, moduleDirectory: directory, force: force)
        if json {
            try Firmware.printJSON(report)
        } else {
            Console.write("""
                sevimage: wrote \(report.output) (\(report.size) bytes, sha256 \(report.sha256))
                  \(report.grubVersion), prefix \(report.prefix), \(report.modules.count) modules
                  put it at OvmfPkg/AmdSev/Grub/grub.efi, or run scripts/build-amdsev-ovmf.sh

                """)
        }
    }
}
