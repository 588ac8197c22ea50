import Foundation

extension CreateRequest {
    /// Refuses, before anything is written, an output named like a companion file (`x.passphrase`) and
    /// outputs that lead to one file or to an input: `--output d/x.passphrase` made the image replace its
    /// own new passphrase. And a directory tree deeper than `RootTree.maximumDepth`, before mke2fs sees it. The manifest and passphrase are ImagePaths' (the same names `rotate` uses).
    public func checkPaths() throws {
        var files: [(role: String, path: String)] = [("root tree", rootfs)]
        if let ovmf { files.append(("firmware", ovmf)) }
        try ImagePaths.check(image: output, extra: files)
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: rootfs, isDirectory: &isDirectory), isDirectory.boolValue {
            try RootTree.checkDepth(of: rootfs)
        }
    }
}
