import Foundation

/// What `sevimage reencrypt` is asked to do.
public struct ReencryptRequest: Sendable {
    public var image: String
    /// A passphrase that opens the image now.
    public var passphrase: Passphrase
    /// The new passphrase; nil generates one.
    public var newPassphrase: Passphrase?
    public var keepOldPassphrase = false

    public init(image: String, passphrase: Passphrase) {
        self.image = image
        self.passphrase = passphrase
    }
}

/// What `reencrypt` did.
public struct ReencryptResult: Sendable, Codable {
    public var image: String
    public var passphraseFile: String
    public var oldPassphraseFile: String?
    public var manifest: String?
    public var luksUUID: String
    public var keyslots: [Int]
    /// Keyslots of the old header that the new one does not carry (recovery passphrases: add them again).
    public var droppedKeyslots: [Int]
    public var reencryptedBytes: UInt64
    public var imageBytes: UInt64
    public var resumed: Bool
    public var seconds: Double
}

/// Marks a finished new image in the work directory: from here on a rerun publishes instead of starting over.
struct ReencryptReady: Codable {
    /// SHA-256 of the new LUKS header area: the image carries it once the new image is in place.
    var headerSHA256: String
    var droppedKeyslots: [Int]
    var keyslots: [Int]
    var reencryptedBytes: UInt64
}

/// Re-encrypts an image under a new volume key and passphrase, writing a new QCOW2 beside it.
///
///     IMAGE.sevimage-reencrypt/      private work directory (0700)
///        image.qcow2                 the new image (QCOW2Writer): the original's clusters, GPT and ESP copied,
///                                    a new LUKS header, the data re-encrypted; holes stay holes
///        passphrase, manifest.json   the new passphrase (0600) and manifest
///        blockdigests                the new image's block digests (BlockDigests), with the manifest
///        ready.json                  written last: the new image is complete
///
/// Then, each step durable before the next: IMAGE.passphrase.new, rename image.qcow2 over IMAGE (the
/// commit point), IMAGE.passphrase.new over IMAGE.passphrase, IMAGE.blockdigests, the manifest, and the work
/// directory goes.
/// Killed before the commit point, the original image and passphrase are untouched (a rerun removes an
/// unfinished work directory and starts again, or resumes from ready.json); killed after it, the new
/// passphrase is in IMAGE.passphrase.new and a rerun finishes publishing. Only the clusters the image
/// allocates are read and re-encrypted; a data sector that was all zeros (never written) stays a hole.
public struct Reencryption {
    public let request: ReencryptRequest
    public let progress: Progress

    public init(request: ReencryptRequest, progress: Progress) {
        self.request = request
        self.progress = progress
    }

