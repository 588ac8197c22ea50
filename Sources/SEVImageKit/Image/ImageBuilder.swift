import Foundation

/// What `sevimage create` is asked to build.
public struct CreateRequest: Sendable {
    public var rootfs: String
    public var output: String
    public var profile: Profile
    /// The passphrase from `--passphrase-file`; nil generates one and writes `IMAGE.passphrase`.
    public var passphrase: Passphrase?
    /// A person's recovery passphrase for a second keyslot (costlier PBKDF2); the `recovery` profile requires one.
    public var recoveryPassphrase: Passphrase?
    public var force = false
    public var ovmf: String?
    public var seed: String?
    /// `SOURCE_DATE_EPOCH`: every timestamp written, and the manifest's creation time.
    public var sourceDateEpoch: Int64?
    /// `--initramfs-keyfile`: the author's own key file, which their initramfs carries; it replaces the unlock
    /// archive that `[boot] initramfs_unlock` otherwise writes (InitramfsKeyfile.swift).
    public var initramfsKeyfile: InitramfsKeyfile?

    public init(rootfs: String, output: String, profile: Profile) {
        self.rootfs = rootfs
        self.output = output
        self.profile = profile
    }

    public var manifestPath: String { Manifest.defaultPath(forImage: output) }
    public var passphrasePath: String { stem(output) + ".passphrase" }
    public var blockDigestsPath: String { ImagePaths(image: output).blockDigests }
}

/// What `create` made.
public struct CreateResult: Sendable, Codable {
    public var image: String
    public var manifest: String
    /// Nil when the passphrase came from `--passphrase-file`.
    public var passphraseFile: String?
    public var virtualSize: UInt64
    public var imageBytes: UInt64
    public var encryptedBytes: UInt64
    public var luksUUID: String
    /// What the image boots: kernel, initrd and its kind, the unlock archive, the grub.cfg.
    public var boot: Manifest.Boot
    public var seconds: Double
}

/// Builds a two-partition QCOW2 image (ESP + LUKS2 root with /boot inside) from a root tree.
///
/// Everything happens in plain files in a private directory next to the output: no mount, no loop
/// device, no device-mapper, no root. The outputs appear only when all of them are complete:
/// passphrase first, then manifest, then the image, each fsync'ed and linked into place.
public struct ImageBuilder {
    public let request: CreateRequest
    public let progress: Progress

    public init(request: CreateRequest, progress: Progress) {
        self.request = request
        self.progress = progress
    }

