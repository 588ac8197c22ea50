import ArgumentParser

/// `sevimage firmware ...`: the OVMF build an image is linked to. Only the list of subcommands lives
/// here; each subcommand has its own file (`FirmwareInspect.swift`, `FirmwareMeasure.swift`, ...).
struct Firmware: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "firmware",
        abstract: "Inspect OVMF firmware, compute the launch digests a verifier must expect, build the GRUB for an AmdSev OVMF.",
        subcommands: [
            FirmwareInspect.self,
            FirmwareMeasure.self,
            FirmwareGrubCommand.self,
        ]
    )
}
