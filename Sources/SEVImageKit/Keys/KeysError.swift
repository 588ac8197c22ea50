/// Errors of `rotate`, `reencrypt` and `keys`: each one line, and the image is left as it was.
public enum KeysError: SEVImageError {
    case readOnly(String, String)
    case inUseByQEMU(String)
    case noRootPartition(String, String)
    case manifestMismatch(String, String)
    case pending(String, String)
    case damagedJournal(String, String)
    case lastKeyslot(String, Int)
    case noSuchKeyslot(String, Int)
    case passphraseOpensOnlyRemovedSlot(String, Int)
    case samePassphrase(String)
    case noFreeKeyslot(String)
    /// libcryptsetup will not change the header (a requirement it does not know, from a newer cryptsetup).
    case unchangeableHeader(String, String)

    public var exitStatus: ExitStatus {
        switch self {
        case .inUseByQEMU, .pending: .conflict
        case .damagedJournal: .failure
        default: .invalidInput
        }
    }

    public var description: String {
        switch self {
        case .unchangeableHeader(let path, let why):
            "the LUKS2 header of \(path) cannot be changed here (\(why)); nothing was changed: change its keyslots with the cryptsetup that made it, or make a new image with sevimage create"
        case .readOnly(let path, let why):
            "\(path) is read-only (\(why)); nothing was changed"
        case .inUseByQEMU(let path):
            "\(path) is in use by a running QEMU (it holds QEMU's image lock); stop the VM first"
        case .noRootPartition(let path, let why):
            "\(path) has no LUKS root partition sevimage can find: \(why)"
        case .manifestMismatch(let path, let why):
            "\(path) does not describe this image: \(why)"
        case .pending(let path, let what):
            "\(path): \(what)"
        case .damagedJournal(let path, let why):
            "the write-ahead journal \(path) is damaged (\(why)); keep it and the image, and report this"
        case .lastKeyslot(let path, let slot):
            "keyslot \(slot) is the last keyslot of \(path); removing it would lock the data away for good"
        case .noSuchKeyslot(let path, let slot):
            "\(path) has no active keyslot \(slot)"
        case .passphraseOpensOnlyRemovedSlot(let path, let slot):
            "the passphrase given opens keyslot \(slot) of \(path), the one to remove: give a passphrase of a keyslot that stays"
        case .samePassphrase(let path):
            "the new passphrase already opens a keyslot of \(path); choose another"
        case .noFreeKeyslot(let path):
            "\(path) has no free keyslot left; remove one with sevimage keys remove first"
        }
    }
}
