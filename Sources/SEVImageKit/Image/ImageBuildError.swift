/// Why `create` refused or failed.
public enum ImageBuildError: SEVImageError {
    case noKernel(String)
    case treeTooLarge(partition: UInt64)
    case treeLargerThanPartition(needed: UInt64, available: UInt64)
    case notExt4(String)
    case rootfsMissing(String)
    case rootfsUnusable(String, String)

    public var exitStatus: ExitStatus {
        switch self {
        case .notExt4: .failure
        default: .invalidInput
        }
    }

    public var description: String {
        switch self {
        case .noKernel(let tree):
            return "no kernel in \(tree)/boot: the root tree needs a /boot/vmlinuz* (and usually its initrd)"
        case .treeTooLarge(let partition):
            return "the root tree does not fit in the \(formatSize(partition)) root filesystem; give a larger --size"
        case .treeLargerThanPartition(let needed, let available):
            return "the root tree needs about \(formatSize(needed)) but the root filesystem holds \(formatSize(available)); give --size at least \(formatSize(needed - available)) larger"
        case .notExt4(let path):
            return "\(path) is not an ext4 filesystem"
        case .rootfsMissing(let path):
            return "root tree \(path) does not exist"
        case .rootfsUnusable(let path, let reason):
            return "root tree \(path) cannot be used: \(reason)"
        }
    }
}
