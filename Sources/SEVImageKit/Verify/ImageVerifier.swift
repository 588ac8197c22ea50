import Foundation

/// One claim of the manifest checked against the image or the firmware.
public struct VerificationCheck: Sendable, Codable, Equatable {
    public enum Status: String, Sendable, Codable {
        case pass
        case fail
        /// Not checked: what it needs was not given (say, the firmware file or the passphrase).
        case skipped
    }

    public var name: String
    public var status: Status
    public var expected: String?
    public var actual: String?
    public var note: String?

    public init(name: String, status: Status, expected: String? = nil, actual: String? = nil, note: String? = nil) {
        self.name = name; self.status = status; self.expected = expected; self.actual = actual; self.note = note
    }
}

/// What `sevimage verify` found.
public struct VerificationReport: Sendable, Codable {
    public var image: String
    public var manifest: String
    public var passed: Bool
    public var failures: Int
    public var checks: [VerificationCheck]

    /// One line per check (stderr).
    public var text: String {
        checks.map { check in
            let label = check.status == .pass ? "pass" : check.status == .fail ? "FAIL" : "skip"
            var line = "\(label)  \(check.name)"
            switch check.status {
            case .pass: if let actual = check.actual { line += ": \(actual)" }
            case .fail: line += ": expected \(check.expected ?? "-"), found \(check.actual ?? "-")"
            case .skipped: break
            }
            if let note = check.note { line += " (\(note))" }
            return line
        }.joined(separator: "\n") + "\n"
    }
}

/// `verify` failed at least one check.
public enum VerificationError: SEVImageError {
    case failed(failures: Int, total: Int, first: String)

    public var exitStatus: ExitStatus { .verificationFailed }

    public var description: String {
        switch self {
        case .failed(let failures, let total, let first):
            return "\(failures) of \(total) checks failed (first: \(first))"
        }
    }
}

/// Checks every claim of a manifest against its image (and the firmware and passphrase, when given).
///
/// Structure comes from `ImageInspector` (GPT field by field, libblkid, libcryptsetup); the passphrase
/// check unlocks a keyslot with libcryptsetup and decrypts the first 4 KiB sector of the data segment
/// with `XTSCipher` to read the ext4 superblock's UUID. Nothing is written.
public struct ImageVerifier {
    public var imagePath: String
    public var manifestPath: String
    public var passphrase: Passphrase?
    public var ovmfPath: String?

    public init(imagePath: String, manifestPath: String? = nil) {
        self.imagePath = imagePath
        self.manifestPath = manifestPath ?? Manifest.defaultPath(forImage: imagePath)
    }

