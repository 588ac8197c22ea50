import Foundation

/// Brings an image's manifest in line with its LUKS header after a key operation, and replaces it atomically.
enum ManifestUpdate {
    /// - Parameters:
    ///   - roles: roles of keyslots this operation created; the other slots keep the manifest's role.
    ///   - record: a rotation record to append (not appended twice when a rerun finishes the same operation).
    ///   - imageDigest: the image's new digest (`ImageDigest`), when the file changed and was hashed again.
    static func write(_ manifest: Manifest, path: String, keyslots: [KeyslotInfo], roles: [Int: String],
                      record: Manifest.Rotation?, imageDigest: [UInt8]?, passphraseFile: String?) throws {
        var updated = manifest
        updated.luks.keyslots = keyslots.map { info in
            let role = roles[info.slot] ?? manifest.luks.keyslots.first { $0.slot == info.slot }?.role ?? "other"
            return Manifest.Keyslot(slot: info.slot, role: role, pbkdf: info.pbkdf, hash: info.hash, iterations: info.iterations)
        }
        if let record, updated.rotations.last.map({ $0.kind != record.kind || $0.addedKeyslots != record.addedKeyslots
                || $0.removedKeyslots != record.removedKeyslots }) ?? true {
            updated.rotations.append(record)
        }
        if let imageDigest { updated.image.record(digest: imageDigest) }
        if let passphraseFile { updated.secret.passphraseFile = passphraseFile }
        guard updated != manifest else { return }
        try DurableFile.replace(path, with: try updated.encoded())
        CrashPoint.durable("manifest updated")
    }
}
