import Foundation

extension OutputFiles {
    /// Writes a small, non-secret file (mode 0644) in one step: to a private directory beside `path`, fsync'ed,
    /// then linked into place (renamed over an existing file with `replace`). Nothing appears at `path` on failure.
    /// `path` may not lead to one of `inputs` (with `replace`, the output would take the place of an input).
    public static func writeWhole(_ data: Data, to path: String, replace: Bool, inputs: [String] = []) throws {
        for input in inputs where PathName.resolved(input) == PathName.resolved(path) {
            throw GeneralError.invalidArgument("the output \(path) is \(input), an input of this command; give another file")
        }
        try checkWritable(path, force: replace)
        let work = try TemporaryDirectory(near: path, purpose: "sevimage-export")
        let temporary = work.file("output")
        try data.withUnsafeBytes { try writeNew($0, to: temporary, mode: 0o644) }
        try publish(temporary, as: path, replace: replace)
    }
}
