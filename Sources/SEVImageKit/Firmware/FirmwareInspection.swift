/// What `sevimage firmware inspect` reports: the file's identity, its GUIDed table and the verdict.
public struct FirmwareInspection: Codable, Sendable, Equatable {
    /// One GUIDed table entry, nearest the footer first.
    public struct Entry: Codable, Sendable, Equatable {
        public var guid: String
        /// `sev-secret-block`, `sev-hash-table`, `sev-es-reset-block`, `sev-metadata`, `tdx-metadata`; nil if unknown.
        public var name: String?
        /// Offset of the entry's data in the file.
        public var offset: Int
        /// Data bytes (without the 18-byte length and GUID).
        public var dataLength: Int
        public var data: String
    }

    /// One SEV metadata section.
    public struct Section: Codable, Sendable, Equatable {
        public var gpa: UInt32
        public var size: UInt32
        public var type: UInt32
        public var typeName: String
    }

    /// The SEV metadata block the table points to.
    public struct Metadata: Codable, Sendable, Equatable {
        /// Offset of the "ASEV" header from the end of the file, as the table gives it.
        public var offsetFromEnd: UInt32
        public var version: UInt32
        public var sections: [Section]
    }

    public var file: String
    public var size: Int
    public var sha256: String
    public var sha384: String
    /// Guest physical address of the first byte (the image ends at 4 GiB).
    public var gpa: UInt64
    public var tableLength: Int
    public var entries: [Entry]
    public var secretArea: OVMFTable.Area?
    public var hashTable: OVMFTable.Area?
    public var resetAddress: UInt32?
    public var sevMetadata: Metadata?
    public var tdxMetadata: Bool
    public var verdict: OVMFImage.Verdict

    public init(_ image: OVMFImage) {
        let table = image.table
        file = image.path
        size = image.size
        sha256 = hex(image.sha256)
        sha384 = hex(image.sha384)
        gpa = image.gpa
        tableLength = table.length
        entries = table.entries.map {
            Entry(guid: $0.guid.description, name: $0.name, offset: $0.offset, dataLength: $0.data.count, data: hex($0.data))
        }
        secretArea = table.secretArea
        hashTable = table.hashTable
        resetAddress = table.resetAddress
        sevMetadata = zip(table.metadataOffset, table.metadata).map { offset, metadata in
            Metadata(offsetFromEnd: offset, version: metadata.version, sections: metadata.sections.map {
                Section(gpa: $0.gpa, size: $0.size, type: $0.type.rawValue, typeName: $0.type.name)
            })
        }
        tdxMetadata = table.tdxMetadataOffset != nil
        verdict = image.verdict
    }

    /// A screenful for people.
    public var text: String {
        var lines: [String] = []
        lines.append("firmware:        \(file)")
        lines.append("size:            \(size) bytes (mapped at \(hex32(UInt32(truncatingIfNeeded: gpa)))-0xffffffff)")
        lines.append("sha256:          \(sha256)")
        lines.append("sha384:          \(sha384)")
        lines.append("ovmf table:      \(entries.count) entries, \(tableLength) bytes")
        for entry in entries.prefix(12) {
            let shown = entry.data.count > 32 ? String(entry.data.prefix(32)) + "..." : entry.data
            lines.append("  \(entry.guid) \((entry.name ?? "unknown").padding(toLength: 18, withPad: " ", startingAt: 0)) \(entry.dataLength) bytes \(shown)")
        }
        if entries.count > 12 { lines.append("  ... \(entries.count - 12) more (see --json)") }
        lines.append("secret area:     " + (secretArea.map { "base \(hex32($0.base)), size \($0.size) (\(hex32($0.size)))" } ?? "none"))
        lines.append("hash table:      " + (hashTable.map { "base \(hex32($0.base)), size \($0.size)" } ?? "none"))
        lines.append("sev-es reset:    " + (resetAddress.map(hex32) ?? "none"))
        if let metadata = sevMetadata {
            lines.append("sev metadata:    version \(metadata.version), \(metadata.sections.count) sections")
            for section in metadata.sections.prefix(12) {
                lines.append("  gpa \(hex32(section.gpa)) size \(hex32(section.size)) \(section.typeName)")
            }
            if metadata.sections.count > 12 { lines.append("  ... \(metadata.sections.count - 12) more (see --json)") }
        } else {
            lines.append("sev metadata:    none")
        }
        lines.append("tdx metadata:    \(tdxMetadata ? "present" : "none")")
        lines.append("launch modes:    sev" + (verdict.sevES ? ", sev-es" : "") + (verdict.sevSNP ? ", sev-snp" : ""))
        lines.append("verdict:         \(verdict.summary)")
        return lines.joined(separator: "\n") + "\n"
    }
}

private func zip<A, B>(_ a: A?, _ b: B?) -> (A, B)? {
    guard let a, let b else { return nil }
    return (a, b)
}
