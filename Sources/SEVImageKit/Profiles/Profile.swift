/// The settings an image is built with. `profiles/*.toml` hold named sets; command-line flags override them.
///
/// Every key here is documented in the README ("Profiles") with its default. The TOML keys are the
/// snake_case forms of these names, grouped in tables: `[image]`, `[esp]`, `[luks]`, `[boot]`,
/// `[firmware]`, `[output]`, `[recovery]` (see `Profile.keys` for the exact mapping and limits).
/// `Profile.load(nameOrPath:)` reads one; `Profile()` holds the defaults, which `profiles/default.toml` spells out.
public struct Profile: Sendable, Equatable, Codable {
    /// The profile's name (file name without `.toml`), or the path it was loaded from.
    public var name: String = "default"

    // [image]
    /// Virtual disk size in bytes.
    public var diskSize: UInt64 = 8 << 30
    // [esp]
    /// EFI system partition size in bytes (FAT32 needs at least 33 MiB with 512-byte sectors).
    public var espSize: UInt64 = 64 << 20
    // [luks]
    /// PBKDF2-SHA256 iterations of the keyslot that holds the generated passphrase.
    public var pbkdf2Iterations: UInt32 = 1000
    /// PBKDF2-SHA256 iterations of a keyslot for a passphrase a person types (recovery keys).
    public var recoveryPbkdf2Iterations: UInt32 = 1_000_000
    /// Encrypt the whole root partition, free space included, so that the used-block pattern is hidden.
    public var wipeFreeSpace: Bool = false
    // [boot]
    /// Appended to the generated kernel command line (`root=UUID=… rd.luks.uuid=… rw`) of the generated
    /// `/boot/grub/grub.cfg`; with `replaceKernelCommandLine`, the whole command line.
    public var kernelCommandLine: String = "console=ttyS0 quiet"
    /// Whether `kernelCommandLine` replaces the generated part instead of following it (`@ROOT_UUID@` and
    /// `@LUKS_UUID@` in it are replaced by the ext4 and LUKS UUIDs).
    public var replaceKernelCommandLine: Bool = false
    /// What to do with a `/boot/grub/grub.cfg` the tree brings: replace it with the generated one, or keep it.
    public var grubConfig: GrubConfigChoice = .generate
    /// Add a keyslot whose key, with the crypttab entry, goes into a small archive inside the encrypted `/boot`
    /// that GRUB loads after the tree's initramfs, so that the initramfs unlocks the root again without a prompt.
    public var initramfsUnlock: Bool = true
    /// Seconds GRUB's menu waits in a generated grub.cfg.
    public var grubTimeout: Int = 0
    // [firmware]
    /// Launch digests recorded in the manifest when `--ovmf` is given: modes among sev, sev-es, sev-snp.
    public var measureModes: [String] = ["sev"]
    /// vCPU counts for the SEV-ES and SEV-SNP digests.
    public var vcpus: [Int] = [1]
    /// vCPU type (QEMU `-cpu`) for the SEV-ES and SEV-SNP digests.
    public var vcpuType: String = "EPYC-v4"
    /// Allow a firmware without an SEV secret area (the image then boots only through the ESP and a typed passphrase).
    public var allowStandardBootOnly: Bool = false
    // [output]
    /// Print one JSON object on stdout by default.
    public var json: Bool = false
    /// Print no progress.
    public var quiet: Bool = false
    // [recovery]
    /// Add a second keyslot for a recovery passphrase a person keeps (PBKDF2 with `recoveryPbkdf2Iterations`).
    public var recoveryKeyslot: Bool = false

    public init() {}
}

/// `[boot] grub_cfg`: the tree's own `/boot/grub/grub.cfg` is replaced by the generated one, or kept.
public enum GrubConfigChoice: String, Sendable, Equatable, Codable, CaseIterable {
    case generate
    case keep
}