    public func run() throws -> ReencryptResult {
        let started = Date()
        let paths = ImagePaths(image: request.image)
        try ImagePaths.check(image: request.image)
        let lock = try ImageLock(image: request.image)
        defer { withExtendedLifetime(lock) {} }
        paths.removeLeftovers()
        try refuseRotationPending(paths)
        let work = paths.reencryptDirectory
        let readyPath = work + "/ready.json"
        var resumed = false
        var ready: ReencryptReady?
        if ImagePaths.exists(readyPath) {
            ready = try JSONDecoder().decode(ReencryptReady.self, from: Data(contentsOf: URL(fileURLWithPath: readyPath)))
            resumed = true
        } else if ImagePaths.exists(work) {
            progress.step("removing the unfinished work of an interrupted run (the image was not changed)")
            try FileManager.default.removeItem(atPath: work)
            try OutputFiles.syncDirectory(of: work)
        }

        if ready == nil, ImagePaths.exists(paths.journal) {
            // Finish the header write an interrupted key operation journaled, then re-encrypt what it left.
            try HeaderJournal.replayIfPending(area: try ImageHeaderArea(image: request.image, writable: true), paths: paths)
        }
        let area = try ImageHeaderArea(image: request.image, writable: false)
        let workspace = try area.workspace()
        let currentHeaderSHA = hex(Crypto.sha256(workspace.original))
        let committed = ready.map { $0.headerSHA256 == currentHeaderSHA } ?? false

        if ready == nil {
            let (oldKey, _) = try workspace.unlock(request.passphrase)
            ready = try build(area: area, workspace: workspace, oldKey: oldKey, work: work, paths: paths)
        } else {
            // The given passphrase must open the image as it is now, the new one, or the original (its header was kept).
            let newOne = try Passphrase.read(from: work + "/passphrase")
            if try workspace.keyslot(opening: request.passphrase) == nil, !request.passphrase.matches(newOne) {
                let oldHeader = try [UInt8](Data(contentsOf: URL(fileURLWithPath: work + "/old-header.luks")))
                _ = try HeaderWorkspace(image: request.image, bytes: oldHeader, partitionSize: area.rootSize).unlock(request.passphrase)
            }
            progress.step(committed
                ? "resuming an interrupted re-encryption: the new image is in place, publishing its passphrase and manifest"
                : "resuming an interrupted re-encryption: the new image is complete, putting it in place")
        }
        guard let state = ready else { throw GeneralError.invalidArgument("internal: no re-encryption state") }
        let newPassphrase = try Passphrase.read(from: work + "/passphrase")

        // Publish: new passphrase beside the old one, then the image (commit), then the passphrase and the manifest.
        var newLock: ImageLock?
        defer { withExtendedLifetime(newLock) {} }
        if !committed {
            try DurableFile.replace(paths.newPassphrase, with: newPassphrase)
            CrashPoint.durable("new passphrase published as .new")
            // Lock the new file before it takes the image's name: another sevimage then finds it held.
            newLock = try ImageLock(image: work + "/image.qcow2")
            guard rename(work + "/image.qcow2", request.image) == 0 else {
                throw GeneralError.io("move the re-encrypted image to", path: request.image, errno: errno)
            }
            try OutputFiles.syncDirectory(of: request.image)
            CrashPoint.durable("re-encrypted image in place")
        }
        var oldBackup: String?
        if ImagePaths.exists(paths.newPassphrase) {
            if request.keepOldPassphrase, ImagePaths.exists(paths.passphrase) {
                unlink(paths.oldPassphrase)
                guard link(paths.passphrase, paths.oldPassphrase) == 0 else {
                    throw GeneralError.io("keep the old passphrase as", path: paths.oldPassphrase, errno: errno)
                }
                oldBackup = paths.oldPassphrase
            }
            guard rename(paths.newPassphrase, paths.passphrase) == 0 else {
                throw GeneralError.io("move the new passphrase to", path: paths.passphrase, errno: errno)
            }
            try OutputFiles.syncDirectory(of: paths.passphrase)
            CrashPoint.durable("new passphrase in place")
        } else if request.keepOldPassphrase, ImagePaths.exists(paths.oldPassphrase) {
            oldBackup = paths.oldPassphrase
        }
        var manifestPath: String?
        // The block digests before the manifest that covers them.
        if ImagePaths.exists(work + "/blockdigests") {
            try OutputFiles.publish(work + "/blockdigests", as: paths.blockDigests, replace: true)
            CrashPoint.durable("block digests in place")
        }
        if ImagePaths.exists(work + "/manifest.json") {
            try OutputFiles.publish(work + "/manifest.json", as: paths.manifest, replace: true)
            CrashPoint.durable("manifest in place")
        }
        if ImagePaths.exists(paths.manifest) { manifestPath = paths.manifest }
        try FileManager.default.removeItem(atPath: work)
        try OutputFiles.syncDirectory(of: work)
        CrashPoint.durable("work directory removed")
        let imageBytes = try RawFile(path: request.image, writable: false).size
        progress.step("re-encrypted \(request.image) under a new volume key; new passphrase in \(paths.passphrase)")
        return ReencryptResult(image: request.image, passphraseFile: paths.passphrase, oldPassphraseFile: oldBackup,
                               manifest: manifestPath, luksUUID: workspace.device.uuid, keyslots: state.keyslots,
                               droppedKeyslots: state.droppedKeyslots, reencryptedBytes: state.reencryptedBytes,
                               imageBytes: imageBytes, resumed: resumed, seconds: Date().timeIntervalSince(started))
    }