    public func run() throws -> CreateResult {
        let started = Date()
        let profile = request.profile
        try request.checkPaths()
        let outputLock = try OutputLock(output: request.output)
        defer { outputLock.release() }
        WorkDirectory.reapStale(near: request.output)
        for path in [request.output, request.manifestPath, request.blockDigestsPath] + (request.passphrase == nil ? [request.passphrasePath] : []) {
            try OutputFiles.checkWritable(path, force: request.force)
        }
        let firmware = try request.ovmf.map {
            try FirmwareLink.make(ovmfPath: $0, modes: profile.measureModes, vcpus: profile.vcpus,
                                  vcpuType: profile.vcpuType, allowNoSecretArea: profile.allowStandardBootOnly)
        }
        if profile.recoveryKeyslot && request.recoveryPassphrase == nil {
            throw GeneralError.invalidArgument("profile \(profile.name) adds a recovery keyslot: give its passphrase with --recovery-passphrase-file")
        }
        let layout = try DiskLayout(diskSize: profile.diskSize, espSize: profile.espSize)
        let ext4Size = layout.rootSize - LUKSLayout.headerSize
        let scratch = try TemporaryDirectory(near: request.output)
        try HostFileLimit.check(size: layout.diskSize, directory: scratch.path)
        try PublishJournal.begin(in: scratch.path)
        let ids = Identities(seed: request.seed)
        let diskGUID = try ids.guid("disk"), espGUID = try ids.guid("esp-partition"), rootGUID = try ids.guid("root-partition")
        let luksUUID = try ids.guid("luks"), ext4UUID = try ids.guid("ext4"), hashSeed = try ids.guid("ext4-hash-seed")
        let fatID = try ids.uint32("fat")
        // Lower case everywhere, the LUKS header's text included (LUKS2UUIDCase): blkid, udev's /dev/disk/by-uuid and
        // systemd compare UUIDs as exact strings, so an upper-case root=UUID= or crypttab line is never found.
        let luksUUIDText = luksUUID.description
        let timestamp = request.sourceDateEpoch

        // 1. The root filesystem, in the clear, in its own sparse file: `mke2fs -d` runs in the background,
        // and its output is encrypted into the QCOW2 as it is written (RootEncryption, from the start). A
        // directory goes to mke2fs at once, while this thread checks it (a failed check stops mke2fs), and its
        // files are read ahead into the page cache; a tarball is extracted first (which leaves its files cached).
        let ext4Path = scratch.file("root.ext4")
        let ext4 = Ext4Builder(uuid: ext4UUID, hashSeed: hashSeed, timestamp: timestamp)
        var mke2fs: BackgroundWork<Void>?
        func startMke2fs(_ directory: String) -> BackgroundWork<Void> {
            BackgroundWork("sevimage mke2fs") { try ext4.makeFilesystem(path: ext4Path, size: ext4Size, tree: directory) }
        }
        func abandonMke2fs() {
            ChildProcesses.shared.terminateAll()
            _ = mke2fs?.wait()
        }
        var isDirectory: ObjCBool = false
        let sourceDirectory = FileManager.default.fileExists(atPath: request.rootfs, isDirectory: &isDirectory) && isDirectory.boolValue
            ? realpath(request.rootfs, nil).map { pointer in defer { free(pointer) }; return String(cString: pointer) } : nil
        let prefetch = sourceDirectory.map { TreePrefetch(directory: $0) }
        defer { prefetch?.finish() }
        let volumeKey = try SecretBytes(randomCount: LUKSLayout.volumeKeyBytes)
        let qcowPath = scratch.file("image.qcow2")
        let qcow = try QCOW2Writer(creating: qcowPath, virtualSize: layout.diskSize)
        let encryption = try RootEncryption(plaintext: ext4Path, size: ext4Size, key: volumeKey, target: qcow,
                                            targetOffset: layout.rootOffset + LUKSLayout.headerSize)
        mke2fs = sourceDirectory.map(startMke2fs)
        encryption.startFollowing()
        let tree: PreparedRootTree, commands: [String], boot: BootPlan, passphrase: Passphrase
        do {
            let room = RootFilesystemRoom(size: ext4Size, diskSize: layout.diskSize)
            tree = try RootTree.prepare(source: request.rootfs, scratch: scratch.path, room: room)
            try checkFits(tree: tree, room: room)
            if sourceDirectory == nil {  // a tarball, now extracted
                mke2fs = startMke2fs(tree.directory)
            } else if tree.directory != sourceDirectory {
                throw RootTreeError.unusable(request.rootfs, reason: "it was moved or replaced while sevimage read it; run again")
            }
            boot = try BootPlan.make(tree: tree.directory, request: request, ext4UUID: ext4UUID.description, luksUUID: luksUUIDText)
            boot.notes.forEach { progress.step($0) }
            commands = tree.debugfsCommands + (try boot.debugfsCommands(tree: tree.directory, scratch: scratch, luksUUID: luksUUIDText,
                                                                         mtime: timestamp ?? 0))
            passphrase = try request.passphrase ?? Passphrase.generate()
        } catch {
            abandonMke2fs()
            try? encryption.stopFollowing()
            throw error
        }
        FaultInjection.checkpoint("root tree prepared")

        progress.step("building the ext4 root filesystem (\(readableSize(ext4Size))) and encrypting it into the QCOW2")
        let luks: CryptDevice, roles: [Int: String], esp: ESPBuilder, archiveBlock: UInt64?
        do {
            (luks, roles, esp) = try buildOuterParts(layout: layout, ids: (diskGUID, espGUID, rootGUID, fatID), luksUUID: luksUUIDText,
                                                    ext4UUID: ext4UUID, passphrase: passphrase, volumeKey: volumeKey,
                                                    initramfsKey: boot.initramfsKey, scratch: scratch, into: qcow)
            // debugfs, once mke2fs is done: a tarball's owners, device nodes and xattrs, the grub.cfg, the unlock archive.
            try mke2fs!.wait().get()
            prefetch?.finish()
            defer { unlink(scratch.file(InitramfsKeyfile.localName)) }  // the archive's key, in the clear
            try ext4.edit(path: ext4Path, tree: tree.directory, debugfsCommands: commands)
            archiveBlock = boot.writesArchive ? try ext4.blocks(of: InitramfsKeyfile.archivePath, path: ext4Path).first : nil
        } catch {
            abandonMke2fs()  // the build is abandoned
            try? encryption.stopFollowing()
            throw error
        }
        try encryption.stopFollowing()
        FaultInjection.checkpoint("ext4 built")

        // 5. The root's data: clusters for what the follower did not write ahead (every cluster ext4 uses, or the
        // whole partition with wipe_free_space), the QCOW2's metadata, then the whole file completed on all cores
        // (what the follower wrote ahead checked by fingerprint against the final filesystem), and
        // 6. the image digest for the manifest, from the block digests of the follower and of this step.
        progress.step("completing the image: the rest of the root filesystem, the QCOW2's metadata, its digest")
        let (total, digest) = try encryption.complete(wipeFreeSpace: profile.wipeFreeSpace,
                                                      meter: { progress.meter("completing the image", total: $0) })
        let imageBytes = qcow.fileSize ?? 0
        let keyslots = luks.keyslots
        FaultInjection.checkpoint("root encrypted")

        // 7. Manifest and passphrase, then publish.
        let createdAt = iso8601(timestamp.map { Date(timeIntervalSince1970: TimeInterval($0)) } ?? started)
        let manifest = Manifest(
            tool: .init(), createdAt: createdAt,
            image: .init(file: PathName.name(of: request.output), format: "qcow2", virtualSize: layout.diskSize,
                         blockSHA256: hex(digest), diskGUID: diskGUID.description),
            partitions: [
                .init(number: 1, role: "esp", name: "esp", typeGUID: KnownGUID.espType.description, partitionGUID: espGUID.description,
                      firstLBA: layout.espFirstLBA, lastLBA: layout.espLastLBA, filesystem: "vfat", filesystemUUID: esp.volumeIDText,
                      innerFilesystem: nil, innerFilesystemUUID: nil),
                .init(number: 2, role: "root", name: "root-x86-64", typeGUID: KnownGUID.rootX86_64Type.description,
                      partitionGUID: rootGUID.description, firstLBA: layout.rootFirstLBA, lastLBA: layout.rootLastLBA,
                      filesystem: "crypto_LUKS", filesystemUUID: luksUUIDText, innerFilesystem: "ext4",
                      innerFilesystemUUID: ext4UUID.description),
            ],
            luks: .init(uuid: luksUUIDText, version: 2, cipher: luks.cipher, keySizeBits: luks.volumeKeySize * 8,
                        sectorSize: luks.sectorSize, dataOffset: luks.dataOffset,
                        keyslots: keyslots.map { .init(slot: $0.slot, role: roles[$0.slot] ?? "other", pbkdf: $0.pbkdf, hash: $0.hash, iterations: $0.iterations) },
                        encryptedExtent: profile.wipeFreeSpace ? "full" : "used-blocks"),
            secret: .init(tableGUID: KnownGUID.secretTableHeader.description, entryGUID: KnownGUID.diskPassphraseEntry.description,
                          passphraseFile: request.passphrase == nil ? PathName.name(of: request.passphrasePath) : nil),
            profile: profile.name, firmware: firmware,
            reproducible: .init(sourceDateEpoch: timestamp, seeded: ids.isSeeded), boot: boot.summary(archiveBlock: archiveBlock))
        let manifestTemp = scratch.file("manifest.json")
        try manifest.encoded().write(to: URL(fileURLWithPath: manifestTemp))
        FaultInjection.checkpoint("manifest written")

        // Passphrase first, image last: an image at the output path always has its key and manifest beside it.
        // Until the image is in place, a failure or a signal removes what was already published (and puts back what
        // --force replaced): the work directory's publish journal does it, also for the next run after a SIGKILL.
        var published: [String] = []
        func publish(_ temporary: String, as final: String) throws {
            do {
                try OutputFiles.publish(temporary, as: final, replace: request.force)
                published.append(final)
            } catch {
                for path in published.reversed() { unlink(path) }
                throw error
            }
        }
        if request.passphrase == nil {
            let passTemp = scratch.file("passphrase")
            try passphrase.write(toNewFile: passTemp)
            try publish(passTemp, as: request.passphrasePath)
        }
        // The block digests before the manifest that covers them, so that a key operation finds them trusted.
        let digestsTemp = scratch.file("blockdigests")
        try encryption.blockDigests.withUnsafeBytes { try OutputFiles.writeNew($0, to: digestsTemp, mode: 0o644) }
        try publish(digestsTemp, as: request.blockDigestsPath)
        try publish(manifestTemp, as: request.manifestPath)
        // The image holds no secret in the clear: readable as any new file is (0666 less the umask), like qemu-img's.
        let mask = umask(0)
        umask(mask)
        chmod(qcowPath, 0o666 & ~mask)
        try publish(qcowPath, as: request.output)
        progress.step("wrote \(request.output) (\(readableSize(imageBytes)) on disk, \(readableSize(layout.diskSize)) virtual)")
        return CreateResult(image: request.output, manifest: request.manifestPath,
                            passphraseFile: request.passphrase == nil ? request.passphrasePath : nil,
                            virtualSize: layout.diskSize, imageBytes: imageBytes, encryptedBytes: total,
                            luksUUID: luksUUIDText, boot: boot.summary(archiveBlock: archiveBlock), seconds: Date().timeIntervalSince(started))
    }