    public func run() throws -> VerificationReport {
        guard let data = FileManager.default.contents(atPath: manifestPath) else {
            throw GeneralError.invalidArgument("cannot read the manifest \(manifestPath) (give it with --manifest)")
        }
        let manifest = try Manifest.decode(data, path: manifestPath)
        let inspector = try ImageInspector(path: imagePath, requireQCOW2: manifest.image.format == "qcow2")
        let inspection = try inspector.inspect()
        var checks: [VerificationCheck] = []
        func compare(_ name: String, _ expected: some CustomStringConvertible, _ actual: (some CustomStringConvertible)?, note: String? = nil) {
            let e = expected.description, a = actual?.description
            checks.append(VerificationCheck(name: name, status: e == a ? .pass : .fail, expected: e, actual: a ?? "nothing", note: note))
        }

        // The file and its container: every byte, and the block digests beside it.
        if let blockSHA256 = manifest.image.blockSHA256 {
            checks += try digestChecks(blockSHA256: blockSHA256)
        } else {
            let digest = try manifest.image.digests(of: imagePath)
            compare(digest.name, digest.expected, digest.actual)
        }
        compare("image format", manifest.image.format, inspection.format)
        compare("virtual size", manifest.image.virtualSize, inspection.virtualSize)

        // The partition table.
        let table = inspection.partitionTable
        checks.append(VerificationCheck(name: "gpt copies", status: table.primaryValid && table.backupValid && table.problems.isEmpty ? .pass : .fail,
                                        expected: "primary and backup valid and equal",
                                        actual: table.problems.isEmpty ? "primary and backup valid and equal" : table.problems.joined(separator: "; ")))
        compare("disk guid", manifest.image.diskGUID.lowercased(), table.diskGUID)
        compare("partition count", manifest.partitions.count, inspection.partitions.count)
        for claimed in manifest.partitions {
            let found = inspection.partitions.first { $0.number == claimed.number }
            let n = "partition \(claimed.number)"
            compare("\(n) type", claimed.typeGUID.lowercased(), found?.typeGUID)
            compare("\(n) guid", claimed.partitionGUID.lowercased(), found?.partitionGUID)
            compare("\(n) lbas", "\(claimed.firstLBA)-\(claimed.lastLBA)", found.map { "\($0.firstLBA)-\($0.lastLBA)" })
            compare("\(n) name", claimed.name, found?.name)
            compare("\(n) filesystem", claimed.filesystem, found?.filesystem?.type)
            compare("\(n) filesystem uuid", claimed.filesystemUUID.lowercased(), found?.filesystem?.uuid?.lowercased())
        }

        // The LUKS header.
        let root = manifest.partitions.first { $0.filesystem == "crypto_LUKS" }
        let rootFound = root.flatMap { r in inspection.partitions.first { $0.number == r.number } }
        let luks = rootFound?.luks
        let claimed = manifest.luks
        compare("luks uuid", claimed.uuid.lowercased(), luks?.uuid.lowercased())
        compare("luks version", claimed.version, luks?.version)
        compare("luks cipher", claimed.cipher, luks?.cipher)
        compare("luks key size", claimed.keySizeBits, luks?.keySizeBits)
        compare("luks sector size", claimed.sectorSize, luks?.sectorSize)
        compare("luks data offset", claimed.dataOffset, luks?.dataOffset)
        compare("luks keyslots", keyslotText(claimed.keyslots.map { ($0.slot, $0.pbkdf, $0.hash, $0.iterations) }),
                luks.map { keyslotText($0.keyslots.map { ($0.slot, $0.pbkdf, $0.hash, $0.iterations) }) })

        // The firmware.
        checks += try firmwareChecks(manifest.firmware)

        // The passphrase and the filesystem inside.
        if let passphrase {
            if let root, let entry = inspection.partitionTable.partitions.first(where: { $0.number == root.number }), luks != nil {
                checks += try unlockChecks(passphrase: passphrase, entry: entry, claimed: root, inspector: inspector)
            } else {
                checks.append(VerificationCheck(name: "passphrase opens a keyslot", status: .fail, expected: "a LUKS header", actual: "none"))
            }
        } else {
            checks.append(VerificationCheck(name: "passphrase opens a keyslot", status: .skipped, note: "give --passphrase-file to check"))
            checks.append(VerificationCheck(name: "root ext4 uuid", status: .skipped, note: "needs the passphrase"))
        }

        let failures = checks.filter { $0.status == .fail }.count
        return VerificationReport(image: imagePath, manifest: manifestPath, passed: failures == 0, failures: failures, checks: checks)
    }

    /// The image digest over the whole file, and the sidecar (`BlockDigests`) against the manifest when there is
    /// one; a digest mismatch with a trusted sidecar names the first block that differs.
    private func digestChecks(blockSHA256: String) throws -> [VerificationCheck] {
        let leaves = try ImageDigest.leaves(of: imagePath)
        let actual = leaves.bytes
        let sidecarPath = ImagePaths(image: imagePath).blockDigests
        let name = PathName.name(of: sidecarPath)
        let sidecar = try BlockDigests.read(sidecarPath)
        let fileSize = try RawFile(path: imagePath, writable: false).size
        let problem = BlockDigests.problem(sidecar, blockSHA256: blockSHA256, fileSize: fileSize)
        let expected = blockSHA256.lowercased(), found = hex(leaves.combined())
        var note: String?
        if expected != found, problem == nil, let sidecar, let block = BlockDigests.firstDifference(sidecar, actual) {
            let start = UInt64(block) * UInt64(ImageDigest.blockSize)
            note = "block \(block) (file bytes \(start)-\(min(fileSize, start + UInt64(ImageDigest.blockSize)) - 1)) differs from \(name) first"
        }
        var checks = [VerificationCheck(name: "image digest", status: expected == found ? .pass : .fail, expected: expected, actual: found, note: note)]
        if sidecar == nil {
            checks.append(VerificationCheck(name: "block digests", status: .skipped,
                                            note: "no \(name) beside the image (an earlier sevimage's); a key operation writes one"))
        } else {
            checks.append(VerificationCheck(name: "block digests", status: problem == nil ? .pass : .fail,
                                            expected: "\(name) whose SHA-256 is the image digest, \(ImageDigest.blockCount(size: fileSize)) digests",
                                            actual: problem.map { "\(name): \($0)" } ?? "\(name): \(ImageDigest.blockCount(size: fileSize)) digests"))
        }
        return checks
    }

    private func keyslotText(_ slots: [(Int, String, String, UInt32)]) -> String {
        slots.sorted { $0.0 < $1.0 }.map { "\($0.0):\($0.1)-\($0.2)/\($0.3)" }.joined(separator: ", ")
    }

