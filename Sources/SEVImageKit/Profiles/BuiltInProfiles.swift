// The text of each profiles/*.toml, compiled into the binary so that `--profile NAME` works anywhere.
// Keep it equal to the files: ProfileTests.builtInTextEqualsTheFilesInProfiles fails when they drift. To regenerate after editing a
// profile, copy the file's text between the delimiters (it ends with one newline, hence the blank line).

extension Profile {
    /// The built-in profiles in the order `profiles list` shows them.
    static let builtInProfileNames = ["default", "pipeline", "sev-es", "sev-snp", "recovery"]

    /// Name to TOML text.
    static let builtInProfiles: [String: String] = [
        "default": #"""
# An image author on a laptop: the defaults, every key spelled out.
#
# Copy this file to start a profile of your own, or write `extends = "default"` and set only what differs.
# Flags on the command line (--size, --json, --quiet) override what a profile says.

[image]
# Virtual size of the QCOW2 disk: bytes, or a whole number with K, M, G or T (powers of 1024).
# At least the ESP plus 64M, at most 64T. The file itself stays sparse.
size = "8G"

[esp]
# EFI system partition (FAT32): at least 33M, at most 4G.
size = "64M"

[luks]
# PBKDF2-SHA256 iterations of the keyslot holding the generated 256-bit passphrase
# (1000 to 100_000_000). A random passphrase needs no costly key derivation, and GRUB derives slowly.
pbkdf2_iterations = 1000
# Iterations of a keyslot for a passphrase a person types (recovery.toml adds one).
recovery_pbkdf2_iterations = 1_000_000
# Encrypt the whole root partition, free space included, so that the used-block pattern stays hidden.
wipe_free_space = false

[boot]
# The generated /boot/grub/grub.cfg boots the newest kernel in /boot with
# "root=UUID=<ext4> rd.luks.uuid=<luks> rw" followed by this.
kernel_cmdline = "console=ttyS0 quiet"
# true: kernel_cmdline is the whole command line instead (write @ROOT_UUID@ and @LUKS_UUID@ for the UUIDs).
replace_kernel_cmdline = false
# A /boot/grub/grub.cfg that the tree brings: "generate" replaces it with sevimage's, "keep" boots it as it is
# (it runs on the unlocked root; list /boot/sevimage-unlock.img after the initrd on its initrd line).
grub_cfg = "generate"
# A keyslot whose random key, with its crypttab entry, sits in /boot/sevimage-unlock.img inside the encrypted
# root; GRUB loads it after the tree's initramfs, which then unlocks the root again without asking.
initramfs_unlock = true
# Seconds GRUB's menu waits (0 to 3600).
grub_timeout = 0

[firmware]
# Launch digests recorded in the manifest when --ovmf is given: any of "sev", "sev-es", "sev-snp".
measure_modes = ["sev"]
# vCPU counts for the SEV-ES and SEV-SNP digests (1 to 512), one digest per count.
vcpus = [1]
# QEMU vCPU type (-cpu) for the SEV-ES and SEV-SNP digests.
vcpu_type = "EPYC-v4"
# Accept a firmware without an SEV secret area: the image then boots only with a typed passphrase.
standard_boot_only = false

[output]
# Print one JSON object on stdout instead of a summary, as --json does.
json = false
# Print no progress on stderr, as --quiet does.
quiet = false

[recovery]
# Add a second keyslot for a recovery passphrase a person keeps.
keyslot = false

"""#,
        "pipeline": #"""
# An image factory stage: no progress, one JSON object on stdout, an exit status.
#
# Pair it with SOURCE_DATE_EPOCH and --seed for reproducible builds.
extends = "default"

[output]
json = true
quiet = true

"""#,
        "sev-es": #"""
# SEV-ES guests: record the SEV and SEV-ES launch digests for 1, 2 and 4 vCPUs.
extends = "default"

[firmware]
measure_modes = ["sev", "sev-es"]
vcpus = [1, 2, 4]
vcpu_type = "EPYC-v4"

"""#,
        "sev-snp": #"""
# SEV-SNP guests: record the SEV-SNP launch digest (SHA-384, page by page).
extends = "default"

[firmware]
measure_modes = ["sev-snp"]
vcpus = [1]
vcpu_type = "EPYC-v4"

"""#,
        "recovery": #"""
# Adds a recovery keyslot for a passphrase a person keeps, with a costly key derivation.
#
# A typed passphrase has far less entropy than the generated one, so its keyslot is slow to try.
extends = "default"

[luks]
recovery_pbkdf2_iterations = 2_000_000

[recovery]
keyslot = true

"""#,
    ]
}
