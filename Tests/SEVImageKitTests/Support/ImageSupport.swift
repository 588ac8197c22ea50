import Foundation
import Testing
@testable import SEVImageKit

/// A small root tree with every kind of entry `create` must carry over exactly.
func makeRichTree(at root: String, owners: Bool) throws {
    let fm = FileManager.default
    for dir in ["boot", "etc/ssh", "usr/bin", "var/empty", "home/user/deep/er"] {
        try fm.createDirectory(atPath: "\(root)/\(dir)", withIntermediateDirectories: true)
    }
    try Data("fake kernel\n".utf8).write(to: URL(fileURLWithPath: "\(root)/boot/vmlinuz-6.1.0-9-amd64"))
    try Data("older kernel\n".utf8).write(to: URL(fileURLWithPath: "\(root)/boot/vmlinuz-6.1.0-10-amd64"))
    try Data("initrd\n".utf8).write(to: URL(fileURLWithPath: "\(root)/boot/initrd.img-6.1.0-10-amd64"))
    try Data("demo\n".utf8).write(to: URL(fileURLWithPath: "\(root)/etc/hostname"))
    try Data((0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 2654435761 >> 13) }).write(to: URL(fileURLWithPath: "\(root)/usr/bin/tool"))
    chmod("\(root)/usr/bin/tool", 0o4755)
    try Data("key\n".utf8).write(to: URL(fileURLWithPath: "\(root)/etc/ssh/host_key"))
    chmod("\(root)/etc/ssh/host_key", 0o600)
    symlink("../usr/bin/tool", "\(root)/etc/tool-link")
    symlink("/" + String(repeating: "long/", count: 20) + "target", "\(root)/etc/slow-link")
    link("\(root)/etc/hostname", "\(root)/home/user/hostname-hardlink")
    try Data("name with spaces\n".utf8).write(to: URL(fileURLWithPath: "\(root)/home/user/a file with spaces"))
    if owners {
        chown("\(root)/home/user", 1000, 1000)
        chown("\(root)/home/user/a file with spaces", 1000, 100)
        lchown("\(root)/etc/tool-link", 1000, 1000)
    }
}

/// A created image opened up with independent tools: the raw view, its partitions, the decrypted root.
final class OpenedImage {
    let scratch: Scratch
    let raw: String
    let partitions: [[String: Any]]
    let luksPartition: String
    let espPartition: String

    init(image: String) throws {
        scratch = try Scratch()
        raw = scratch.file("disk.raw")
        try runChecked("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", image, raw])
        let table = try runChecked("sfdisk", ["--json", raw])
        let json = try JSONSerialization.jsonObject(with: table.stdoutData) as? [String: Any]
        partitions = ((json?["partitiontable"] as? [String: Any])?["partitions"] as? [[String: Any]]) ?? []
        espPartition = scratch.file("esp.fat")
        luksPartition = scratch.file("root.luks")
        for (index, path) in [(0, espPartition), (1, luksPartition)] where index < partitions.count {
            let start = partitions[index]["start"] as? Int ?? 0, size = partitions[index]["size"] as? Int ?? 0
            try runChecked("dd", ["if=\(raw)", "of=\(path)", "bs=512", "skip=\(start)", "count=\(size)", "conv=sparse", "status=none"])
        }
    }

    /// The root filesystem decrypted by Python's `cryptography` with the key `cryptsetup` recovers.
    func decryptRoot(passphraseFile: String) throws -> String {
        let key = scratch.file("volume.key")
        try runChecked("cryptsetup", ["luksDump", "--dump-volume-key", "--batch-mode", "--key-file", passphraseFile,
                                      "--volume-key-file", key, luksPartition])
        let plain = scratch.file("root.ext4")
        try runChecked(python3, [repositoryRoot.path + "/Tests/Oracles/luks_decrypt.py", luksPartition, key,
                                 String(LUKSLayout.headerSize), "4096", plain])
        unlink(key)
        return plain
    }
}

@discardableResult
func runChecked(_ tool: String, _ arguments: [String], input: Data? = nil) throws -> RunResult {
    let result = try runProgram(tool, arguments, input: input)
    guard result.status == 0 else {
        throw GeneralError.toolFailed(tool, status: result.status, stderr: result.stderr + result.stdout)
    }
    return result
}

/// Paths that exist in a directory (to prove a failed run left nothing behind).
func entries(of directory: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted()
}