    /// Builds the complete new image, passphrase and manifest in `work`, and marks them ready.
    private func build(area: ImageHeaderArea, workspace: HeaderWorkspace, oldKey: SecretBytes, work: String,
                       paths: ImagePaths) throws -> ReencryptReady {
        guard mkdir(work, 0o700) == 0 else { throw GeneralError.io("create", path: work, errno: errno) }
        Cleanup.shared.register(work)
        defer { Cleanup.shared.unregister(work) }
        do {
            return try buildInside(area: area, workspace: workspace, oldKey: oldKey, work: work, paths: paths)
        } catch {
            // Nothing was published: the work directory is all there is to undo.
            try? FileManager.default.removeItem(atPath: work)
            throw error
        }
    }

    private func buildInside(area: ImageHeaderArea, workspace: HeaderWorkspace, oldKey: SecretBytes, work: String,
                             paths: ImagePaths) throws -> ReencryptReady {
        let old = workspace.device
        guard old.cipher == "aes-xts-plain64", old.sectorSize == Int(LUKSLayout.sectorSize), old.dataOffset == LUKSLayout.headerSize else {
            throw GeneralError.invalidArgument("\(request.image): reencrypt handles sevimage's LUKS2 layout (aes-xts-plain64, 4096-byte sectors, 16 MiB header), not \(old.cipher) with \(old.sectorSize)-byte sectors at \(old.dataOffset)")
        }
        let openedSlot = try workspace.unlock(request.passphrase).keyslot
        let oldSlots = old.keyslots
        let iterations = max(oldSlots.first { $0.slot == openedSlot }?.iterations ?? LUKSLayout.minimumPBKDF2Iterations,
                             LUKSLayout.minimumPBKDF2Iterations)
        let newPassphrase = try request.newPassphrase ?? Passphrase.generate()
        if request.newPassphrase != nil, try workspace.keyslot(opening: newPassphrase) != nil { throw KeysError.samePassphrase(request.image) }
        try newPassphrase.write(toNewFile: work + "/passphrase")
        try Data(workspace.original).write(to: URL(fileURLWithPath: work + "/old-header.luks"))

        // The new LUKS2 header: same UUID, new volume key, one PBKDF2 keyslot, unused keyslot space random-filled.
        progress.step("formatting a new LUKS2 header (same UUID, new volume key, PBKDF2 \(iterations) iterations)")
        let newKey = try SecretBytes(randomCount: LUKSLayout.volumeKeyBytes)
        let headerPath = work + "/header.luks"
        _ = try RawFile(creating: headerPath, size: area.rootSize)
        let luks = try CryptDevice(path: headerPath)
        try luks.format(volumeKey: newKey, uuid: old.uuid, dataOffset: LUKSLayout.headerSize, sectorSize: LUKSLayout.sectorSize, label: nil)
        let newSlot = try luks.addKeyslot(volumeKey: newKey, passphrase: newPassphrase.secret, iterations: iterations)
        let (renewal, renewalProblem) = try InitramfsKeyRenewal.find(area: area, workspace: workspace, volumeKey: oldKey)
        let initramfsSlot = try renewal.map { try luks.addKeyslot(volumeKey: newKey, passphrase: $0.newKey, iterations: LUKSLayout.minimumPBKDF2Iterations) }
        if let renewal {
            progress.step("renewing the initramfs key in \(InitramfsKeyfile.archivePath) and its keyslot (was \(renewal.oldSlot))")
        } else if let renewalProblem {
            progress.step("dropping the initramfs keyslot: \(renewalProblem); the initramfs will ask for the passphrase")
        }
        let header = try RawFile(path: headerPath, writable: true)
        for range in try luks.unusedKeyslotRanges() {
            let noise = try randomBytes(Int(range.count))
            try noise.withUnsafeBytes { try header.write($0, at: range.lowerBound) }
        }
        try LUKS2UUIDCase.lowercase(path: headerPath)
        var headerBytes = [UInt8](repeating: 0, count: Int(LUKSLayout.headerSize))
        try headerBytes.withUnsafeMutableBytes { try header.read(into: $0, at: 0) }

        // The new QCOW2, written directly: the same clusters allocated as in the original (so it stays exactly as
        // sparse), everything outside the root partition copied, the new header, the data re-encrypted.
        let qcowPath = work + "/image.qcow2"
        let allocated = try area.qcow.allocatedRanges()
        let headerArea = area.rootOffset..<(area.rootOffset + LUKSLayout.headerSize)
        let output = try QCOW2Writer(creating: qcowPath, virtualSize: area.qcow.virtualSize, allocated: mergeRanges(allocated + [headerArea]))
        // Each cluster's block digest is taken as it is written: nothing is read back but the QCOW2's metadata.
        let digests = WrittenClusterDigests(writer: output)
        let root = area.rootOffset..<(area.rootOffset + area.rootSize)
        try copy(subtract(allocated, [root]), from: area.qcow, to: output, digests: digests)
        try headerBytes.withUnsafeBytes {
            try output.write($0, at: area.rootOffset)
            digests.record($0, atGuest: area.rootOffset)
        }
        let dataStart = area.rootOffset + LUKSLayout.headerSize
        let data = intersect(allocated, [dataStart..<root.upperBound])
        let total = data.reduce(UInt64(0)) { $0 + UInt64($1.count) }
        progress.step("re-encrypting \(readableSize(total)) of allocated data into a new QCOW2")
        try DataReencryption.run(image: request.image, ranges: data, dataStart: dataStart, oldKey: oldKey, newKey: newKey,
                                 target: output, digests: digests, renewal: renewal, progress: progress.meter("re-encrypting", total: total))
        try output.finish()
        let leaves = try digests.leavesWhileSyncing()
        let imageDigest = leaves.combined()
        unlink(headerPath)
        // The new file takes the original's mode and, where allowed, its owner (a VM manager may own the image).
        var original = stat()
        if stat(request.image, &original) == 0 {
            chmod(qcowPath, original.st_mode & 0o7777)
            _ = chown(qcowPath, original.st_uid, original.st_gid)
            try OutputFiles.syncDirectory(of: qcowPath)
        }
        // The header area must come through whole and allocated, so that later rotations can rewrite it in place.
        let check = try ImageHeaderArea(image: qcowPath, writable: false)
        guard try check.readHeader() == headerBytes else {
            throw GeneralError.invalidArgument("internal: the new image's LUKS header does not read back as written")
        }
        CrashPoint.durable("new image written")

        let dropped = oldSlots.map(\.slot).filter { $0 != openedSlot && (initramfsSlot == nil || $0 != renewal?.oldSlot) }
        if let manifest = area.manifest {
            var updated = manifest
            updated.image.record(digest: imageDigest)
            let role = manifest.luks.keyslots.first { $0.slot == openedSlot }?.role ?? "generated"
            updated.luks.keyslots = luks.keyslots.map {
                .init(slot: $0.slot, role: $0.slot == newSlot ? role : $0.slot == initramfsSlot ? "initramfs" : "other",
                      pbkdf: $0.pbkdf, hash: $0.hash, iterations: $0.iterations)
            }
            if renewal == nil { updated.boot?.unlockArchiveBlock = nil }
            updated.rotations.append(.init(kind: "reencrypt", at: iso8601(Date()), removedKeyslots: oldSlots.map(\.slot),
                                           addedKeyslots: [newSlot] + (initramfsSlot.map { [$0] } ?? [])))
            updated.secret.passphraseFile = PathName.name(of: paths.passphrase)
            try DurableFile.replace(work + "/blockdigests", with: Data(leaves.bytes))
            try DurableFile.replace(work + "/manifest.json", with: try updated.encoded())
        }
        let ready = ReencryptReady(headerSHA256: hex(Crypto.sha256(headerBytes)), droppedKeyslots: dropped,
                                   keyslots: luks.keyslots.map(\.slot), reencryptedBytes: total)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        try DurableFile.replace(work + "/ready.json", with: try encoder.encode(ready), mode: 0o600)
        CrashPoint.durable("new image ready")
        return ready
    }

