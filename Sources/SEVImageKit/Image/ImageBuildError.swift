/// Why `create` refused or failed.
public enum ImageBuildError: SEVImageError {
    case noKernel(String)
    case treeTooLarge(partition: UInt64)
    /// `suggestedSize`: the `--size` whose root filesystem would hold the tree (nil beyond any disk); `complete`
    /// false: a tarball was not read to its end, so the figures are a lower bound.
    case treeLargerThanPartition(needed: UInt64, available: UInt64, suggestedSize: UInt64?, complete: Bool = true)
    /// More files, directories and links than the root filesystem has inodes for.
    case tooManyEntries(entries: Int, available: Int, suggestedSize: UInt64?, complete: Bool = true)

    public var exitStatus: ExitStatus { .invalidInput }

    private static func advice(_ suggested: UInt64?, complete: Bool) -> String {
        guard let suggested else { return "no disk is large enough" }
        return complete ? "give --size \(formatSize(suggested)) or larger" : "give --size larger than \(formatSize(suggested))"
    }

    public var description: String {
        switch self {
        case .noKernel(let tree):
            return "no kernel in \(tree)/boot: the root tree needs a /boot/vmlinuz* (and usually its initrd)"
        case .treeTooLarge(let partition):
            return "the root tree does not fit in the \(readableSize(partition)) root filesystem; give a larger --size"
        case .treeLargerThanPartition(let needed, let available, let suggested, let complete):
            return "the root tree needs \(complete ? "about" : "at least") \(readableSize(needed)) but the root filesystem holds "
                + "\(readableSize(available)); " + Self.advice(suggested, complete: complete)
        case .tooManyEntries(let entries, let available, let suggested, let complete):
            return "the root tree has \(complete ? "" : "at least ")\(entries) files, directories and links but the root filesystem "
                + "has inodes for \(available) (one per 16 KiB); " + Self.advice(suggested, complete: complete)
        }
    }
}
