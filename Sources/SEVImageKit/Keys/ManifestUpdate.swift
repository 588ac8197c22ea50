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

/// The manifest's image digest after a key operation rewrote the LUKS header area in place.
///
/// With a sidecar the manifest covers (`BlockDigests`), only the blocks of the file that hold the header
/// area are read and hashed again (16 MiB, whatever the data), their digests patched into the sidecar, and
/// the new digest is the SHA-256 of the sidecar: the time does not grow with the data. The other blocks
/// keep the digests the manifest vouched for: a key operation does not vouch for bytes it did not write,
/// so a file changed behind sevimage's back (a booted guest's writes) keeps failing `verify`. Without such
/// a sidecar the whole file is hashed once and a sidecar written (the upgrade of an older image).
struct DigestRefresh {
    var digest: [UInt8]
    /// What was read and hashed: the header area's blocks, or the whole file.
    var hashedBytes: UInt64
    var seconds: Double

    static func afterHeaderChange(area: ImageHeaderArea, manifest: Manifest, paths: ImagePaths, progress: Progress?) throws -> DigestRefresh {
        let started = Date()
        let size = try RawFile(path: area.image, writable: false).size
        let stored = try BlockDigests.read(paths.blockDigests)
        let problem = BlockDigests.problem(stored, blockSHA256: manifest.image.blockSHA256, fileSize: size)
        guard var bytes = stored, problem == nil else {
            progress?.step("hashing the whole image for the manifest (\(PathName.name(of: paths.blockDigests)): \(problem ?? "unusable")), and writing its block digests")
            let leaves = try ImageDigest.leaves(of: area.image)
            try BlockDigests.replace(paths.blockDigests, with: leaves.bytes)
            CrashPoint.durable("block digests written")
            return DigestRefresh(digest: leaves.combined(), hashedBytes: size, seconds: Date().timeIntervalSince(started))
        }
        let rewritten = try area.qcow.hostRanges(count: Int(LUKSLayout.headerSize), at: area.rootOffset)
        let blocks = BlockDigests.blocks(covering: rewritten)
        let changed = try BlockDigests.rehash(area.image, blocks: blocks, into: &bytes)
        if !changed.isEmpty {
            try BlockDigests.patch(paths.blockDigests, with: bytes, blocks: changed)
            CrashPoint.durable("block digests updated")
        }
        return DigestRefresh(digest: Crypto.sha256(bytes), hashedBytes: UInt64(blocks.count) * UInt64(ImageDigest.blockSize),
                             seconds: Date().timeIntervalSince(started))
    }
}
