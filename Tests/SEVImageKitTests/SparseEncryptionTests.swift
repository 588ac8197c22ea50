import Foundation
import Testing
@testable import SEVImageKit

/// The sparse encryption of `create` (only what mke2fs wrote is encrypted; the rest decrypts to noise),
/// checked where it matters: allocation in block groups that mke2fs never touched, whose inode tables
/// and blocks read as noise in the decrypted view, the way the booted kernel would allocate there.
@Suite(.enabled(if: canCheckImages && hasTool("dumpe2fs"), "needs the image tools, dumpe2fs and Python's cryptography"))
struct SparseEncryptionTests {
    struct Group {
        var flags: Set<String>
        var freeBlocks: Int
        var freeInodes: Int
        var inodeTable: UInt64?
    }

    /// `dumpe2fs` groups: "Group 3: (Blocks ...) csum 0x... [INODE_UNINIT, BLOCK_UNINIT]", then
    /// "Inode table at A-B ..." and "N free blocks, M free inodes, ...".
    static func groups(_ image: String) throws -> [Group] {
        let text = try runChecked("dumpe2fs", [image]).stdout
        var groups: [Group] = []
        for line in text.split(separator: "\n").map({ $0.trimmingCharacters(in: .whitespaces) }) {
            if line.hasPrefix("Group ") {
                var flags = Set<String>()
                if let open = line.lastIndex(of: "["), let close = line.lastIndex(of: "]"), open < close {
                    flags = Set(line[line.index(after: open)..<close].split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
                }
                groups.append(Group(flags: flags, freeBlocks: -1, freeInodes: -1, inodeTable: nil))
            } else if line.hasPrefix("Inode table at "), !groups.isEmpty {
                let first = line.dropFirst("Inode table at ".count).prefix { $0.isNumber }
                groups[groups.count - 1].inodeTable = UInt64(first)
            } else if line.contains(" free blocks, "), !groups.isEmpty {
                let numbers = line.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces).prefix { $0.isNumber }) ?? -1 }
                groups[groups.count - 1].freeBlocks = numbers[0]
                groups[groups.count - 1].freeInodes = numbers.count > 1 ? numbers[1] : -1
            }
        }
        return groups
    }

    @Test func allocationInUntouchedGroupsOnNoiseLeavesACleanFilesystem() throws {
        let scratch = try Scratch()
        let tree = scratch.file("tree")
        try makeRichTree(at: tree, owners: false)
        let image = scratch.file("vm.qcow2")
        let result = try sevimage(["create", "--rootfs", tree, "--output", image, "--size", "800M", "--quiet"])
        try #require(result.status == 0, "\(result)")
        // The image holds what was written (LUKS header 16 MiB, ESP with GRUB, a little ext4), not the disk.
        let imageBytes = try RawFile(path: image, writable: false).size
        #expect(imageBytes < 40 << 20, "\(imageBytes) bytes for an 800 MiB disk holding a tiny tree")

        let opened = try OpenedImage(image: image)
        let plain = try opened.decryptRoot(passphraseFile: scratch.file("vm.passphrase"))
        try runChecked("e2fsck", ["-fn", plain])
        let before = try Self.groups(plain)
        try #require(before.count >= 5, "\(before.count) block groups")
        let inodeFresh = before.indices.filter { before[$0].flags.contains("INODE_UNINIT") }
        let blockFresh = before.indices.filter { before[$0].flags.contains("BLOCK_UNINIT") }
        try #require(inodeFresh.count >= 3 && blockFresh.count >= 3, "INODE_UNINIT \(inodeFresh), BLOCK_UNINIT \(blockFresh)")
        // Their inode tables were never written by mke2fs: in the decrypted view they are noise, not zeros.
        let file = try RawFile(path: plain, writable: false)
        for index in inodeFresh {
            let table = try #require(before[index].inodeTable)
            var block = [UInt8](repeating: 0, count: 4096)
            try block.withUnsafeMutableBytes { try file.read(into: $0, at: table * 4096) }
            #expect(block.contains { $0 != 0 }, "group \(index)'s inode table reads as zeros: the test would not see noise")
        }

        // libext2fs allocates in the parent's group first: more inodes than the groups before the first fresh one have (fast symlinks, no
        // blocks) and a file larger than its free blocks push the allocation into the fresh groups.
        let perGroup = before[0..<inodeFresh[0]].reduce(64) { $0 + $1.freeInodes }
        let large = opened.scratch.file("large")
        try runChecked("dd", ["if=/dev/urandom", "of=\(large)", "bs=1M", "count=160", "status=none"])
        var commands: [String] = []
        for d in 0..<40 {
            commands.append("mkdir /fresh\(d)")
            for f in 0..<(perGroup / 40 + 1) { commands.append("symlink /fresh\(d)/link\(f) /etc/hostname") }
            commands.append("write \(tree)/etc/hostname /fresh\(d)/file")
        }
        commands.append("write \(large) /fresh39/large")
        let script = opened.scratch.file("allocate.debugfs")
        try Data(commands.joined(separator: "\n").utf8).write(to: URL(fileURLWithPath: script))
        try runChecked("debugfs", ["-w", "-f", script, plain])
        let after = try Self.groups(plain)
        let inodesTaken = inodeFresh.filter { after[$0].freeInodes < before[$0].freeInodes }
        let blocksTaken = blockFresh.filter { after[$0].freeBlocks < before[$0].freeBlocks }
        #expect(inodesTaken.count >= 1, "INODE_UNINIT groups that got inodes: \(inodesTaken) of \(inodeFresh)")
        #expect(blocksTaken.count >= 1, "BLOCK_UNINIT groups that got blocks: \(blocksTaken) of \(blockFresh)")
        #expect(inodesTaken.allSatisfy { !after[$0].flags.contains("INODE_UNINIT") })
        #expect(blocksTaken.allSatisfy { !after[$0].flags.contains("BLOCK_UNINIT") })

        // Clean, and the new files read back.
        try runChecked("e2fsck", ["-fn", plain])
        let content = try runChecked("debugfs", ["-R", "cat /fresh39/file", plain]).stdout
        #expect(content == "demo\n")
        try runChecked("debugfs", ["-R", "dump /fresh39/large \(opened.scratch.file("large.out"))", plain])
        #expect(sameBytes(try Data(contentsOf: URL(fileURLWithPath: opened.scratch.file("large.out"))), try Data(contentsOf: URL(fileURLWithPath: large))))
    }
}
