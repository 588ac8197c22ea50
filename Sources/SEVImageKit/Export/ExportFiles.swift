import Foundation

extension OutputFiles {
    /// Writes a small, non-secret file (mode 0644) in one step: to a private directory beside `path`, fsync'ed,
    /// then linked into place (renamed over an existing file with `replace`). Nothing appears at `path` on failure.
    public static func writeWhole(_ data: Data, to path: String, replace: Bool) throws {
        try checkWritable(path, force: replace)
        let work = try TemporaryDirectory(near: path, purpose: "sevimage-export")
        let temporary = work.file("output")
        try data.withUnsafeBytes { try writeNew($0, to: temporary, mode: 0o644) }
        try publish(temporary, as: path, replace: replace)
    }
}