    /// Copies guest ranges of the image verbatim into the new image.
    private func copy(_ ranges: [Range<UInt64>], from qcow: QCOW2Image, to output: QCOW2Writer, digests: WrittenClusterDigests) throws {
        let chunk: UInt64 = 1 << 20
        var buffer = [UInt8](repeating: 0, count: Int(chunk))
        for range in ranges {
            var position = range.lowerBound
            while position < range.upperBound {
                let count = Int(min(chunk, range.upperBound - position))
                try buffer.withUnsafeMutableBytes { try qcow.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<count]), at: position) }
                try buffer.withUnsafeBytes {
                    let piece = UnsafeRawBufferPointer(rebasing: $0[0..<count])
                    try output.write(piece, at: position)
                    digests.record(piece, atGuest: position)
                }
                position += UInt64(count)
            }
        }
    }
}

/// Decrypts sectors with the old volume key and encrypts them with the new one, on all cores, reading and
/// writing with O_DIRECT where the filesystem allows (no copy through the page cache on either side).
enum DataReencryption {
    static func run(image: String, ranges: [Range<UInt64>], dataStart: UInt64, oldKey: SecretBytes, newKey: SecretBytes,
                    target: QCOW2Writer, digests: WrittenClusterDigests? = nil, renewal: InitramfsKeyRenewal? = nil,
                    progress: (@Sendable (UInt64) -> Void)?) throws {
        let sector = UInt64(LUKSLayout.sectorSize)
        // 4 MiB per read and write: against 1 MiB, 8 GiB re-encrypted in 15-17 s instead of 20-30 s here
        // (the virtual disk wants large direct I/Os; cp + sync of the same image took 21-23 s).
        let chunkSize: UInt64 = 4 << 20
        var chunks: [Range<UInt64>] = []
        for range in ranges {
            // Whole sectors of the data segment.
            var start = dataStart + (range.lowerBound - dataStart) / sector * sector
            let end = dataStart + (range.upperBound - dataStart + sector - 1) / sector * sector
            while start < end {
                let stop = min(end, start + chunkSize)
                chunks.append(start..<stop)
                start = stop
            }
        }
        let queue = WorkQueue(chunks)
        // Reads bypass the page cache (the old data is read once and then replaced), so each read waits for the disk:
        // two threads per core keep a read in flight while the other computes.
        let threads = max(2, min(2 * ProcessInfo.processInfo.activeProcessorCount, 8))
        DispatchQueue.concurrentPerform(iterations: threads) { _ in
            do {
                let reader = try QCOW2Image(path: image, directReads: true)
                let decrypt = try XTSCipher(key: oldKey, encrypt: false)
                let encrypt = try XTSCipher(key: newKey, encrypt: true)
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(chunkSize), alignment: 4096)
                defer { wipe(buffer); buffer.deallocate() }
                while let chunk = queue.next() {
                    let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(chunk.count)])
                    try reader.read(into: slice, at: chunk.lowerBound)
                    var offset = 0
                    while offset < slice.count {
                        // Runs of written sectors are re-encrypted; an all-zero sector was never written and stays a hole.
                        var end = offset
                        while end < slice.count, !isZero(slice, end, Int(sector)) { end += Int(sector) }
                        if end > offset {
                            let run = UnsafeMutableRawBufferPointer(rebasing: slice[offset..<end])
                            let first = (chunk.lowerBound + UInt64(offset) - dataStart) / sector
                            try decrypt.process(run, firstSector: first)
                            if let renewal, renewal.sector >= first, renewal.sector < first + UInt64(run.count) / sector {
                                let at = Int(renewal.sector - first) * Int(sector)
                                renewal.patch(UnsafeMutableRawBufferPointer(rebasing: run[at..<(at + Int(sector))]))
                            }
                            try encrypt.process(run, firstSector: first)
                            try target.write(UnsafeRawBufferPointer(run), at: chunk.lowerBound + UInt64(offset), direct: true)
                            offset = end
                        } else {
                            offset += Int(sector)
                        }
                    }
                    // The chunk's clusters as the new file holds them: the runs just written, zeros in its holes.
                    digests?.record(UnsafeRawBufferPointer(slice), atGuest: chunk.lowerBound)
                    progress?(queue.finished(UInt64(chunk.count)))
                }
            } catch {
                queue.fail(error)
            }
        }
        if let error = queue.error { throw error }
    }

    private static func isZero(_ buffer: UnsafeMutableRawBufferPointer, _ offset: Int, _ count: Int) -> Bool {
        var position = offset
        while position < offset + count {
            if buffer.load(fromByteOffset: position, as: UInt64.self) != 0 { return false }
            position += 8
        }
        return true
    }
}
