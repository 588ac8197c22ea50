/// SEVImageKit: the library behind the `sevimage` command.
///
/// One folder per concern: Disk (GPT, QCOW2), LUKS (header, keyslots, encryption), Filesystems (ext4, FAT),
/// Firmware (OVMF table, launch digests), Secret (passphrase, secret table, LAUNCH_SECRET, QMP),
/// Manifest, Profiles, Boot (QEMU), Support (errors, secrets, files, processes).
public enum SEVImageKit {
    public static let version = "0.3.0"
}