    private func firmwareChecks(_ claimed: FirmwareLink?) throws -> [VerificationCheck] {
        guard let ovmfPath else {
            return [VerificationCheck(name: "firmware", status: .skipped,
                                      note: claimed == nil ? "the manifest names no firmware" : "give --ovmf \(claimed?.file ?? "OVMF.fd") to check")]
        }
        guard let claimed else {
            return [VerificationCheck(name: "firmware", status: .fail, expected: "nothing (the manifest names no firmware)",
                                      actual: PathName.name(of: ovmfPath), note: "link it with sevimage link")]
        }
        var modes: [String] = [], vcpus: [Int] = []
        for digest in claimed.launchDigests {
            if !modes.contains(digest.mode) { modes.append(digest.mode) }
            if let count = digest.vcpus, !vcpus.contains(count) { vcpus.append(count) }
        }
        let vcpuType = claimed.launchDigests.compactMap(\.vcpuType).first ?? "EPYC-v4"
        let actual = try FirmwareLink.make(ovmfPath: ovmfPath, modes: modes, vcpus: vcpus, vcpuType: vcpuType, allowNoSecretArea: true)
        var checks: [VerificationCheck] = []
        func compare(_ name: String, _ e: String, _ a: String) {
            checks.append(VerificationCheck(name: name, status: e == a ? .pass : .fail, expected: e, actual: a))
        }
        compare("firmware size", String(claimed.size), String(actual.size))
        compare("firmware sha256", claimed.sha256, actual.sha256)
        compare("firmware sha384", claimed.sha384, actual.sha384)
        func area(_ a: FirmwareLink.SecretArea?) -> String { a.map { "0x\(String($0.gpa, radix: 16)) (\($0.size) bytes)" } ?? "none" }
        compare("firmware secret area", area(claimed.secretArea), area(actual.secretArea))
        for digest in claimed.launchDigests {
            let label = digest.vcpus.map { "\(digest.mode), \($0) x \(digest.vcpuType ?? "?")" } ?? digest.mode
            let match = actual.launchDigests.first { $0.mode == digest.mode && $0.vcpus == digest.vcpus && $0.vcpuType == digest.vcpuType }
            compare("firmware launch digest (\(label))", digest.digest, match?.digest ?? "nothing")
        }
        return checks
    }

    private func unlockChecks(passphrase: Passphrase, entry: GPTEntry, claimed: Manifest.Partition,
                              inspector: ImageInspector) throws -> [VerificationCheck] {
        let header = try inspector.partitionCopy(entry, bytes: LUKSLayout.headerSize)
        let device = try CryptDevice(path: header)
        try device.load()
        let unlocked: (key: SecretBytes, keyslot: Int)
        do {
            do {
                unlocked = try device.volumeKey(passphrase: passphrase.secret)
            } catch let error as LUKSError {
                throw error.naming(inspector.disk.path)
            }
        } catch LUKSError.wrongPassphrase {
            return [VerificationCheck(name: "passphrase opens a keyslot", status: .fail, expected: "a keyslot opens", actual: "no keyslot opens"),
                    VerificationCheck(name: "root ext4 uuid", status: .skipped, note: "the volume did not open")]
        }
        var checks = [VerificationCheck(name: "passphrase opens a keyslot", status: .pass, actual: "keyslot \(unlocked.keyslot)")]
        // The ext4 superblock sits 1024 bytes into the data segment: decrypt its first 4 KiB, which is one
        // sector of 4096 bytes or several smaller ones (the header's sector size, 512 bytes included).
        let sectorSize = device.sectorSize
        let span = 4096
        guard sectorSize > 0, span % sectorSize == 0,
              let start = entry.offset.checkedAdding(device.dataOffset), let end = start.checkedAdding(UInt64(span)),
              end <= inspector.disk.virtualSize else {
            checks.append(VerificationCheck(name: "root ext4 uuid", status: .fail, expected: claimed.innerFilesystemUUID?.lowercased() ?? "an ext4 filesystem",
                                            actual: "the LUKS2 data segment (sector size \(sectorSize), offset \(device.dataOffset)) lies outside the disk"))
            return checks
        }
        var sector = try inspector.disk.read(count: span, at: start)
        defer { sector.withUnsafeMutableBytes { wipe($0) } }
        let cipher = try XTSCipher(key: unlocked.key, sectorSize: sectorSize, encrypt: false)
        try sector.withUnsafeMutableBytes { try cipher.process($0, firstSector: 0) }
        let magic = UInt16(sector[1024 + 56]) | UInt16(sector[1024 + 57]) << 8
        let found = magic == 0xEF53 ? GUID(bytes: Array(sector[(1024 + 104)..<(1024 + 120)])).description : "no ext4 superblock"
        let expected = claimed.innerFilesystemUUID?.lowercased() ?? "an ext4 filesystem"
        checks.append(VerificationCheck(name: "root ext4 uuid", status: found == expected ? .pass : .fail, expected: expected, actual: found))
        return checks
    }
}
