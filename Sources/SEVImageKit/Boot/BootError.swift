/// Why `sevimage boot` did not see the guest come up.
public enum BootError: SEVImageError {
    case imageMissing(String)
    case firmwareMissing(String, role: String)
    case invalidMemory(String)
    case invalidTimeout(String)
    /// GRUB refused the passphrase (or the embedded config could not unlock the root).
    case passphraseRefused
    /// The image's embedded GRUB config stopped the boot and said why.
    case grubStopped(String)
    /// After GRUB, the guest stopped where it waits for a person: `sign` is what it printed.
    case guestStuck(String)
    /// The whole boot took longer than allowed; `stage` says what it was still waiting for.
    case timedOut(seconds: Int, stage: String)
    /// The guest powered off (or QEMU exited cleanly) without printing the expected text.
    case poweredOffWithoutExpectedText(String)
    /// QEMU itself failed: bad arguments, a locked image, a crash.
    case qemuFailed(status: Int32, detail: String)
    /// `--accel kvm` was asked for and KVM cannot run this guest.
    case kvmUnusable(String)

    public var exitStatus: ExitStatus {
        switch self {
        case .imageMissing, .firmwareMissing, .invalidMemory, .invalidTimeout: .invalidInput
        case .passphraseRefused: .wrongPassphrase
        case .grubStopped, .guestStuck, .timedOut, .poweredOffWithoutExpectedText, .qemuFailed, .kvmUnusable: .failure
        }
    }

    public var description: String {
        switch self {
        case .imageMissing(let path):
            "image \(path) does not exist or is not a regular file"
        case .firmwareMissing(let path, let role) where role == "firmware":
            // `--bios`: one whole firmware file, such as an AmdSev OVMF.
            "OVMF firmware \(path) does not exist; build an AmdSev one with scripts/build-amdsev-ovmf.sh"
        case .firmwareMissing(let path, let role):
            "OVMF \(role) \(path) does not exist; install the Debian package ovmf or pass --ovmf-code and --ovmf-vars"
        case .invalidMemory(let text):
            "memory size \"\(text)\" is not a size between 128M and 1024G (examples: 512, 512M, 2G)"
        case .invalidTimeout(let text):
            "timeout \"\(text)\" is not a positive number of seconds"
        case .passphraseRefused:
            "the passphrase was refused by GRUB"
        case .grubStopped(let line):
            "grub stopped the boot: \(line)"
        case .guestStuck(let sign):
            "the guest got stuck after GRUB: it printed \"\(sign)\" (a second passphrase prompt, a rescue shell or a panic)"
        case .timedOut(let seconds, let stage):
            "the guest did not boot within \(seconds) seconds (still \(stage)); qemu was stopped"
        case .poweredOffWithoutExpectedText(let text):
            "the guest powered off without printing \"\(text)\""
        case .qemuFailed(let status, let detail):
            "qemu-system-x86_64 exited with status \(status)\(detail.isEmpty ? "" : ": " + detail)"
        case .kvmUnusable(let reason):
            "kvm cannot run this guest (\(reason)); use --accel tcg or --accel auto"
        }
    }
}
