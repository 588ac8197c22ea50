import Foundation

/// What `sevimage rotate` is asked to do.
public struct RotateRequest: Sendable {
    public var image: String
    /// A passphrase that opens the image now (after an interrupted rotation: the old or the new one).
    public var passphrase: Passphrase
    /// The next passphrase; nil generates one as `create` does.
    public var newPassphrase: Passphrase?
    /// Keep the replaced `IMAGE.passphrase` as `IMAGE.passphrase.old`.
    public var keepOldPassphrase = false

    public init(image: String, passphrase: Passphrase) {
        self.image = image
        self.passphrase = passphrase
    }
}

/// What `rotate` did.
public struct RotateResult: Sendable, Codable {
    public var image: String
    public var passphraseFile: String
    public var oldPassphraseFile: String?
    public var manifest: String?
    public var addedKeyslot: Int
    public var removedKeyslots: [Int]
    /// True when this run finished a rotation that an earlier run started.
    public var resumed: Bool
    /// Always true: rotation replaces the keyslot, not the volume key that encrypts the data.
    public var volumeKeyKept: Bool
    public var note: String
    /// The whole run, and the part spent hashing the image for the manifest.
    public var seconds: Double
    public var hashSeconds: Double
    /// Bytes of the image read and hashed for the manifest's digest: the LUKS header area's blocks with a
    /// sidecar the manifest covers (`BlockDigests`), the whole file without one.
    public var hashedBytes: UInt64
}

/// The state of a rotation in progress, next to the image as `IMAGE.sevimage-rotate` (no secrets).
struct RotationState: Codable {
    var kind = "rotate"
    /// The keyslots the rotation replaces.
    var oldKeyslots: [Int]
    /// The manifest role the new keyslot takes over.
    var role: String
    var iterations: UInt32
    var startedAt: String
}

/// Rotates an image's passphrase in place, touching only the LUKS header.
///
/// Steps, each durable before the next (a kill at any instant leaves an image that opens with the old
/// or the new passphrase, and a rerun with either finishes the rotation):
///
///     1. IMAGE.sevimage-rotate     which keyslot goes, which role the new one takes
///     2. IMAGE.passphrase.new      the new passphrase, 0600, fsync'ed: on disk before any keyslot has it
///     3. add a PBKDF2 keyslot      journaled header write (HeaderJournal)
///     4. IMAGE.passphrase          replaced atomically by the new one (the old one kept as .old if asked)
///     5. destroy the old keyslot   journaled header write
///     6. manifest                  IMAGE.blockdigests patched (DigestRefresh), then keyslots, a rotation
///                                  record and the image's new digest
///     7. remove .new, then the state file
public struct KeyRotation {
    public static let volumeKeyNote = "rotation replaced the passphrase's keyslot but kept the volume key that encrypts the data: "
        + "an old copy of the image or of its LUKS header still opens with the old passphrase, and anyone who saw the volume key "
        + "can still decrypt; run sevimage reencrypt instead when the volume key may have leaked, when old copies of the image "
        + "cannot be accounted for, or when the image was cloned from a shared golden image"

    public let request: RotateRequest
    public let progress: Progress

    public init(request: RotateRequest, progress: Progress) {
        self.request = request
        self.progress = progress
    }

