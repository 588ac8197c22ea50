import Foundation

/// One keyslot as `keys list` shows it: libcryptsetup's view plus the manifest's role.
public struct KeyslotEntry: Sendable, Codable, Equatable {
    public var slot: Int
    public var pbkdf: String
    public var hash: String
    public var iterations: UInt32
    public var priority: String
    /// From the manifest: `generated`, `given`, `recovery`, ...; nil without a manifest or for a slot it does not know.
    public var role: String?
}

/// What `keys list` prints.
public struct KeyslotListing: Sendable, Codable {
    public var image: String
    public var luksUUID: String
    public var keyslots: [KeyslotEntry]
}

/// What `keys add` and `keys remove` did.
public struct KeyslotChange: Sendable, Codable {
    public var image: String
    public var added: Int?
    public var removed: Int?
    public var keyslots: [KeyslotEntry]
    /// Bytes of the image read and hashed for the manifest's digest (see `RotateResult.hashedBytes`); nil without a manifest.
    public var hashedBytes: UInt64?
}

/// `sevimage keys list|add|remove`: keyslots of an image's LUKS header, changed in place through the journal.
public enum Keyslots {
    public static func list(image: String) throws -> KeyslotListing {
        try ImagePaths.check(image: image)
        let lock = try ImageLock(image: image, exclusive: false)
        defer { withExtendedLifetime(lock) {} }
        let area = try ImageHeaderArea(image: image, writable: false)
        let workspace = try area.workspace()
        return KeyslotListing(image: image, luksUUID: workspace.device.uuid, keyslots: entries(workspace, area))
    }

    /// Adds a keyslot for `newPassphrase`, unlocked with `passphrase`; PBKDF2-SHA256 with `iterations`.
    public static func add(image: String, passphrase: Passphrase, newPassphrase: Passphrase, iterations: UInt32,
                           role: String, progress: Progress) throws -> KeyslotChange {
        let (lock, area, paths) = try open(image)
        defer { withExtendedLifetime(lock) {} }
        var workspace = try area.workspace()
        let (volumeKey, _) = try workspace.unlock(passphrase)
        if let existing = try workspace.keyslot(opening: newPassphrase) {
            throw GeneralError.invalidArgument("the new passphrase already opens keyslot \(existing) of \(image)")
        }
        guard workspace.device.keyslots.count < 32 else { throw KeysError.noFreeKeyslot(image) }
        progress.step("adding a PBKDF2 keyslot (\(iterations) iterations; this takes a while by design)")
        var added = -1
        let update = try workspace.change { device in
            added = try device.addKeyslot(volumeKey: volumeKey, passphrase: newPassphrase.secret, iterations: iterations)
        }
        try HeaderJournal.commit(update, area: area, paths: paths)
        workspace = try area.workspace()
        let hashed = try updateManifest(area, workspace, paths, progress, roles: [added: role],
                                        record: .init(kind: "keys-add", at: iso8601(Date()), removedKeyslots: [], addedKeyslots: [added]))
        progress.step("added keyslot \(added) (\(role)) to \(image)")
        return KeyslotChange(image: image, added: added, removed: nil, keyslots: entries(workspace, area, roles: [added: role]), hashedBytes: hashed)
    }

    /// Removes keyslot `slot`; `passphrase` must open another keyslot, which stays.
    public static func remove(image: String, slot: Int, passphrase: Passphrase, progress: Progress) throws -> KeyslotChange {
        let (lock, area, paths) = try open(image)
        defer { withExtendedLifetime(lock) {} }
        var workspace = try area.workspace()
        let slots = workspace.device.keyslots.map(\.slot)
        guard slots.contains(slot) else { throw KeysError.noSuchKeyslot(image, slot) }
        guard slots.count > 1 else { throw KeysError.lastKeyslot(image, slot) }
        let (_, opened) = try workspace.unlock(passphrase)
        guard opened != slot else { throw KeysError.passphraseOpensOnlyRemovedSlot(image, slot) }
        progress.step("destroying keyslot \(slot) of \(image)")
        let update = try workspace.change { try $0.destroyKeyslot(slot) }
        try HeaderJournal.commit(update, area: area, paths: paths)
        workspace = try area.workspace()
        let hashed = try updateManifest(area, workspace, paths, progress, roles: [:],
                                        record: .init(kind: "keys-remove", at: iso8601(Date()), removedKeyslots: [slot], addedKeyslots: []))
        return KeyslotChange(image: image, added: nil, removed: slot, keyslots: entries(workspace, area), hashedBytes: hashed)
    }

    private static func open(_ image: String) throws -> (ImageLock, ImageHeaderArea, ImagePaths) {
        let paths = ImagePaths(image: image)
        try ImagePaths.check(image: image)
        let lock = try ImageLock(image: image)
        paths.removeLeftovers()
        try refuseReencryptPending(paths)
        try refuseRotationPending(paths)
        try FreeSpace.require(FreeSpace.headerUpdate, in: PathName.directory(of: image), for: "keys",
                              why: "two copies of the 16 MiB LUKS header area while it works")
        let area = try ImageHeaderArea(image: image, writable: true)
        try HeaderJournal.replayIfPending(area: area, paths: paths)
        return (lock, area, paths)
    }

    /// The block digests and the manifest; returns the bytes hashed for the digest (nil without a manifest).
    private static func updateManifest(_ area: ImageHeaderArea, _ workspace: HeaderWorkspace, _ paths: ImagePaths, _ progress: Progress,
                                       roles: [Int: String], record: Manifest.Rotation) throws -> UInt64? {
        guard let manifest = area.manifest else { return nil }
        let refresh = try DigestRefresh.afterHeaderChange(area: area, manifest: manifest, paths: paths, progress: progress)
        try ManifestUpdate.write(manifest, path: area.manifestPath, keyslots: workspace.device.keyslots, roles: roles,
                                 record: record, imageDigest: refresh.digest, passphraseFile: nil)
        return refresh.hashedBytes
    }

    private static func entries(_ workspace: HeaderWorkspace, _ area: ImageHeaderArea, roles: [Int: String] = [:]) -> [KeyslotEntry] {
        workspace.device.keyslots.map {
            KeyslotEntry(slot: $0.slot, pbkdf: $0.pbkdf, hash: $0.hash, iterations: $0.iterations, priority: $0.priority,
                         role: roles[$0.slot] ?? area.role(ofSlot: $0.slot))
        }
    }
}
