import Foundation

/// A write-ahead journal for one change of an image's LUKS2 header: the bytes to write, in their groups.
///
///     "SEVJRNL1" | u64 header offset (guest bytes) | u32 groups
///       per group:  u32 patches | per patch: u64 offset in the header area | u32 length | bytes
///     SHA-256 of everything before it (32 bytes)
///
/// All integers little-endian. The journal is written to a temporary name, fsync'ed and renamed into
/// place, so it exists only whole; applying it is idempotent (it holds final bytes, not differences),
/// so a run that dies while applying it is finished by the next one, which applies it again.
struct HeaderJournal {
    static let magic = Array("SEVJRNL1".utf8)

    var headerOffset: UInt64
    var update: HeaderUpdate

    func encoded() -> Data {
        var out = Self.magic
        append(&out, headerOffset, 8)
        append(&out, UInt64(update.groups.count), 4)
        for group in update.groups {
            append(&out, UInt64(group.count), 4)
            for patch in group {
                append(&out, patch.offset, 8)
                append(&out, UInt64(patch.bytes.count), 4)
                out += patch.bytes
            }
        }
        out += Crypto.sha256(out)
        return Data(out)
    }

    static func decode(_ data: Data, path: String) throws -> HeaderJournal {
        let bytes = [UInt8](data)
        guard bytes.count >= 8 + 8 + 4 + 32, Array(bytes[0..<8]) == magic else {
            throw KeysError.damagedJournal(path, "no journal header")
        }
        let body = Array(bytes[0..<bytes.count - 32])
        guard Crypto.sha256(body) == Array(bytes[(bytes.count - 32)...]) else {
            throw KeysError.damagedJournal(path, "checksum mismatch")
        }
        var reader = Reader(bytes: body, position: 8)
        let headerOffset = try reader.integer(8, path)
        var groups: [[HeaderUpdate.Patch]] = []
        for _ in 0..<(try reader.integer(4, path)) {
            var group: [HeaderUpdate.Patch] = []
            for _ in 0..<(try reader.integer(4, path)) {
                let offset = try reader.integer(8, path)
                let length = Int(try reader.integer(4, path))
                guard let end = offset.checkedAdding(UInt64(length)), end <= LUKSLayout.headerSize else {
                    throw KeysError.damagedJournal(path, "a patch lies outside the LUKS header area")
                }
                group.append(.init(offset: offset, bytes: try reader.take(length, path)))
            }
            groups.append(group)
        }
        guard reader.position == body.count else { throw KeysError.damagedJournal(path, "trailing bytes") }
        return HeaderJournal(headerOffset: headerOffset, update: HeaderUpdate(groups: groups))
    }

    /// Writes the groups into the image, each followed by an fsync of the image.
    func apply(to qcow: QCOW2Image) throws {
        for (index, group) in update.groups.enumerated() {
            for patch in group {
                try patch.bytes.withUnsafeBytes { try qcow.write($0, at: headerOffset + patch.offset) }
            }
            try qcow.sync()
            CrashPoint.durable("header write group \(index + 1) of \(update.groups.count)")
        }
    }

    /// Journal, apply, remove the journal: the one way sevimage changes a LUKS header in an image.
    static func commit(_ update: HeaderUpdate, area: ImageHeaderArea, paths: ImagePaths) throws {
        guard !update.isEmpty else { return }
        let journal = HeaderJournal(headerOffset: area.rootOffset, update: update)
        for group in update.groups {
            for patch in group { try area.qcow.checkWritable(count: patch.bytes.count, at: area.rootOffset + patch.offset) }
        }
        try DurableFile.replace(paths.journal, with: journal.encoded(), mode: 0o600)
        CrashPoint.durable("journal written")
        try journal.apply(to: area.qcow)
        try DurableFile.remove(paths.journal)
        CrashPoint.durable("journal removed")
    }

    /// Finishes a header change that an earlier run journaled but may not have applied. Returns whether there was one.
    @discardableResult
    static func replayIfPending(area: ImageHeaderArea, paths: ImagePaths) throws -> Bool {
        unlink(paths.journal + ".tmp")
        guard ImagePaths.exists(paths.journal) else { return false }
        let journal = try decode(Data(contentsOf: URL(fileURLWithPath: paths.journal)), path: paths.journal)
        guard journal.headerOffset == area.rootOffset else {
            throw KeysError.damagedJournal(paths.journal, "it is for a header at byte \(journal.headerOffset), the image's is at \(area.rootOffset)")
        }
        try journal.apply(to: area.qcow)
        try DurableFile.remove(paths.journal)
        return true
    }

    private func append(_ out: inout [UInt8], _ value: UInt64, _ width: Int) {
        for i in 0..<width { out.append(UInt8(truncatingIfNeeded: value >> (8 * UInt64(i)))) }
    }

    private struct Reader {
        let bytes: [UInt8]
        var position: Int

        mutating func integer(_ width: Int, _ path: String) throws -> UInt64 {
            let raw = try take(width, path)
            return raw.enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
        }

        mutating func take(_ count: Int, _ path: String) throws -> [UInt8] {
            guard count >= 0, position + count <= bytes.count else { throw KeysError.damagedJournal(path, "truncated") }
            defer { position += count }
            return Array(bytes[position..<position + count])
        }
    }
}