    public func run() throws -> RotateResult {
        let started = Date()
        let paths = ImagePaths(image: request.image)
        try ImagePaths.check(image: request.image)
        let lock = try ImageLock(image: request.image)
        defer { withExtendedLifetime(lock) {} }
        paths.removeLeftovers()
        try refuseReencryptPending(paths)
        try FreeSpace.require(FreeSpace.headerUpdate, in: PathName.directory(of: request.image), for: "rotate",
                              why: "two copies of the 16 MiB LUKS header area while it works")
        let area = try ImageHeaderArea(image: request.image, writable: true)
        if try HeaderJournal.replayIfPending(area: area, paths: paths) {
            progress.step("finished a LUKS header write an earlier run had journaled")
        }
        var workspace = try area.workspace()
        let (volumeKey, openedSlot) = try workspace.unlock(request.passphrase)

        // What this run wrote before its first change to the image: a refusal until then (libcryptsetup's, a
        // header it cannot change) takes them back, so that nothing is left pending that no rerun can finish.
        var undo: [String] = []
        var imageChanged = false
        defer {
            if !imageChanged, !undo.isEmpty, !ImagePaths.exists(paths.journal) {
                for path in undo.reversed() { unlink(path) }
                try? OutputFiles.syncDirectory(of: request.image)
            }
        }

        // 1. The rotation's state.
        var resumed = false
        let state: RotationState
        if ImagePaths.exists(paths.rotationState) {
            state = try JSONDecoder().decode(RotationState.self, from: Data(contentsOf: URL(fileURLWithPath: paths.rotationState)))
            resumed = true
            progress.step("resuming the interrupted rotation of keyslot \(state.oldKeyslots.map(String.init).joined(separator: ", "))")
        } else {
            if ImagePaths.exists(paths.newPassphrase) {
                throw KeysError.pending(paths.newPassphrase, "exists but no rotation is pending; move it away and run again")
            }
            if area.role(ofSlot: openedSlot) == "recovery" {
                throw GeneralError.invalidArgument("the passphrase given opens recovery keyslot \(openedSlot) of \(request.image); rotate replaces the SEV passphrase's keyslot: give that passphrase (\(paths.passphrase)), and change recovery passphrases with sevimage keys add and keys remove")
            }
            if let given = request.newPassphrase, try workspace.keyslot(opening: given) != nil {
                throw KeysError.samePassphrase(request.image)
            }
            let info = workspace.device.keyslots.first { $0.slot == openedSlot }
            state = RotationState(oldKeyslots: [openedSlot], role: area.role(ofSlot: openedSlot) ?? "generated",
                                  iterations: max(info?.iterations ?? LUKSLayout.minimumPBKDF2Iterations, LUKSLayout.minimumPBKDF2Iterations),
                                  startedAt: iso8601(started))
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            try DurableFile.replace(paths.rotationState, with: try encoder.encode(state), mode: 0o600)
            undo.append(paths.rotationState)
            CrashPoint.durable("rotation state written")
        }

        // 2. The new passphrase, on disk before any keyslot holds it.
        let newPassphrase: Passphrase
        var fresh = false
        if ImagePaths.exists(paths.newPassphrase) {
            newPassphrase = try Passphrase.read(from: paths.newPassphrase)
        } else if resumed, ImagePaths.exists(paths.passphrase), let current = try? Passphrase.read(from: paths.passphrase),
                  let slot = try workspace.keyslot(opening: current), !state.oldKeyslots.contains(slot) {
            newPassphrase = current  // only the clean-up was left
        } else {
            newPassphrase = try request.newPassphrase ?? Passphrase.generate()
            try newPassphrase.write(toNewFile: paths.newPassphrase)
            undo.append(paths.newPassphrase)
            try OutputFiles.syncDirectory(of: paths.newPassphrase)
            CrashPoint.durable("new passphrase written")
            fresh = request.newPassphrase == nil
        }
        if let given = request.newPassphrase, !given.matches(newPassphrase) {
            throw KeysError.pending(request.image, "an interrupted rotation to another passphrase (\(paths.newPassphrase)) is pending; run again without --new-passphrase-file to finish it")
        }

        // 3. Its keyslot.
        let newSlot: Int
        // A passphrase generated just now opens nothing yet: no need to run every keyslot's KDF to find out.
        if !fresh, let slot = try workspace.keyslot(opening: newPassphrase) {
            if state.oldKeyslots.contains(slot) { throw KeysError.samePassphrase(request.image) }
            newSlot = slot
        } else {
            progress.step("adding a PBKDF2 keyslot (\(state.iterations) iterations) for the new passphrase")
            var added = -1
            let update = try workspace.change { device in
                added = try device.addKeyslot(volumeKey: volumeKey, passphrase: newPassphrase.secret, iterations: state.iterations)
            }
            try HeaderJournal.commit(update, area: area, paths: paths)
            imageChanged = true
            newSlot = added
            workspace = try area.workspace()
        }

        imageChanged = true  // or nothing to change: from here on a rerun finishes what is written

        // 4. IMAGE.passphrase becomes the new one.
        var oldBackup: String?
        let current = ImagePaths.exists(paths.passphrase) ? try? Passphrase.read(from: paths.passphrase) : nil
        if current.map({ !$0.matches(newPassphrase) }) ?? true {
            if request.keepOldPassphrase, current != nil {
                unlink(paths.oldPassphrase)
                guard link(paths.passphrase, paths.oldPassphrase) == 0 else {
                    throw GeneralError.io("keep the old passphrase as", path: paths.oldPassphrase, errno: errno)
                }
                oldBackup = paths.oldPassphrase
            }
            try DurableFile.replace(paths.passphrase, with: newPassphrase)
            CrashPoint.durable("passphrase file replaced")
        } else if request.keepOldPassphrase, ImagePaths.exists(paths.oldPassphrase) {
            oldBackup = paths.oldPassphrase
        }

        // 5. The old keyslot goes.
        let active = Set(workspace.device.keyslots.map(\.slot))
        let removing = state.oldKeyslots.filter { active.contains($0) && $0 != newSlot }
        if !removing.isEmpty {
            progress.step("destroying keyslot \(removing.map(String.init).joined(separator: ", "))")
            let update = try workspace.change { device in
                for slot in removing { try device.destroyKeyslot(slot) }
            }
            try HeaderJournal.commit(update, area: area, paths: paths)
            workspace = try area.workspace()
        }

        // 6. The block digests and the manifest.
        var hashSeconds = 0.0, hashedBytes: UInt64 = 0
        if let manifest = area.manifest {
            let refresh = try DigestRefresh.afterHeaderChange(area: area, manifest: manifest, paths: paths, progress: progress)
            (hashSeconds, hashedBytes) = (refresh.seconds, refresh.hashedBytes)
            try ManifestUpdate.write(manifest, path: area.manifestPath, keyslots: workspace.device.keyslots,
                                     roles: [newSlot: state.role],
                                     record: .init(kind: "rotate", at: iso8601(Date()), removedKeyslots: state.oldKeyslots, addedKeyslots: [newSlot]),
                                     imageDigest: refresh.digest, passphraseFile: PathName.name(of: paths.passphrase))
        }

        // 7. Clean up: .new first (a rerun then finds the new passphrase in IMAGE.passphrase), the state last.
        try DurableFile.remove(paths.newPassphrase)
        CrashPoint.durable("new passphrase file removed")
        try DurableFile.remove(paths.rotationState)
        CrashPoint.durable("rotation state removed")
        progress.step("rotated \(request.image): keyslot \(newSlot) added, keyslot \(state.oldKeyslots.map(String.init).joined(separator: ", ")) destroyed; new passphrase in \(paths.passphrase)")
        return RotateResult(image: request.image, passphraseFile: paths.passphrase, oldPassphraseFile: oldBackup,
                            manifest: area.manifest == nil ? nil : area.manifestPath, addedKeyslot: newSlot,
                            removedKeyslots: state.oldKeyslots, resumed: resumed, volumeKeyKept: true, note: Self.volumeKeyNote,
                            seconds: Date().timeIntervalSince(started), hashSeconds: hashSeconds, hashedBytes: hashedBytes)
    }
}

/// Key operations wait for an unfinished re-encryption (it would replace the header they change).
func refuseReencryptPending(_ paths: ImagePaths) throws {
    if ImagePaths.exists(paths.reencryptDirectory + "/ready.json") {
        throw KeysError.pending(paths.image, "an interrupted re-encryption is pending; run sevimage reencrypt again to finish it")
    }
}

/// `keys` operations wait for an unfinished rotation.
func refuseRotationPending(_ paths: ImagePaths) throws {
    if ImagePaths.exists(paths.rotationState) {
        throw KeysError.pending(paths.image, "an interrupted rotation is pending; run sevimage rotate again to finish it")
    }
}