    /// Steps 2 to 4, while mke2fs runs: the GPT, the ESP with GRUB and the LUKS2 header with its keyslots, built
    /// in a small sparse raw disk and copied into the QCOW2 (its zero clusters left out, the header area whole).
    func buildOuterParts(layout: DiskLayout, ids: (disk: GUID, esp: GUID, root: GUID, fat: UInt32), luksUUID: String,
                         ext4UUID: GUID, passphrase: Passphrase, volumeKey: SecretBytes, initramfsKey: InitramfsKeyfile?,
                         scratch: TemporaryDirectory,
                         into qcow: QCOW2Writer) throws -> (CryptDevice, [Int: String], ESPBuilder) {
        let profile = request.profile, timestamp = request.sourceDateEpoch
        // 2. The raw disk with its GPT.
        progress.step("writing the GPT (\(readableSize(layout.diskSize)) disk)")
        let rawPath = scratch.file("disk.raw")
        let disk = try RawFile(creating: rawPath, size: layout.diskSize)
        try GPTWriter(path: rawPath).write(diskGUID: ids.disk, partitions: [
            GPTPartition(firstLBA: layout.espFirstLBA, lastLBA: layout.espLastLBA, type: KnownGUID.espType, guid: ids.esp, name: "esp"),
            GPTPartition(firstLBA: layout.rootFirstLBA, lastLBA: layout.rootLastLBA, type: KnownGUID.rootX86_64Type, guid: ids.root, name: "root-x86-64"),
        ])
        FaultInjection.checkpoint("gpt written")

        // 3. The ESP with GRUB.
        progress.step("building the EFI system partition with GRUB")
        let grubPath = scratch.file("BOOTX64.EFI")
        try GrubImage.buildStandalone(output: grubPath,
                                      config: GrubImage.embeddedConfig(luksUUID: luksUUID, rootFilesystemUUID: ext4UUID.description),
                                      scratch: scratch.path, timestamp: timestamp)
        let espPath = scratch.file("esp.fat")
        let esp = ESPBuilder(volumeID: ids.fat)
        try esp.build(path: espPath, size: layout.espSize, files: [("EFI/BOOT/BOOTX64.EFI", grubPath)], timestamp: timestamp)
        try RawFile(path: espPath, writable: false).copyData(in: 0..<layout.espSize, to: disk, at: layout.espOffset)
        FaultInjection.checkpoint("esp written")

        // 4. The LUKS2 header (libcryptsetup) and its keyslots.
        progress.step("formatting LUKS2 (aes-xts-plain64, 4096-byte sectors, PBKDF2 \(profile.pbkdf2Iterations) iterations)")
        let headerPath = scratch.file("luks.header")
        _ = try RawFile(creating: headerPath, size: layout.rootSize)
        let luks = try CryptDevice(path: headerPath)
        try luks.format(volumeKey: volumeKey, uuid: luksUUID, dataOffset: LUKSLayout.headerSize,
                        sectorSize: LUKSLayout.sectorSize, label: nil)
        let mainSlot = try luks.addKeyslot(volumeKey: volumeKey, passphrase: passphrase.secret, iterations: profile.pbkdf2Iterations)
        var roles = [mainSlot: request.passphrase == nil ? "generated" : "given"]
        if let recovery = request.recoveryPassphrase {
            progress.step("adding the recovery keyslot (PBKDF2 \(profile.recoveryPbkdf2Iterations) iterations)")
            roles[try luks.addKeyslot(volumeKey: volumeKey, passphrase: recovery.secret, iterations: profile.recoveryPbkdf2Iterations)] = "recovery"
        }
        if let key = initramfsKey { roles[try key.addKeyslot(to: luks, volumeKey: volumeKey)] = key.installsInRoot ? "initramfs" : "keyfile" }
        let header = try RawFile(path: headerPath, writable: true)
        for range in try luks.unusedKeyslotRanges() {
            let noise = try randomBytes(Int(range.count))
            try noise.withUnsafeBytes { try header.write($0, at: range.lowerBound) }
        }
        try LUKS2UUIDCase.lowercase(path: headerPath)
        try header.copyData(in: 0..<LUKSLayout.headerSize, to: disk, at: layout.rootOffset)
        FaultInjection.checkpoint("luks header written")

        // Into the QCOW2: the GPT, the ESP and the whole header area (rotate rewrites it in place).
        let headerArea = layout.rootOffset..<(layout.rootOffset + LUKSLayout.headerSize)
        try qcow.copy(from: disk, ranges: try QCOW2Writer.nonZeroRanges(of: disk, excluding: headerArea) + [headerArea])
        return (luks, roles, esp)
    }

    /// Refuses early, with the `--size` needed, a tree that cannot fit: its data or its number of entries
    /// (mke2fs's own failure is the backstop). A tarball was checked entry by entry while it was extracted.
    func checkFits(tree: PreparedRootTree, room: RootFilesystemRoom) throws {
        try room.check(blockBytes: tree.blockBytes, inodes: tree.inodeCount)
    }
}

/// RFC 3339 UTC, seconds precision.
public func iso8601(_ date: Date) -> String {
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withInternetDateTime]
    formatter.timeZone = TimeZone(identifier: "UTC")
    return formatter.string(from: date)
}
