import ArgumentParser

/// `sevimage export ...`: hand an image and what its manifest vouches for to the tools that run or verify it.
/// Only the list of subcommands lives here; each subcommand has its own file.
struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Export an image, or the launch values its manifest expects, in the formats other tools load.",
        subcommands: [
            ExportReferenceValues.self,
            ExportContainerDisk.self,
            ExportLibvirt.self,
        ]
    )
}
