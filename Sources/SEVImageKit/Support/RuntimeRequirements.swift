import Foundation

/// One command's use of a program or a data file: always, or only in some case (`when`).
public struct RuntimeNeed: Sendable, Hashable, Codable {
    /// The command, as typed after `sevimage` (`create`, `firmware grub`, `boot`).
    public var command: String
    /// The case in which the command uses it ("with SOURCE_DATE_EPOCH"); nil when it always does.
    public var when: String?

    public init(_ command: String, when: String? = nil) {
        self.command = command
        self.when = when
    }

    public static func always(_ command: String) -> RuntimeNeed { RuntimeNeed(command) }
}

/// A data file or directory sevimage reads from the system at run time (GRUB's modules, Debian's OVMF,
/// libeatmydata). The first of `candidates` that exists is the one used.
public struct RuntimeFile: Sendable, Hashable {
    public enum Kind: String, Sendable, Hashable, Codable { case directory, file, library }

    public let name: String
    public let kind: Kind
    public let candidates: [String]
    public let package: String
    public let needs: [RuntimeNeed]
    /// Used when present, never required (libeatmydata only makes `create` faster).
    public let optional: Bool

    init(_ name: String, _ kind: Kind, candidates: [String], package: String, needs: [RuntimeNeed], optional: Bool = false) {
        self.name = name
        self.kind = kind
        self.candidates = candidates
        self.package = package
        self.needs = needs
        self.optional = optional
    }

    /// The first candidate that exists, if any.
    public var path: String? { candidates.first { FileManager.default.fileExists(atPath: $0) } }

    /// Debian's GRUB modules: `grub-mkstandalone` and `grub-mkimage` read them, and so does the reproducible ESP build.
    public static let grubModules = RuntimeFile("GRUB x86_64-efi modules", .directory, candidates: ["/usr/lib/grub/x86_64-efi"],
                                                package: "grub-efi-amd64-bin",
                                                needs: [.always("create"), .init("firmware grub", when: "without --directory")])
    /// Debian's OVMF, code and variables (a boot writes to a private copy of the variables).
    public static let ovmfCode = RuntimeFile("OVMF code", .file, candidates: ["/usr/share/OVMF/OVMF_CODE_4M.fd"], package: "ovmf",
                                             needs: [.init("boot", when: "without --bios or --ovmf-code")])
    public static let ovmfVariables = RuntimeFile("OVMF variables", .file, candidates: ["/usr/share/OVMF/OVMF_VARS_4M.fd"], package: "ovmf",
                                                  needs: [.init("boot", when: "without --bios or --ovmf-vars")])
    /// Preloaded into mke2fs and debugfs when present (`Ext4Builder.noSyncLibrary` says why).
    public static let eatmydata = RuntimeFile("libeatmydata", .library, candidates: [
        "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib",
    ].map { $0 + "/libeatmydata.so.1" }, package: "libeatmydata1", needs: [.always("create")], optional: true)
}

/// Everything sevimage needs from the system at run time beyond the shared libraries it links: the programs it
/// starts and the data files it reads. The code launches programs only through these `ExternalTool` constants and
/// reads these files through these `RuntimeFile` constants; `sevimage doctor` prints the list, and
/// `scripts/build-stage-image.sh` installs exactly the packages of `packages(forPipeline: true)`.
public enum RuntimeRequirements {
    public static let programs: [ExternalTool] = [
        .mke2fs, .debugfs, .mkfsVfat, .mcopy, .grubMkstandalone, .grubMkimage, .tar,
        .gzip, .xz, .zstd, .bzip2, .lz4, .lzop, .qemuSystem,
    ]
    public static let files: [RuntimeFile] = [.grubModules, .ovmfCode, .ovmfVariables, .eatmydata]

    /// Commands a pipeline stage does not run: `boot` starts a virtual machine (QEMU, OVMF, minutes of CPU under
    /// TCG), the image author's smoke test, so the stage image leaves it out.
    public static let notInPipeline: Set<String> = ["boot"]

