import CBlkid
import Foundation

/// Probes a file for a filesystem or LUKS superblock with libblkid: type, UUID, label, version.
///
/// Owns one `blkid_probe` and frees it in `deinit`. Not `Sendable`: a probe is one thread's.
public final class BlkidProbe {
    private let probe: OpaquePointer
    public let path: String

    public init(path: String) throws {
        self.path = path
        guard let probe = blkid_new_probe_from_filename(path) else {
            throw GeneralError.io("probe", path: path, errno: errno == 0 ? EIO : errno)
        }
        self.probe = probe
    }

    deinit { blkid_free_probe(probe) }

    /// The superblock's values (`TYPE`, `UUID`, `LABEL`, `VERSION`, ...), or nil when blkid finds none
    /// or finds more than one (an ambivalent result is not something to trust).
    public func superblock() throws -> [String: String]? {
        _ = blkid_probe_enable_superblocks(probe, 1)
        _ = blkid_probe_set_superblocks_flags(probe, BLKID_SUBLKS_LABEL | BLKID_SUBLKS_UUID | BLKID_SUBLKS_TYPE | BLKID_SUBLKS_VERSION)
        let status = blkid_do_safeprobe(probe)
        if status == 1 || status == -2 { return nil }
        guard status == 0 else { throw GeneralError.io("probe", path: path, errno: EIO) }
        var values: [String: String] = [:]
        for index in 0..<blkid_probe_numof_values(probe) {
            var name: UnsafePointer<CChar>?
            var data: UnsafePointer<CChar>?
            var length = 0
            guard blkid_probe_get_value(probe, index, &name, &data, &length) == 0, let name, let data else { continue }
            values[String(cString: name)] = String(cString: data)
        }
        return values
    }
}
