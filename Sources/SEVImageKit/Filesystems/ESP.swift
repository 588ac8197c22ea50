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

    /// The times a FAT directory entry holds: 1980-01-01 to 2107-12-31 23:59:58, in 2-second steps.
    public static let representableTimes: ClosedRange<Int64> = 315_532_800...4_354_819_198

    /// Creates `path` (`size` bytes) as FAT32 holding `files` (image path → local file).
    /// With `timestamp`, every entry carries it, clamped to `representableTimes` (mtools would wrap 1970 to 2098).
    public func build(path: String, size: UInt64, files: [(String, String)], timestamp requested: Int64?) throws {
        let timestamp = requested.map { min(max($0, Self.representableTimes.lowerBound), Self.representableTimes.upperBound) }
        var environment: [String: String] = [:]
        if let timestamp {
            environment["SOURCE_DATE_EPOCH"] = String(timestamp)
            // FAT holds local time and mcopy converts with localtime(3): UTC, or the bytes would follow the build host's zone.
            environment["TZ"] = "UTC0"
        }
        // mkfs.fat 4.2 stamps the volume label entry with the current time whatever SOURCE_DATE_EPOCH says;
        // --invariant fixes that time but also the volume id (1234-ABCD), so the id is written back below.
        try ExternalTool.mkfsVfat.run(["-F", "32", "-n", label, "-i", String(format: "%08X", volumeID)]
                                       + (timestamp == nil ? [] : ["--invariant"])
                                       + ["-C", path, String(size / 1024)], environment: environment)
        if timestamp != nil { try writeVolumeID(path: path) }
        // mtools' own config would be read from the home directory; MTOOLS_SKIP_CHECK tolerates our sizes.
        let mtoolsEnvironment = environment.merging(["MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": "/dev/null"]) { a, _ in a }
        // The files are staged in a tree whose every entry carries the timestamp, and copied with `mcopy -s -m`,
        // which keeps the times of directories too (`mmd` would stamp them with the current time).
        let staging = path + ".staging"
        try? FileManager.default.removeItem(atPath: staging)
        defer { try? FileManager.default.removeItem(atPath: staging) }
        var stamped: [String] = []
        for (target, source) in files {
            let destination = staging + "/" + target
            var directory = PathName.directory(of: destination)
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: source, toPath: destination)
            stamped.append(destination)
            while directory.count > staging.count {
                if !stamped.contains(directory) { stamped.append(directory) }
                directory = PathName.directory(of: directory)
            }
        }
        if let timestamp {
            for entry in stamped {
                var times = [timespec(tv_sec: Int(timestamp), tv_nsec: 0), timespec(tv_sec: Int(timestamp), tv_nsec: 0)]
                utimensat(AT_FDCWD, entry, &times, 0)
            }
        }
        let topLevel = Set(files.map { String($0.0.split(separator: "/").first ?? "") }).sorted()
        for name in topLevel where !name.isEmpty {
            try ExternalTool.mcopy.run(["-s", "-m", "-i", path, staging + "/" + name, "::/"], environment: mtoolsEnvironment)
        }
    }

    /// Writes the volume id into the FAT32 boot sector and its backup (BPB offset 0x43; backup sector at offset 50).
    private func writeVolumeID(path: String) throws {
        let file = try RawFile(path: path, writable: true)
        var bootSector = [UInt8](repeating: 0, count: 512)
        try bootSector.withUnsafeMutableBytes { try file.read(into: $0, at: 0) }
        let backup = UInt64(bootSector[50]) | UInt64(bootSector[51]) << 8
        let id = [UInt8(volumeID & 0xFF), UInt8(volumeID >> 8 & 0xFF), UInt8(volumeID >> 16 & 0xFF), UInt8(volumeID >> 24)]
        for sector in [0, backup] where sector < 32 {
            try id.withUnsafeBytes { try file.write($0, at: sector * 512 + 0x43) }
        }
        try file.sync()
    }
}
