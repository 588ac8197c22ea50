import Foundation

/// `reencrypt`'s care of the initramfs keyslot. Its key sits in the clear in `/boot/sevimage-unlock.img` inside the
/// encrypted root, so a new volume key alone would leave whoever could read the old root a key that opens the new
/// one. The archive's block is found where the manifest says (`boot.unlockArchiveBlock`), checked to be the archive
/// whose key opens the initramfs keyslot, and as the block is re-encrypted its key is replaced by a new random one,
/// for which the new header gets a keyslot. Found nowhere (an older manifest, a guest that rewrote `/boot`), the
/// keyslot is dropped like the other extra keyslots, and reencrypt says so.
struct InitramfsKeyRenewal: Sendable {
    /// The data-segment sector (4096 bytes, the ext4 block) that holds the archive.
    let sector: UInt64
    /// Where the key's two copies are in that sector.
    let keyRanges: [Range<Int>]
    let oldSlot: Int
    let newKey: SecretBytes

    /// The renewal for this image, or nil with the reason it cannot be done.
    static func find(area: ImageHeaderArea, workspace: HeaderWorkspace, volumeKey: SecretBytes) throws -> (InitramfsKeyRenewal?, String?) {
        guard let manifest = area.manifest,
              let slot = manifest.luks.keyslots.first(where: { $0.role == "initramfs" })?.slot,
              workspace.device.keyslots.contains(where: { $0.slot == slot }) else { return (nil, nil) }
        let sectorSize = UInt64(LUKSLayout.sectorSize)
        let dataSectors = (area.rootSize - min(area.rootSize, LUKSLayout.headerSize)) / sectorSize
        guard let block = manifest.boot?.unlockArchiveBlock, block < dataSectors else {
            return (nil, "the manifest does not say where \(InitramfsKeyfile.archivePath) is")
        }
        var bytes = try area.qcow.read(count: Int(sectorSize), at: area.rootOffset + LUKSLayout.headerSize + block * sectorSize)
        defer { bytes.withUnsafeMutableBytes { wipe($0) } }
        try bytes.withUnsafeMutableBytes { try XTSCipher(key: volumeKey, encrypt: false).process($0, firstSector: block) }
        let uuid = workspace.device.uuid.lowercased()
        guard let files = Cpio.files(in: bytes),
              let initramfsTools = files["cryptroot/keyfiles/\(InitramfsKeyfile.mappingName).key"],
              let systemd = files["etc/cryptsetup-keys.d/luks-\(uuid).key"],
              initramfsTools.count == InitramfsKeyfile.generatedBytes, bytes[initramfsTools] == bytes[systemd] else {
            return (nil, "block \(block) no longer holds \(InitramfsKeyfile.archivePath)")
        }
        guard try workspace.keyslot(opening: Passphrase(SecretBytes(bytes[initramfsTools]))) == slot else {
            return (nil, "the key in \(InitramfsKeyfile.archivePath) does not open keyslot \(slot)")
        }
        let renewal = InitramfsKeyRenewal(sector: block, keyRanges: [initramfsTools, systemd], oldSlot: slot,
                                          newKey: try SecretBytes(randomCount: InitramfsKeyfile.generatedBytes))
        return (renewal, nil)
    }

    /// Puts the new key into the decrypted archive sector.
    func patch(_ sector: UnsafeMutableRawBufferPointer) {
        newKey.withUnsafeBytes { key in
            for range in keyRanges where range.upperBound <= sector.count {
                UnsafeMutableRawBufferPointer(rebasing: sector[range]).copyMemory(from: key)
            }
        }
    }
}
