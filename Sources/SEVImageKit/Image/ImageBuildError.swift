/// Why `create` refused or failed.
public enum ImageBuildError: SEVImageError {
    case noKernel(String)
    case treeTooLarge(partition: UInt64)
    case treeLargerThanPartition(needed: UInt64, available: UInt64)

    public var exitStatus: ExitStatus { .invalidInput }

    public var description: String {
        switch self {
        case .noKernel(let tree):
            return "no kernel in \(tree)/boot: the root tree needs a /boot/vmlinuz* (and usually its initrd)"
        case .treeTooLarge(let partition):
            return "the root tree does not fit in the \(readableSize(partition)) root filesystem; give a larger --size"
        case .treeLargerThanPartition(let needed, let available):
            return "the root tree needs about \(readableSize(needed)) but the root filesystem holds \(readableSize(available)); give --size at least \(readableSize(needed - available)) larger"
        }
    }
}