    /// Every command that appears in the list.
    public static var commands: [String] {
        var seen: [String] = []
        for need in programs.flatMap(\.needs) + files.flatMap(\.needs) where !seen.contains(need.command) {
            seen.append(need.command)
        }
        return seen
    }

    /// The needs that count for a selection of commands: all of them when `commands` is empty, minus `boot`'s for a pipeline.
    static func selected(_ needs: [RuntimeNeed], commands: Set<String>, pipeline: Bool) -> [RuntimeNeed] {
        needs.filter { (commands.isEmpty || commands.contains($0.command)) && !(pipeline && notInPipeline.contains($0.command)) }
    }

    /// The Debian packages of the selected programs and files, sorted, each once.
    public static func packages(commands: Set<String> = [], pipeline: Bool = false) -> [String] {
        let fromPrograms = programs.filter { !selected($0.needs, commands: commands, pipeline: pipeline).isEmpty }.map(\.package)
        let fromFiles = files.filter { !selected($0.needs, commands: commands, pipeline: pipeline).isEmpty }.map(\.package)
        return Array(Set(fromPrograms + fromFiles)).sorted()
    }

    /// What is installed here, for `sevimage doctor`.
    public static func check(commands: Set<String> = [], pipeline: Bool = false) -> RuntimeReport {
        var entries: [RuntimeReport.Entry] = []
        for program in programs {
            let needs = selected(program.needs, commands: commands, pipeline: pipeline)
            guard !needs.isEmpty else { continue }
            entries.append(.init(kind: "program", name: program.name, path: try? program.resolve(), searched: nil,
                                 package: program.package, neededBy: needs, optional: false))
        }
        for file in files {
            let needs = selected(file.needs, commands: commands, pipeline: pipeline)
            guard !needs.isEmpty else { continue }
            entries.append(.init(kind: file.kind.rawValue,
                                 name: file.name, path: file.path, searched: file.candidates,
                                 package: file.package, neededBy: needs, optional: file.optional))
        }
        return RuntimeReport(entries: entries)
    }
}

/// `sevimage doctor`'s result: each selected program and file, found or not.
public struct RuntimeReport: Sendable, Encodable {
    public struct Entry: Sendable, Encodable {
        /// `program`, `directory`, `file` or `library`.
        public var kind: String
        public var name: String
        /// Where it was found; nil when missing.
        public var path: String?
        /// The paths looked at, for files (programs are searched in PATH and the sbin directories).
        public var searched: [String]?
        public var package: String
        public var neededBy: [RuntimeNeed]
        public var optional: Bool

        /// Missing, and some selected command needs it in every case.
        public var missingAndRequired: Bool { path == nil && !optional && neededBy.contains { $0.when == nil } }
    }

    public var entries: [Entry]

    /// Nothing a selected command always needs is missing.
    public var passed: Bool { !entries.contains { $0.missingAndRequired } }
    /// The Debian packages that would install what is missing.
    public var missingPackages: [String] { Array(Set(entries.filter { $0.path == nil }.map(\.package))).sorted() }

    private enum CodingKeys: String, CodingKey { case passed, entries, missingPackages }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(passed, forKey: .passed)
        try container.encode(entries, forKey: .entries)
        try container.encode(missingPackages, forKey: .missingPackages)
    }

    /// One line per entry: name, found path or "missing", package, and the commands that need it.
    public var text: String {
        let width = entries.map(\.name.count).max() ?? 0
        var lines: [String] = []
        for entry in entries {
            let name = entry.name.padding(toLength: width, withPad: " ", startingAt: 0)
            let found = entry.path ?? (entry.optional ? "missing (optional)" : "MISSING")
            let needs = entry.neededBy.map { need in need.when.map { "\(need.command) (\($0))" } ?? need.command }.joined(separator: ", ")
            lines.append("\(name)  \(found)  [\(entry.package)]  \(needs)\(entry.optional ? " (optional: faster when present)" : "")")
        }
        return lines.joined(separator: "\n") + "\n"
    }
}
