import Foundation

/// Builds the EFI system partition into a plain file, without mounting: `mkfs.vfat` then `mtools`.
public struct ESPBuilder {
    /// The FAT volume id, 8 hex digits.
    public var volumeID: UInt32
    public var label = "ESP"

    public init(volumeID: UInt32) { self.volumeID = volumeID }

    /// "XXXX-XXXX", as blkid shows FAT volume ids.
    public var volumeIDText: String {
        let h = String(format: "%08X", volumeID)
        return String(h.prefix(4)) + "-" + String(h.suffix(4))
    }

    /// Creates `path` (`size` bytes) as FAT32 holding `files` (image path → local file).
    public func build(path: String, size: UInt64, files: [(String, String)], timestamp: Int64?) throws {
        var environment: [String: String] = [:]
        if let timestamp { environment["SOURCE_DATE_EPOCH"] = String(timestamp) }
        try ExternalTool.mkfsVfat.run(["-F", "32", "-n", label, "-i", String(format: "%08X", volumeID), "--invariant",
                                       "-C", path, String(size / 1024)], environment: environment)
        var directories = Set<String>()
        for (target, _) in files {
            var parts = target.split(separator: "/").dropLast().map(String.init)
            var prefix = ""
            while !parts.isEmpty {
                prefix += "/" + parts.removeFirst()
                directories.insert(prefix)
            }
        }
        // mtools' own config would be read from the home directory; MTOOLS_SKIP_CHECK tolerates our sizes.
        let mtoolsEnvironment = environment.merging(["MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": "/dev/null"]) { a, _ in a }
        for directory in directories.sorted() {
            try ExternalTool.mmd.run(["-i", path, "::" + directory], environment: mtoolsEnvironment)
        }
        for (target, source) in files {
            if let timestamp {
                var times = [timespec(tv_sec: Int(timestamp), tv_nsec: 0), timespec(tv_sec: Int(timestamp), tv_nsec: 0)]
                utimensat(AT_FDCWD, source, &times, 0)
            }
            try ExternalTool.mcopy.run(["-m", "-i", path, source, "::" + target], environment: mtoolsEnvironment)
        }
    }
}
