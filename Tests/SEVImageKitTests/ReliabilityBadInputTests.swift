import Foundation
import Testing
@testable import SEVImageKit

/// The bad-input matrix (issue 7): one row per input, each with its exact exit status, a one-line message
/// that names the problem, and nothing left at the output paths. CreateTests holds the first rows for
/// `create` (missing rootfs, no kernel, sizes 8X, 0 and 1M, a tree larger than the disk, empty and NUL
/// passphrase files, a missing output directory, an existing output); these are the rest.
@Suite(.enabled(if: canCheckImages, "needs the image tools (e2fsprogs, dosfstools, mtools, grub, qemu-utils, cryptsetup, fdisk)"))
struct ReliabilityBadInputTests {
    struct Row: CustomTestStringConvertible, Sendable {
        var name: String
        var arguments: @Sendable (_ scratch: String) -> [String]
        var setup: @Sendable (_ scratch: String) throws -> Void = { _ in }
        var status: Int32
        var message: String
        /// Run unprivileged (root ignores file modes).
        var user: UInt32? = nil
        var testDescription: String { name }
    }

    static func file(_ path: String, _ bytes: [UInt8], mode: Int) {
        _ = FileManager.default.createFile(atPath: path, contents: Data(bytes), attributes: [.posixPermissions: mode])
    }

    static let createRows: [Row] = [
        Row(name: "rootfs is an empty directory", arguments: { ["--rootfs", "\($0)/empty"] },
            setup: { try FileManager.default.createDirectory(atPath: "\($0)/empty", withIntermediateDirectories: false) },
            status: 2, message: "no kernel in"),
        Row(name: "rootfs is an empty file", arguments: { ["--rootfs", "\($0)/empty.tar"] },
            setup: { file("\($0)/empty.tar", [], mode: 0o644) },
            status: 2, message: "not a directory, and not a tar archive"),
        Row(name: "rootfs is a FIFO", arguments: { ["--rootfs", "\($0)/fifo"] },
            setup: { mkfifo("\($0)/fifo", 0o644) },
            status: 2, message: "cannot be used: not a directory or a tarball"),
        Row(name: "rootfs is /dev/null", arguments: { _ in ["--rootfs", "/dev/null"] },
            status: 2, message: "root tree /dev/null cannot be used"),
        Row(name: "rootfs is unreadable", arguments: { ["--rootfs", "\($0)/private/tree"] },
            setup: { scratch in
                try FileManager.default.createDirectory(atPath: "\(scratch)/private", withIntermediateDirectories: false)
                try makeRichTree(at: "\(scratch)/private/tree", owners: false)
                chmod("\(scratch)/private", 0o700)
            }, status: 2, message: "cannot be used: permission denied", user: 65534),
        Row(name: "a file in the rootfs is unreadable", arguments: { ["--rootfs", "\($0)/tree"] },
            setup: { scratch in
                _ = try runChecked("chmod", ["-R", "a+rX", "\(scratch)/tree"])
                chmod("\(scratch)/tree/etc/hostname", 0)
            }, status: 2, message: "cannot be read: permission denied", user: 65534),
        Row(name: "a file name with a newline", arguments: { ["--rootfs", "\($0)/tree"] },
            setup: { file("\($0)/tree/etc/new\nline", [], mode: 0o644) },
            status: 2, message: "has a line break in its name"),
        Row(name: "a file name that is not UTF-8", arguments: { ["--rootfs", "\($0)/tree"] },
            setup: { scratch in
                let name = Array("\(scratch)/tree/etc/bad".utf8) + [0xFF, 0xFE, 0]
                let fd = name.withUnsafeBufferPointer { $0.withMemoryRebound(to: CChar.self) { open($0.baseAddress!, O_CREAT | O_WRONLY, 0o644) } }
                close(fd)
            }, status: 2, message: "is not valid utf-8"),
        Row(name: "a 4 GiB sparse file that does not fit", arguments: { ["--rootfs", "\($0)/tree", "--size", "2G"] },
            setup: { scratch in
                file("\(scratch)/tree/etc/sparse", [], mode: 0o644)
                truncate("\(scratch)/tree/etc/sparse", 4 << 30)
            }, status: 2, message: "the root tree needs about"),
        Row(name: "size 1", arguments: { ["--rootfs", "\($0)/tree", "--size", "1"] }, status: 2, message: "a disk of 1 is too small"),
        Row(name: "size 1e20", arguments: { ["--rootfs", "\($0)/tree", "--size", "1e20"] }, status: 2, message: "invalid size '1e20'"),
        Row(name: "size beyond 16 EiB", arguments: { ["--rootfs", "\($0)/tree", "--size", "100000000T"] }, status: 2, message: "too large"),
        Row(name: "size beyond the 64T limit", arguments: { ["--rootfs", "\($0)/tree", "--size", "1000T"] }, status: 2, message: "is too large: at most 64T"),
        Row(name: "output directory read-only", arguments: { ["--rootfs", "\($0)/tree", "--output", "\($0)/ro/vm.qcow2"] },
            setup: { scratch in
                _ = try runChecked("chmod", ["-R", "a+rX", "\(scratch)/tree"])
                try FileManager.default.createDirectory(atPath: "\(scratch)/ro", withIntermediateDirectories: false)
                chmod("\(scratch)/ro", 0o555)
            }, status: 2, message: "/ro is not writable", user: 65534),
        Row(name: "output is a directory", arguments: { ["--rootfs", "\($0)/tree", "--output", "\($0)/dir.qcow2"] },
            setup: { try FileManager.default.createDirectory(atPath: "\($0)/dir.qcow2", withIntermediateDirectories: false) },
            status: 2, message: "dir.qcow2 is a directory"),
        Row(name: "output is a symbolic link", arguments: { ["--rootfs", "\($0)/tree", "--output", "\($0)/link.qcow2"] },
            setup: { symlink("\($0)/elsewhere.qcow2", "\($0)/link.qcow2") },
            status: 2, message: "link.qcow2 is a symbolic link"),
        Row(name: "passphrase file writable by the group", arguments: { ["--rootfs", "\($0)/tree", "--passphrase-file", "\($0)/gw.pass"] },
            setup: { file("\($0)/gw.pass", Array("secret".utf8), mode: 0o620) },
            status: 2, message: "gw.pass is writable by other users"),
        Row(name: "passphrase file writable by everyone", arguments: { ["--rootfs", "\($0)/tree", "--passphrase-file", "\($0)/ww.pass"] },
            setup: { file("\($0)/ww.pass", Array("secret".utf8), mode: 0o666) },
            status: 2, message: "ww.pass is writable by other users"),
        Row(name: "passphrase file is a FIFO", arguments: { ["--rootfs", "\($0)/tree", "--passphrase-file", "\($0)/pass.fifo"] },
            setup: { mkfifo("\($0)/pass.fifo", 0o600) },
            status: 2, message: "pass.fifo is not a regular file"),
        Row(name: "passphrase file is /dev/null", arguments: { ["--rootfs", "\($0)/tree", "--passphrase-file", "/dev/null"] },
            status: 2, message: "/dev/null is not a regular file"),
        Row(name: "passphrase file is missing", arguments: { ["--rootfs", "\($0)/tree", "--passphrase-file", "\($0)/none.pass"] },
            status: 2, message: "cannot read passphrase file"),
        Row(name: "recovery passphrase file writable by others", arguments: { ["--rootfs", "\($0)/tree", "--profile", "recovery", "--recovery-passphrase-file", "\($0)/r.pass"] },
            setup: { file("\($0)/r.pass", Array("recover me".utf8), mode: 0o646) },
            status: 2, message: "r.pass is writable by other users"),
        Row(name: "profile with an unknown key", arguments: { ["--rootfs", "\($0)/tree", "--profile", "\($0)/p.toml"] },
            setup: { file("\($0)/p.toml", Array("[image]\nsise = \"1G\"\n".utf8), mode: 0o644) },
            status: 2, message: "line 2: unknown key"),
        Row(name: "profile with a wrong type", arguments: { ["--rootfs", "\($0)/tree", "--profile", "\($0)/p.toml"] },
            setup: { file("\($0)/p.toml", Array("[luks]\npbkdf2_iterations = \"many\"\n".utf8), mode: 0o644) },
            status: 2, message: "line 2: 'luks.pbkdf2_iterations' must be an integer"),
        Row(name: "profile with a value out of range", arguments: { ["--rootfs", "\($0)/tree", "--profile", "\($0)/p.toml"] },
            setup: { file("\($0)/p.toml", Array("[boot]\ngrub_timeout = 99999\n".utf8), mode: 0o644) },
            status: 2, message: "grub_timeout"),
        Row(name: "profile that is not TOML", arguments: { ["--rootfs", "\($0)/tree", "--profile", "\($0)/p.toml"] },
            setup: { file("\($0)/p.toml", Array("[image\nsize = \n".utf8), mode: 0o644) },
            status: 2, message: "p.toml, line 1"),
    ]

    @Test(arguments: createRows)
    func createRefuses(_ row: Row) throws {
        let scratch = try Scratch()
        try makeRichTree(at: scratch.file("tree"), owners: false)
        try row.setup(scratch.path)
        let before = entries(of: scratch.path)
        var arguments = ["create"] + row.arguments(scratch.path)
        if !arguments.contains("--output") { arguments += ["--output", scratch.file("vm.qcow2")] }
        if !arguments.contains("--size") { arguments += ["--size", "128M"] }
        let result = try sevimage(arguments, user: row.user)
        #expect(result.status == row.status, "\(result)")
        #expect(result.stdout.isEmpty)
        #expect(result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
        #expect(result.stderr.hasPrefix("sevimage: error: ") && result.stderr.contains(row.message), "\(result.stderr)")
        #expect(entries(of: scratch.path) == before, "something was written")
        if let output = arguments.firstIndex(of: "--output").map({ arguments[$0 + 1] }) {
            let directory = (output as NSString).deletingLastPathComponent
            #expect(entries(of: directory).allSatisfy { !$0.hasPrefix(".sevimage") && !$0.hasSuffix(".sevimage-lock") })
        }
    }

    /// World-readable passphrase file: a warning on stderr, and the image is made with that passphrase.
    @Test func worldReadablePassphraseFileWarnsAndWorks() throws {
        let scratch = try Scratch()
        try makeRichTree(at: scratch.file("tree"), owners: false)
        Self.file(scratch.file("readable.pass"), Array("readable by all".utf8), mode: 0o644)
        let result = try sevimage(["create", "--rootfs", scratch.file("tree"), "--output", scratch.file("vm.qcow2"), "--size", "128M",
                                   "--quiet", "--passphrase-file", scratch.file("readable.pass")])
        #expect(result.status == 0, "\(result)")
        #expect(result.stderr.hasPrefix("sevimage: warning: ") && result.stderr.hasSuffix("\(scratch.file("readable.pass")) is readable by other users; chmod 600 it\n")
                && result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
        let opened = try OpenedImage(image: scratch.file("vm.qcow2"))
        #expect(try runProgram("cryptsetup", ["open", "--test-passphrase", "--key-file", scratch.file("readable.pass"), opened.luksPartition]).status == 0)
        #expect(!FileManager.default.fileExists(atPath: scratch.file("vm.passphrase")))
    }

    /// A given passphrase that only the SEV secret path can use (GRUB's prompt takes printable ASCII, at most 254
    /// characters): one warning line, and the image is made with it.
    @Test func untypablePassphraseOnlyWarns() throws {
        let scratch = try Scratch()
        try makeRichTree(at: scratch.file("tree"), owners: false)
        Self.file(scratch.file("u.pass"), Array("pässwort".utf8), mode: 0o600)
        let result = try sevimage(["create", "--rootfs", scratch.file("tree"), "--output", scratch.file("vm.qcow2"), "--size", "128M",
                                   "--quiet", "--passphrase-file", scratch.file("u.pass")])
        #expect(result.status == 0, "\(result)")
        #expect(result.stderr == "sevimage: warning: the passphrase in \(scratch.file("u.pass")) cannot be typed at GRUB's prompt (byte 2 (0xC3) is not ASCII; GRUB's prompt takes only printable ASCII (0x20 to 0x7E)): only the SEV secret path will unlock the image with it, not a standard boot\n", "\(result.stderr)")
        let opened = try OpenedImage(image: scratch.file("vm.qcow2"))
        #expect(try runProgram("cryptsetup", ["open", "--test-passphrase", "--key-file", scratch.file("u.pass"), opened.luksPartition]).status == 0)
    }

    /// Legal in a root tree, and carried over as they are: a symlink loop, an absolute symlink that points
    /// outside the tree (a link is not followed at build time: it is copied as a link), a device node and a
    /// FIFO (as root), and a hard link across directories.
    @Test func oddButLegalEntriesAreCopiedAsThemselves() throws {
        let scratch = try Scratch()
        let tree = scratch.file("tree")
        try makeRichTree(at: tree, owners: false)
        symlink("loop-b", tree + "/etc/loop-a")
        symlink("loop-a", tree + "/etc/loop-b")
        symlink("/etc/shadow", tree + "/etc/outside")
        symlink("../../../../../../../../etc/shadow", tree + "/etc/climbing")
        link(tree + "/usr/bin/tool", tree + "/etc/tool-hardlink")
        let asRoot = getuid() == 0
        if asRoot {
            mknod(tree + "/etc/null", S_IFCHR | 0o666, dev_t(1 << 8 | 3))  // makedev(1, 3)
            mkfifo(tree + "/etc/fifo", 0o600)
        }
        let result = try sevimage(["create", "--rootfs", tree, "--output", scratch.file("vm.qcow2"), "--size", "128M", "--quiet"])
        #expect(result.status == 0, "\(result)")
        let opened = try OpenedImage(image: scratch.file("vm.qcow2"))
        let root = try opened.decryptRoot(passphraseFile: scratch.file("vm.passphrase"))
        func inode(_ path: String) throws -> String { try runChecked("debugfs", ["-R", "stat \(path)", root]).stdout }
        #expect(try inode("/etc/loop-a").contains("Fast link dest: \"loop-b\""))
        #expect(try inode("/etc/loop-b").contains("Fast link dest: \"loop-a\""))
        #expect(try inode("/etc/outside").contains("Fast link dest: \"/etc/shadow\""))
        #expect(try inode("/etc/climbing").contains("Fast link dest: \"../../../../../../../../etc/shadow\""))
        let firstLine = { (text: String) in text.split(separator: "\n").first.map(String.init) ?? "" }
        let tool = try inode("/usr/bin/tool"), hard = try inode("/etc/tool-hardlink")
        #expect(firstLine(tool) == firstLine(hard) && tool.contains("Links: 2"), "\(tool)\n\(hard)")
        if asRoot {
            let null = try inode("/etc/null")
            #expect(null.contains("Type: character special") && null.contains("Device major/minor number: 01:03"), "\(null)")
            #expect(try inode("/etc/fifo").contains("Type: FIFO"))
        }
        _ = try runChecked("e2fsck", ["-fn", root])
    }

    /// A 4 GiB sparse file in an 8G disk is built quickly and stays sparse: the image holds its data, not its holes.
    @Test func bigSparseFileIsBuiltSparsely() throws {
        let scratch = try Scratch()
        let tree = scratch.file("tree")
        try makeRichTree(at: tree, owners: false)
        let fd = open(tree + "/etc/sparse", O_CREAT | O_WRONLY, 0o644)
        #expect(pwrite(fd, "end", 3, (4 << 30) - 3) == 3)
        close(fd)
        let started = Date()
        let result = try sevimage(["create", "--rootfs", tree, "--output", scratch.file("vm.qcow2"), "--size", "8G", "--quiet"])
        let seconds = Date().timeIntervalSince(started)
        #expect(result.status == 0, "\(result)")
        #expect(seconds < 60, "took \(seconds) s")
        var info = stat()
        #expect(stat(scratch.file("vm.qcow2"), &info) == 0)
        #expect(info.st_blocks * 512 < 96 << 20, "the image takes \(info.st_blocks * 512) bytes")
        try runChecked("qemu-img", ["check", scratch.file("vm.qcow2")])
        // The file inside: decrypt only the extents the sparse raw view holds (a hole stays a hole).
        let opened = try OpenedImage(image: scratch.file("vm.qcow2"))
        let key = scratch.file("volume.key"), plain = scratch.file("root.ext4")
        try runChecked("cryptsetup", ["luksDump", "--dump-volume-key", "--batch-mode", "--key-file", scratch.file("vm.passphrase"),
                                      "--volume-key-file", key, opened.luksPartition])
        try runChecked(python3, ["-c", Self.decryptExtents, opened.luksPartition, key, String(LUKSLayout.headerSize), plain])
        let listing = try runChecked("debugfs", ["-R", "stat /etc/sparse", plain]).stdout
        #expect(listing.contains("Size: 4294967296"), "\(listing)")
    }

    /// AES-XTS (plain64, 4096-byte sectors) of the data extents only, with Python's `cryptography`.
    static let decryptExtents = """
    import os, sys
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    src, key_file, offset, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    key = open(key_file, "rb").read()
    fd = os.open(src, os.O_RDONLY); size = os.fstat(fd).st_size
    dst = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600); os.ftruncate(dst, size - offset)
    pos = offset
    while pos < size:
        try: start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError: break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        start -= (start - offset) % 4096
        for sector in range(start, end, 4096):
            block = os.pread(fd, 4096, sector)
            n = (sector - offset) // 4096
            dec = Cipher(algorithms.AES(key), modes.XTS((n * 8).to_bytes(16, "little"))).decryptor()
            os.pwrite(dst, dec.update(block) + dec.finalize(), sector - offset)
        pos = end
    """

    /// A full filesystem (a 40M tmpfs) mid-write: one line naming ENOSPC, exit 1, and nothing left behind.
    @Test(.enabled(if: getuid() == 0, "mounts a tmpfs"))
    func fullFilesystemLeavesNothing() throws {
        let scratch = try Scratch()
        let tree = scratch.file("tree")
        try makeRichTree(at: tree, owners: false)
        try Data((0..<24_000_000).map { UInt8(truncatingIfNeeded: ($0 &* 2654435761) >> 11) }).write(to: URL(fileURLWithPath: tree + "/etc/noise"))
        let small = scratch.file("small")
        try FileManager.default.createDirectory(atPath: small, withIntermediateDirectories: false)
        try runChecked("mount", ["-t", "tmpfs", "-o", "size=40M", "tmpfs", small])
        defer { _ = try? runProgram("umount", [small]) }
        let result = try sevimage(["create", "--rootfs", tree, "--output", small + "/vm.qcow2", "--size", "256M", "--quiet"])
        #expect(result.status == 1, "\(result)")
        #expect(result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
        #expect(result.stderr.hasPrefix("sevimage: error: ") && result.stderr.contains("no space left on device"), "\(result.stderr)")
        #expect(entries(of: small).isEmpty, "\(entries(of: small))")
        let df = try runChecked("df", ["--output=used", "-B1", small]).stdout
        #expect(df.split(separator: "\n").last.flatMap { UInt64($0.trimmingCharacters(in: .whitespaces)) }.map { $0 < 1 << 20 } == true, "\(df)")
    }

    /// Whichever child meets the full disk first (mkfs.vfat "failed whilst writing FAT", grub-mkstandalone, mke2fs),
    /// its failure is reported as what it is: no space left, and where.
    @Test(.enabled(if: getuid() == 0, "mounts a tmpfs"))
    func aToolFailingOnAFullDiskSaysSo() throws {
        let scratch = try Scratch()
        let small = scratch.file("small")
        try FileManager.default.createDirectory(atPath: small, withIntermediateDirectories: false)
        try runChecked("mount", ["-t", "tmpfs", "-o", "size=1M", "tmpfs", small])
        defer { _ = try? runProgram("umount", [small]) }
        _ = try? runProgram("dd", ["if=/dev/zero", "of=\(small)/fill", "bs=64k", "status=none"])
        func failure() -> String {
            do { try ExternalTool("false", package: "coreutils").run([small + "/out.fat"]) } catch { return "\(error)" }
            return "no error"
        }
        #expect(failure() == "cannot write false's output in \(small): no space left on device")
        unlink(small + "/fill")
        #expect(failure() == "false failed with status 1")
    }

    /// reencrypt on a nearly full filesystem (a tmpfs the size of the image plus 0.2 to 40 MB, so that each of its
    /// writes is the one that fails in some row): one line naming the operation, the path and ENOSPC, exit 1, and the
    /// image, its manifest and passphrase as they were. A Foundation error (NSCocoaErrorDomain Code=640) used to
    /// reach the user raw, with "(see --help)" and exit 2.
    @Test(.enabled(if: getuid() == 0, "mounts a tmpfs"))
    func reencryptOnANearlyFullFilesystemSaysWhatFailed() throws {
        let scratch = try Scratch()
        try makeRichTree(at: scratch.file("tree"), owners: false)
        let created = try sevimage(["create", "--rootfs", scratch.file("tree"), "--output", scratch.file("vm.qcow2"), "--size", "128M", "--quiet"])
        try #require(created.status == 0, "\(created)")
        var info = stat()
        try #require(stat(scratch.file("vm.qcow2"), &info) == 0)
        let imageKiB = Int(info.st_blocks) / 2
        let small = scratch.file("small")
        try FileManager.default.createDirectory(atPath: small, withIntermediateDirectories: false)
        for extra in [200, 17_000, 30_000, 40_000] {
            try runChecked("mount", ["-t", "tmpfs", "-o", "size=\(imageKiB + extra)k", "tmpfs", small])
            defer { _ = try? runProgram("umount", [small]) }
            var before: [String: Data] = [:]
            for name in ["vm.qcow2", "vm.manifest.json", "vm.passphrase"] {
                try runChecked("cp", ["--sparse=always", scratch.file(name), small + "/" + name])
                before[name] = try Data(contentsOf: URL(fileURLWithPath: small + "/" + name))
            }
            let result = try sevimage(["reencrypt", small + "/vm.qcow2", "--passphrase-file", small + "/vm.passphrase", "--quiet"])
            #expect(result.status == 1, "+\(extra)K: \(result)")
            #expect(result.stderr.split(separator: "\n").count == 1 && result.stderr.hasPrefix("sevimage: error: ")
                    && result.stderr.contains(small) && result.stderr.contains("no space left on device")
                    && !result.stderr.contains("NSCocoaErrorDomain") && !result.stderr.contains("--help"), "+\(extra)K: \(result.stderr)")
            #expect(entries(of: small) == before.keys.sorted(), "+\(extra)K: \(entries(of: small))")
            for (name, bytes) in before {
                #expect(sameBytes(try Data(contentsOf: URL(fileURLWithPath: small + "/" + name)), bytes), "+\(extra)K: \(name) changed")
            }
        }
    }

    /// rotate and keys add on a filesystem without room for their two header copies: refused before anything is
    /// written, with what they need (rotate used to stop halfway and leave a pending rotation behind).
    @Test(.enabled(if: getuid() == 0, "mounts a tmpfs"), arguments: [
        ["rotate", "IMAGE", "--passphrase-file", "DIR/vm.passphrase"],
        ["keys", "add", "IMAGE", "--passphrase-file", "DIR/vm.passphrase", "--new-passphrase-file", "DIR/vm.passphrase"],
    ])
    func headerUpdatesCheckFreeSpaceFirst(_ command: [String]) throws {
        let scratch = try Scratch()
        try makeRichTree(at: scratch.file("tree"), owners: false)
        let created = try sevimage(["create", "--rootfs", scratch.file("tree"), "--output", scratch.file("vm.qcow2"), "--size", "128M", "--quiet"])
        try #require(created.status == 0, "\(created)")
        var info = stat()
        try #require(stat(scratch.file("vm.qcow2"), &info) == 0)
        let small = scratch.file("small")
        try FileManager.default.createDirectory(atPath: small, withIntermediateDirectories: false)
        for extra in [2_000, 20_000, 32_000] {
            try runChecked("mount", ["-t", "tmpfs", "-o", "size=\(Int(info.st_blocks) / 2 + extra)k", "tmpfs", small])
            defer { _ = try? runProgram("umount", [small]) }
            var before: [String: Data] = [:]
            for name in ["vm.qcow2", "vm.manifest.json", "vm.passphrase"] {
                try runChecked("cp", ["--sparse=always", scratch.file(name), small + "/" + name])
                before[name] = try Data(contentsOf: URL(fileURLWithPath: small + "/" + name))
            }
            let arguments = command.map { $0.replacingOccurrences(of: "IMAGE", with: small + "/vm.qcow2").replacingOccurrences(of: "DIR", with: small) }
            let result = try sevimage(arguments + ["--quiet"])
            #expect(result.status == 1, "+\(extra)K: \(result)")
            #expect(result.stderr.split(separator: "\n").count == 1
                    && result.stderr.hasPrefix("sevimage: error: \(command[0]) needs 34M free in \(small) (two copies of the 16 MiB LUKS header area while it works) but it has ")
                    && result.stderr.hasSuffix("; nothing was changed\n"), "+\(extra)K: \(result.stderr)")
            #expect(entries(of: small) == before.keys.sorted(), "+\(extra)K: \(entries(of: small))")
            for (name, bytes) in before {
                #expect(sameBytes(try Data(contentsOf: URL(fileURLWithPath: small + "/" + name)), bytes), "+\(extra)K: \(name) changed")
            }
        }
    }

    /// Foundation's file errors become the one I/O line (what, where, errno) with exit 1.
    @Test func foundationFileErrorsBecomeOneIOLine() throws {
        let full = CocoaError(.fileWriteOutOfSpace, userInfo: [NSFilePathErrorKey: "/d/x.luks",
                                                                 NSUnderlyingErrorKey: NSError(domain: NSPOSIXErrorDomain, code: Int(ENOSPC))])
        #expect(GeneralError(foundation: full)?.description == "cannot write /d/x.luks: no space left on device")
        #expect(GeneralError(foundation: full)?.exitStatus == .failure)
        let missing = CocoaError(.fileReadNoSuchFile, userInfo: [NSFilePathErrorKey: "/d/none"])
        #expect(GeneralError(foundation: missing)?.description == "cannot read /d/none: no such file or directory")
        let copy = CocoaError(.fileWriteOutOfSpace, userInfo: [NSFilePathErrorKey: "/a/from", "NSDestinationFilePath": "/b/to"])
        #expect(GeneralError(foundation: copy)?.description == "cannot write /b/to: no space left on device")
        #expect(GeneralError(foundation: GeneralError.invalidArgument("x")) == nil)
    }

    // MARK: Images given to verify, rotate, reencrypt and keys

    struct ImageCommand: Sendable {
        var name: String
        var arguments: @Sendable (_ image: String, _ fixture: String) -> [String]
    }

    static let imageCommands: [ImageCommand] = [
        ImageCommand(name: "verify") { ["verify", $0, "--manifest", $1 + "/vm.manifest.json"] },
        ImageCommand(name: "rotate") { ["rotate", $0, "--passphrase-file", $1 + "/vm.passphrase"] },
        ImageCommand(name: "reencrypt") { ["reencrypt", $0, "--passphrase-file", $1 + "/vm.passphrase"] },
        ImageCommand(name: "keys list") { image, _ in ["keys", "list", image] },
    ]

    /// Zero-length, truncated and non-QCOW2 images: exit 2 with what is wrong, and the file untouched.
    @Test func brokenImagesAreRefusedByEveryCommand() throws {
        let scratch = try Scratch()
        try makeRichTree(at: scratch.file("tree"), owners: false)
        let created = try sevimage(["create", "--rootfs", scratch.file("tree"), "--output", scratch.file("vm.qcow2"), "--size", "128M", "--quiet"])
        try #require(created.status == 0, "\(created)")
        let good = try Data(contentsOf: URL(fileURLWithPath: scratch.file("vm.qcow2")))
        let broken: [(String, Data, String)] = [
            ("zero.qcow2", Data(), "(0 bytes)|too short for a QCOW2 header"),
            ("truncated.qcow2", good.prefix(100_000), "its L1 table is damaged or truncated|points outside the file"),
            ("raw.qcow2", Data((0..<1_048_576).map { UInt8(truncatingIfNeeded: $0 &* 31 >> 3) }), "not a QCOW2 file"),
        ]
        for (name, bytes, reason) in broken {
            let path = scratch.file(name)
            try bytes.write(to: URL(fileURLWithPath: path))
            for command in Self.imageCommands {
                let before = entries(of: scratch.path)
                let result = try sevimage(command.arguments(path, scratch.path))
                let label = "\(command.name) \(name)"
                #expect(result.status == 2, "\(label): \(result)")
                #expect(result.stderr.split(separator: "\n").count == 1 && result.stderr.hasPrefix("sevimage: error: "), "\(label): \(result.stderr)")
                #expect(result.stderr.contains(name) && reason.split(separator: "|").contains { result.stderr.contains($0) }, "\(label): \(result.stderr)")
                #expect(sameBytes(try Data(contentsOf: URL(fileURLWithPath: path)), bytes), "\(label) changed the file")
                #expect(entries(of: scratch.path) == before, "\(label) left files")
            }
        }
    }

    /// One flipped byte in one LUKS2 binary header: libcryptsetup reads the other copy, `keys list` works and
    /// `rotate` writes both copies anew. In both: refused with exit 2 and the image untouched. `verify`
    /// reports the changed image against its manifest (exit 4).
    @Test func corruptedLUKSHeaders() throws {
        let scratch = try Scratch()
        try makeRichTree(at: scratch.file("tree"), owners: false)
        let created = try sevimage(["create", "--rootfs", scratch.file("tree"), "--output", scratch.file("vm.qcow2"), "--size", "128M", "--quiet"])
        try #require(created.status == 0, "\(created)")
        let manifest = try Manifest.decode(Data(contentsOf: URL(fileURLWithPath: scratch.file("vm.manifest.json"))), path: "manifest")
        let luksOffset = manifest.partitions[1].firstLBA * 512
        // The label field (offset 24) of each binary header: zero in our images, covered by the header checksum.
        let primary = luksOffset + 24, secondary = luksOffset + 16384 + 24
        for (label, offsets) in [("primary", [primary]), ("secondary", [secondary]), ("both", [primary, secondary])] {
            let dir = scratch.file(label)
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
            let image = dir + "/vm.qcow2"
            for name in ["vm.qcow2", "vm.manifest.json", "vm.passphrase"] {
                try FileManager.default.copyItem(atPath: scratch.file(name), toPath: dir + "/" + name)
            }
            for offset in offsets { try runChecked("qemu-io", ["-f", "qcow2", "-c", "write -P 0xff \(offset) 1", image]) }
            let damaged = try Crypto.hashFile(image)
            let list = try sevimage(["keys", "list", image])
            let verify = try sevimage(["verify", image])
            #expect(verify.status == ExitStatus.verificationFailed.rawValue && verify.stderr.contains("image digest"), "\(label): \(verify)")
            let rotate = try sevimage(["rotate", image, "--passphrase-file", dir + "/vm.passphrase", "--quiet"])
            if label == "both" {
                for result in [list, rotate] {
                    #expect(result.status == 2, "\(label): \(result)")
                    #expect(result.stderr == "sevimage: error: \(image) holds no readable LUKS2 header (not a sevimage image, or its header is damaged)\n",
                            "\(label): \(result.stderr)")
                }
                #expect(try Crypto.hashFile(image) == damaged)
                #expect(entries(of: dir) == ["vm.manifest.json", "vm.passphrase", "vm.qcow2"])
            } else {
                #expect(list.status == 0 && list.stderr.contains("generated"), "\(label): \(list)")
                #expect(rotate.status == 0, "\(label): \(rotate)")
                let opened = try OpenedImage(image: image)
                #expect(try runProgram("cryptsetup", ["open", "--test-passphrase", "--key-file", dir + "/vm.passphrase", opened.luksPartition]).status == 0)
                // Both copies are whole again: cryptsetup finds nothing to repair and the labels are zero.
                let raw = try FileHandle(forReadingFrom: URL(fileURLWithPath: opened.luksPartition))
                for offset: UInt64 in [24, 16384 + 24] {
                    try raw.seek(toOffset: offset)
                    #expect(try raw.read(upToCount: 1) == Data([0]), "\(label): header at \(offset - 24) still damaged")
                }
                try raw.close()
            }
        }
    }

    /// A LUKS2 header with 512-byte sectors (not sevimage's layout, but a valid one) in place of the image's:
    /// `verify --passphrase-file` read past a 512-byte buffer and trapped; now it reports, as do keys and rotate.
    @Test(.enabled(if: hasTool("cryptsetup") && hasTool("qemu-img"), "needs cryptsetup-bin and qemu-utils"))
    func headerWith512ByteSectors() throws {
        let scratch = try Scratch()
        try makeRichTree(at: scratch.file("tree"), owners: false)
        let image = scratch.file("vm.qcow2"), passphrase = scratch.file("vm.passphrase")
        let created = try sevimage(["create", "--rootfs", scratch.file("tree"), "--output", image, "--size", "128M", "--quiet"])
        try #require(created.status == 0, "\(created)")
        let manifest = try Manifest.decode(Data(contentsOf: URL(fileURLWithPath: scratch.file("vm.manifest.json"))), path: "manifest")
        let start = manifest.partitions[1].firstLBA * 512, size = (manifest.partitions[1].lastLBA + 1) * 512 - start
        let raw = scratch.file("vm.raw"), partition = scratch.file("root.part")
        try runChecked("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", image, raw])
        try runChecked("dd", ["if=\(raw)", "of=\(partition)", "bs=512", "skip=\(start / 512)", "count=\(size / 512)", "status=none"])
        try runChecked("cryptsetup", ["luksFormat", "--batch-mode", "--type", "luks2", "--sector-size", "512", "--pbkdf", "pbkdf2",
                                      "--pbkdf-force-iterations", "1000", "--key-file", passphrase, partition])
        try runChecked("dd", ["if=\(partition)", "of=\(raw)", "bs=512", "seek=\(start / 512)", "conv=notrunc", "status=none"])
        unlink(image)
        try runChecked("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", raw, image])
        // verify: the header is not the manifest's (sector size, digest), said in its report; no trap.
        let verify = try sevimage(["verify", image, "--passphrase-file", passphrase])
        #expect(verify.status == ExitStatus.verificationFailed.rawValue && verify.stderr.contains("sector"), "\(verify)")
        // keys and rotate may work on any valid LUKS2 header; whatever they do, they do not trap.
        for arguments in [["keys", "list", image], ["rotate", image, "--passphrase-file", passphrase, "--quiet"]] {
            let result = try sevimage(arguments)
            #expect(result.status == 0 || result.stderr.hasPrefix("sevimage: error: "), "\(arguments[0]): \(result)")
        }
        for text in [verify.stderr] { #expect(!text.contains("Fatal error") && !text.contains("Backtrace"), "\(text)") }
    }

    /// A manifest that does not describe the image: verify fails with exit 4 and names the first mismatch.
    @Test func manifestOfAnotherImageFailsVerify() throws {
        let scratch = try Scratch()
        try makeRichTree(at: scratch.file("tree"), owners: false)
        for name in ["a", "b"] {
            let created = try sevimage(["create", "--rootfs", scratch.file("tree"), "--output", scratch.file("\(name).qcow2"), "--size", "128M", "--quiet"])
            try #require(created.status == 0, "\(created)")
        }
        let result = try sevimage(["verify", scratch.file("a.qcow2"), "--manifest", scratch.file("b.manifest.json")])
        #expect(result.status == ExitStatus.verificationFailed.rawValue, "\(result)")
        #expect(result.stderr.split(separator: "\n").last?.hasPrefix("sevimage: error: ") == true && result.stderr.contains("checks failed"), "\(result.stderr)")
        let truncated = scratch.file("truncated.manifest.json")
        try Data(contentsOf: URL(fileURLWithPath: scratch.file("a.manifest.json"))).prefix(200).write(to: URL(fileURLWithPath: truncated))
        let bad = try sevimage(["verify", scratch.file("a.qcow2"), "--manifest", truncated])
        #expect(bad.status == 2 && bad.stderr.split(separator: "\n").count == 1 && bad.stderr.contains("truncated.manifest.json"), "\(bad)")
    }

    // MARK: Issue 16: no crash, and no output that destroys another file

    /// One row per reproduction of issue 16: run in a scratch directory holding a made image (vm.qcow2, its
    /// manifest and passphrase) and a root tree; each must exit with its status and one line, change
    /// nothing that was there (bytes compared), and leave no new file.
    struct CrashRow: CustomTestStringConvertible, Sendable {
        var name: String
        var arguments: [String]
        var setup: @Sendable (_ scratch: String) throws -> Void = { _ in }
        var status: Int32
        var message: String
        var environment: [String: String] = [:]
        var testDescription: String { name }
    }

    static let crashRows: [CrashRow] = [
        CrashRow(name: "create --output a (one character)", arguments: ["create", "--rootfs", "tree", "--output", "a", "--size", "1"],
                 status: 2, message: "a disk of 1 is too small"),
        CrashRow(name: "keys list v (one character)", arguments: ["keys", "list", "v"], status: 2, message: "image v does not exist"),
        CrashRow(name: "rotate v (one character)", arguments: ["rotate", "v", "--passphrase-file", "vm.passphrase"], status: 2, message: "image v does not exist"),
        CrashRow(name: "create --output d/x.passphrase --force", arguments: ["create", "--rootfs", "tree", "--output", "x.passphrase", "--force", "--size", "128M"],
                 status: 2, message: "x.passphrase is named like the .passphrase file that goes with an image"),
        CrashRow(name: "rotate z.passphrase", arguments: ["rotate", "z.passphrase", "--passphrase-file", "vm.passphrase"],
                 setup: { try FileManager.default.copyItem(atPath: $0 + "/vm.qcow2", toPath: $0 + "/z.passphrase") },
                 status: 2, message: "z.passphrase is named like the .passphrase file"),
        CrashRow(name: "a manifest that is a link to the image", arguments: ["rotate", "w.qcow2", "--passphrase-file", "vm.passphrase"],
                 setup: { try FileManager.default.copyItem(atPath: $0 + "/vm.qcow2", toPath: $0 + "/w.qcow2"); symlink("w.qcow2", $0 + "/w.manifest.json") },
                 status: 2, message: "w.qcow2 and w.manifest.json are both the image and the manifest"),
        CrashRow(name: "rotate z.blockdigests", arguments: ["rotate", "z.blockdigests", "--passphrase-file", "vm.passphrase"],
                 setup: { try FileManager.default.copyItem(atPath: $0 + "/vm.qcow2", toPath: $0 + "/z.blockdigests") },
                 status: 2, message: "z.blockdigests is named like the .blockdigests file"),
        CrashRow(name: "block digests that are a link to the image", arguments: ["keys", "add", "b.qcow2", "--passphrase-file", "vm.passphrase",
                                                                                  "--new-passphrase-file", "vm.passphrase"],
                 setup: { try FileManager.default.copyItem(atPath: $0 + "/vm.qcow2", toPath: $0 + "/b.qcow2"); symlink("b.qcow2", $0 + "/b.blockdigests") },
                 status: 2, message: "b.qcow2 and b.blockdigests are both the image and the block digests"),
        CrashRow(name: "create --output tree (the root tree)", arguments: ["create", "--rootfs", "tree", "--output", "tree", "--force", "--size", "128M"],
                 status: 2, message: "tree is both the image and the root tree"),
        CrashRow(name: "a directory 1,500 levels deep", arguments: ["create", "--rootfs", "deep", "--output", "deep.qcow2", "--size", "128M"],
                 setup: { try makeDeepTree(at: $0 + "/deep", levels: 1500) },
                 status: 2, message: "is more than 256 directories deep"),
        CrashRow(name: "a tarball 1,500 levels deep", arguments: ["create", "--rootfs", "deep.tar", "--output", "deep.qcow2", "--size", "128M"],
                 setup: { scratch in
                     try makeDeepTree(at: scratch + "/deep", levels: 300)
                     try runChecked("tar", ["cf", scratch + "/deep.tar", "-C", scratch + "/deep", "."])
                     try FileManager.default.removeItem(atPath: scratch + "/deep")
                 }, status: 2, message: "is more than 256 directories deep"),
        CrashRow(name: "a .tar.zst declaring a 500 MB member (1 MB of data)", arguments: ["create", "--rootfs", "huge.tar.zst", "--output", "t.qcow2", "--size", "256M"],
                 setup: { try makeTarball($0 + "/huge.tar.zst", ["big:500000000:1048576"]) },
                 status: 2, message: "the root tree needs at least 490.3M but the root filesystem holds 174M; give --size larger than 608M"),
        CrashRow(name: "tarball members that fit alone, not together", arguments: ["create", "--rootfs", "sum.tar.zst", "--output", "t.qcow2", "--size", "256M"],
                 setup: { try makeTarball($0 + "/sum.tar.zst", ["a:125829120", "b:125829120"]) },
                 status: 2, message: "the root tree needs about 253.4M but the root filesystem holds 174M; give --size 368M or larger"),
        CrashRow(name: "20,000 empty files in a directory, 128M", arguments: ["create", "--rootfs", "many", "--output", "t.qcow2", "--size", "128M"],
                 setup: { try makeManyFiles($0 + "/many", count: 20_000) },
                 status: 2, message: "files, directories and links but the root filesystem has inodes for 2928 (one per 16 KiB); give --size"),
        CrashRow(name: "20,000 empty files in a tarball, 128M", arguments: ["create", "--rootfs", "many.tar", "--output", "t.qcow2", "--size", "128M"],
                 setup: { try makeTarball($0 + "/many.tar", (0..<20_000).map { "f/\($0):0" }) },
                 status: 2, message: "the root tree has 20002 files, directories and links but the root filesystem has inodes for 2928 (one per 16 KiB); give --size 416M or larger"),
        CrashRow(name: "create --size 268435457 (not whole MiB)", arguments: ["create", "--rootfs", "tree", "--output", "t.qcow2", "--size", "268435457"],
                 status: 2, message: "a disk of 268435457 bytes is not a whole number of MiB: give 256M or 257M"),
        CrashRow(name: "create --output ''", arguments: ["create", "--rootfs", "tree", "--output", "", "--size", "128M"],
                 status: 2, message: "--output is empty: give the name of the file to write"),
        CrashRow(name: "create --output vm.qcow2/ (an existing image)", arguments: ["create", "--rootfs", "tree", "--output", "vm.qcow2/", "--size", "128M", "--force"],
                 status: 2, message: "--output vm.qcow2/ ends with '/': give the name of a file, not a directory"),
        CrashRow(name: "create --output tree/..", arguments: ["create", "--rootfs", "tree", "--output", "tree/..", "--size", "128M"],
                 status: 2, message: "--output tree/.. names a directory"),
        CrashRow(name: "SOURCE_DATE_EPOCH=2^34", arguments: ["create", "--rootfs", "tree", "--output", "t.qcow2", "--size", "128M"],
                 status: 2, message: "SOURCE_DATE_EPOCH 17179869184 is after 2242-03-16T12:56:31Z: at most 8589934591",
                 environment: ["SOURCE_DATE_EPOCH": "17179869184"]),
        CrashRow(name: "create: a non-ASCII recovery passphrase", arguments: ["create", "--rootfs", "tree", "--output", "t.qcow2", "--size", "128M", "--recovery-passphrase-file", "u.pass"],
                 setup: { file($0 + "/u.pass", Array("pässwort".utf8), mode: 0o600) },
                 status: 2, message: "the recovery passphrase in u.pass cannot be typed at GRUB's passphrase prompt: byte 2 (0xC3) is not ASCII"),
        CrashRow(name: "create: a 300-character recovery passphrase", arguments: ["create", "--rootfs", "tree", "--output", "t.qcow2", "--size", "128M", "--recovery-passphrase-file", "long.pass"],
                 setup: { file($0 + "/long.pass", [UInt8](repeating: 0x61, count: 300), mode: 0o600) },
                 status: 2, message: "it is 300 characters long; GRUB's prompt keeps at most 254 and drops the rest"),
        CrashRow(name: "keys add: a recovery passphrase with a tab", arguments: ["keys", "add", "vm.qcow2", "--passphrase-file", "vm.passphrase", "--new-passphrase-file", "tab.pass"],
                 setup: { file($0 + "/tab.pass", Array("a\tb".utf8), mode: 0o600) },
                 status: 2, message: "the recovery passphrase in tab.pass cannot be typed at GRUB's passphrase prompt: byte 2 (0x9) is a control character"),
        CrashRow(name: "boot: a passphrase GRUB's prompt cannot take", arguments: ["boot", "vm.qcow2", "--passphrase-file", "u.pass"],
                 setup: { file($0 + "/u.pass", Array("pässwort".utf8), mode: 0o600) },
                 status: 2, message: "the passphrase in u.pass cannot be typed at GRUB's passphrase prompt"),
    ] + gptRows + manifestRows + costlyKeyslotRows + hostFileLimitRows

    /// `--size 64T` where the temporary directory's filesystem ends files before 64 TiB (ext4: 16 TiB), else nothing.
    static let hostFileLimitRows: [CrashRow] = {
        let probe = NSTemporaryDirectory() + "/sevimage-size-probe-\(getpid())"
        let fd = open(probe, O_RDWR | O_CREAT | O_EXCL, 0o600)
        defer { close(fd); unlink(probe) }
        guard fd >= 0, ftruncate(fd, off_t(64) << 40) != 0 else { return [] }
        return [CrashRow(name: "create --size 64T beyond the host's largest file", arguments: ["create", "--rootfs", "tree", "--output", "t.qcow2", "--size", "64T"],
                         status: 2, message: "a disk of 64T is larger than the largest file the filesystem of . takes; give --size ")]
    }()

    /// Keyslot 0 (the generated passphrase's) made hostile: libcryptsetup would run for hours on it. It reads
    /// JSON numbers as 32-bit signed integers, so 2^31 and 2^32−1 reach it (and the message) as 2^31−1.
    static let costlyKeyslotRows: [CrashRow] = [
        ("verify", #"{"type":"pbkdf2","hash":"sha256","iterations":2147483648}"#, "PBKDF2 with 2147483647 iterations (sevimage tries at most 100000000)"),
        ("rotate", #"{"type":"pbkdf2","hash":"sha256","iterations":2147483648}"#, "PBKDF2 with 2147483647 iterations"),
        ("reencrypt", #"{"type":"pbkdf2","hash":"sha256","iterations":100000001}"#, "PBKDF2 with 100000001 iterations"),
        ("verify", #"{"type":"argon2id","time":4294967295,"memory":1048576,"cpus":1}"#, "argon2id with time cost 2147483647 over 1048576 KiB"),
        ("rotate", #"{"type":"argon2i","time":4294967295,"memory":65536,"cpus":1}"#, "argon2i with time cost 2147483647 over 65536 KiB"),
        ("keys add", #"{"type":"argon2id","time":4,"memory":1048576,"cpus":64}"#, "argon2id with 64 threads"),
    ].map { (command: String, json: String, cost: String) -> CrashRow in
        let arguments: [String] = switch command {
        case "verify": ["verify", "vm.qcow2", "--passphrase-file", "vm.passphrase"]
        case "keys add": ["keys", "add", "vm.qcow2", "--passphrase-file", "vm.passphrase", "--new-passphrase-file", "vm.passphrase"]
        default: [command, "vm.qcow2", "--passphrase-file", "vm.passphrase"]
        }
        return CrashRow(name: "\(command): keyslot 0 with \(cost)", arguments: arguments,
                        setup: { scratch in
                            let manifest = try Manifest.decode(Data(contentsOf: URL(fileURLWithPath: scratch + "/vm.manifest.json")), path: "manifest")
                            let root = try #require(manifest.partitions.first { $0.role == "root" })
                            try runChecked(python3, [repositoryRoot.path + "/Tests/Oracles/luks_metadata.py", scratch + "/vm.qcow2", String(root.firstLBA * 512), "kdf", "0", json])
                        },
                        status: 2, message: "the passphrase opens no other keyslot of vm.qcow2, and keyslot 0 was not tried: it asks for \(cost)")
    }

    /// A tarball of `members` ("name:size" or "name:declared size:data bytes", zeros), compressed by its suffix.
    static func makeTarball(_ path: String, _ members: [String]) throws {
        try runChecked(python3, ["-c", """
        import sys, tarfile, subprocess
        path, members = sys.argv[1], sys.argv[2:]
        raw = path.removesuffix(".zst")
        with open(raw, "wb") as f:
            for member in members:
                name, size, *data = member.split(":")
                info = tarfile.TarInfo(name); info.size = int(size); info.mode = 0o644
                f.write(info.tobuf(format=tarfile.GNU_FORMAT))
                left = int(data[0]) if data else info.size + (-info.size % 512)
                while left > 0:
                    n = min(left, 1 << 20); f.write(bytes(n)); left -= n
            if not any(len(m.split(":")) == 3 for m in members): f.write(bytes(1024))
        if path.endswith(".zst"): subprocess.run(["zstd", "-q", "--rm", "-f", raw, "-o", path], check=True)
        """, path] + members)
    }

    /// A directory with `count` empty files in `f/` (and no kernel: the count is refused first).
    static func makeManyFiles(_ path: String, count: Int) throws {
        try runChecked(python3, ["-c", "import os,sys\nos.makedirs(sys.argv[1] + '/f')\nfor i in range(int(sys.argv[2])): open(sys.argv[1] + f'/f/{i}', 'w').close()",
                                 path, String(count)])
    }

    /// The `--size` that an inode refusal names is enough: the same tree builds with it.
    @Test func suggestedSizeHoldsTheTree() throws {
        let scratch = try Scratch()
        let tree = scratch.file("tree")
        try makeRichTree(at: tree, owners: false)
        try Self.makeManyFiles(tree + "/many", count: 6_000)
        let refused = try sevimage(["create", "--rootfs", tree, "--output", scratch.file("vm.qcow2"), "--size", "128M", "--quiet"])
        #expect(refused.status == 2 && refused.stderr.split(separator: "\n").count == 1, "\(refused)")
        let size = try #require(refused.stderr.components(separatedBy: "give --size ").last?.components(separatedBy: " or larger").first)
        #expect(size.hasSuffix("M") || size.hasSuffix("G"), "\(refused.stderr)")
        let built = try sevimage(["create", "--rootfs", tree, "--output", scratch.file("vm.qcow2"), "--size", size, "--quiet"])
        #expect(built.status == 0, "--size \(size): \(built)")
    }

    static let hugeLBAs: [(UInt64, UInt64)] = [(1 << 63, 1 << 63), (.max, .max), (2048, .max)]

    static let gptRows: [CrashRow] = ["inspect", "verify", "keys", "rotate"].flatMap { (command: String) -> [CrashRow] in
        hugeLBAs.map { (first: UInt64, last: UInt64) -> CrashRow in
            let refused = command == "keys" || command == "rotate"
            return CrashRow(name: "\(command): GPT entry 2 at LBAs \(first)-\(last)", arguments: imageArguments(command, "g.qcow2"),
                            setup: { scratch in try patchGPT(scratch, first: first, last: last) },
                            status: command == "verify" ? 4 : refused ? 2 : 0, message: refused ? "lies outside the disk" : "")
        }
    }

    static let manifestRows: [CrashRow] = ["keys", "rotate", "reencrypt"].map { (command: String) -> CrashRow in
        CrashRow(name: "\(command): manifest LBAs near 2^64", arguments: imageArguments(command, "vm.qcow2"),
                 setup: { scratch in try patchManifest(scratch + "/vm.manifest.json", first: UInt64.max - 1, last: UInt64.max) },
                 status: 2, message: "does not describe this image")
    }

    static func imageArguments(_ command: String, _ image: String) -> [String] {
        switch command {
        case "inspect": ["inspect", image]
        case "verify": ["verify", image, "--manifest", "vm.manifest.json"]
        case "keys": ["keys", "list", image]
        default: [command, image, "--passphrase-file", "vm.passphrase"]
        }
    }

    /// `levels` nested directories named `d` (built relative, so no path grows past PATH_MAX) beside a kernel.
    static func makeDeepTree(at root: String, levels: Int) throws {
        try makeRichTree(at: root, owners: false)
        try runChecked(python3, ["-c", "import os,sys\nos.chdir(sys.argv[1])\nfor _ in range(int(sys.argv[2])):\n    os.mkdir('d'); os.chdir('d')", root, String(levels)])
    }

    /// g.qcow2: vm.qcow2 with the primary GPT's entry 2 at LBAs first-last and both CRCs made right again.
    static func patchGPT(_ scratch: String, first: UInt64, last: UInt64) throws {
        try FileManager.default.copyItem(atPath: scratch + "/vm.qcow2", toPath: scratch + "/g.qcow2")
        try runChecked(python3, ["-c", """
        import subprocess, sys, zlib, struct
        image, first, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
        raw = image + ".raw"
        subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", image, raw], check=True)
        with open(raw, "rb") as f: data = bytearray(f.read(34 * 512))
        struct.pack_into("<QQ", data, 1024 + 128 + 32, first, last)
        count, size = struct.unpack_from("<II", data, 512 + 80)
        struct.pack_into("<I", data, 512 + 88, zlib.crc32(bytes(data[1024:1024 + count * size])))
        struct.pack_into("<I", data, 512 + 16, 0)
        struct.pack_into("<I", data, 512 + 16, zlib.crc32(bytes(data[512:512 + 92])))
        open(raw, "wb").write(data[512:])
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -s {raw} 512 {len(data) - 512}", image], check=True, stdout=subprocess.DEVNULL)
        import os; os.unlink(raw)
        """, scratch + "/g.qcow2", String(first), String(last)])
    }

    static func patchManifest(_ path: String, first: UInt64, last: UInt64) throws {
        var text = try String(contentsOfFile: path, encoding: .utf8)
        let manifest = try Manifest.decode(Data(text.utf8), path: path)
        let root = try #require(manifest.partitions.first { $0.role == "root" })
        text = text.replacingOccurrences(of: "\"firstLBA\" : \(root.firstLBA)", with: "\"firstLBA\" : \(first)")
            .replacingOccurrences(of: "\"lastLBA\" : \(root.lastLBA)", with: "\"lastLBA\" : \(last)")
        #expect(text.contains("\(last)"), "the manifest's spelling changed")
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
    }

    /// Commands that only read an image need no writable place: on a read-only mount `keys list` (whose header
    /// copy used to go beside the image) works, like `inspect` and `verify`, and nothing there changes.
    @Test(.enabled(if: getuid() == 0, "bind-mounts a directory read-only"))
    func readOnlyCommandsWorkOnAReadOnlyMount() throws {
        let scratch = try Scratch()
        try makeRichTree(at: scratch.file("tree"), owners: false)
        let directory = scratch.file("ro")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        let created = try sevimage(["create", "--rootfs", scratch.file("tree"), "--output", directory + "/vm.qcow2", "--size", "128M", "--quiet"])
        try #require(created.status == 0, "\(created)")
        try runChecked("mount", ["--bind", directory, directory])
        defer { _ = try? runProgram("umount", [directory]) }
        try runChecked("mount", ["-o", "remount,bind,ro", directory])
        let listing = entries(of: directory)
        let image = directory + "/vm.qcow2"
        for arguments in [["keys", "list", image], ["keys", "list", image, "--json"], ["inspect", image],
                          ["verify", image, "--passphrase-file", directory + "/vm.passphrase"]] {
            let result = try sevimage(arguments)
            #expect(result.status == 0, "\(arguments): \(result)")
        }
        let list = try sevimage(["keys", "list", image])
        #expect(list.stdout.contains("generated") || list.stderr.contains("generated"), "\(list)")
        #expect(entries(of: directory) == listing)
    }

    // MARK: Issue 16: --json on an error

    /// With --json every command's failure puts one error object on stdout (`{"error": {"exitStatus", "message"}}`,
    /// the message being stderr's one line) and changes nothing; a parse error too.
    struct JSONRow: CustomTestStringConvertible, Sendable {
        var arguments: [String]
        var status: Int32
        var testDescription: String { arguments.joined(separator: " ") }
    }

    static let jsonRows: [JSONRow] = [
        JSONRow(arguments: ["create", "--rootfs", "tree", "--output", "t.qcow2", "--size", "8X", "--json"], status: 2),
        JSONRow(arguments: ["create", "--rootfs", "none", "--output", "t.qcow2", "--size", "128M", "--json"], status: 2),
        JSONRow(arguments: ["inspect", "none.qcow2", "--json"], status: 2),
        JSONRow(arguments: ["verify", "none.qcow2", "--json"], status: 2),
        JSONRow(arguments: ["keys", "list", "none.qcow2", "--json"], status: 2),
        JSONRow(arguments: ["keys", "add", "vm.qcow2", "--passphrase-file", "vm.passphrase", "--new-passphrase-file", "none", "--json"], status: 2),
        JSONRow(arguments: ["rotate", "vm.qcow2", "--passphrase-file", "none", "--json"], status: 2),
        JSONRow(arguments: ["reencrypt", "none.qcow2", "--passphrase-file", "vm.passphrase", "--json"], status: 2),
        JSONRow(arguments: ["boot", "none.qcow2", "--passphrase-file", "vm.passphrase", "--json"], status: 2),
        JSONRow(arguments: ["firmware", "measure", "none.fd", "--mode", "sev", "--json"], status: 2),
        JSONRow(arguments: ["secret", "package", "--passphrase-file", "vm.passphrase", "--tk-file", "none", "--launch-measure", "AA==", "--json"], status: 2),
        JSONRow(arguments: ["profiles", "show", "nope", "--json"], status: 2),
        JSONRow(arguments: ["keys", "list", "--bogus", "--json"], status: 2),
    ]

    @Test(arguments: jsonRows)
    func jsonErrorObjectOnFailure(_ row: JSONRow) throws {
        let arguments = row.arguments, status = row.status
        let scratch = try Scratch()
        try makeRichTree(at: scratch.file("tree"), owners: false)
        let created = try sevimage(["create", "--rootfs", scratch.file("tree"), "--output", scratch.file("vm.qcow2"), "--size", "128M", "--quiet"])
        try #require(created.status == 0, "\(created)")
        let listing = entries(of: scratch.path)
        let image = try Data(contentsOf: URL(fileURLWithPath: scratch.file("vm.qcow2")))
        let result = try runProgram(sevimageBinary, arguments, currentDirectory: scratch.path)
        #expect(result.status == status, "\(result)")
        #expect(result.stderr.split(separator: "\n").count == 1 && result.stderr.hasPrefix("sevimage: error: "), "\(result.stderr)")
        let object = try #require(try JSONSerialization.jsonObject(with: result.stdoutData) as? [String: Any], "\(result.stdout)")
        let error = try #require(object["error"] as? [String: Any], "\(result.stdout)")
        #expect(object.count == 1 && error["exitStatus"] as? Int == Int(status), "\(result.stdout)")
        #expect(error["message"] as? String == String(result.stderr.dropFirst("sevimage: error: ".count).dropLast()), "\(result)")
        #expect(entries(of: scratch.path) == listing, "files were added or removed")
        #expect(sameBytes(try Data(contentsOf: URL(fileURLWithPath: scratch.file("vm.qcow2"))), image), "the image changed")
    }

    // MARK: Issue 16: boot opens no host file but the image

    /// A QCOW2 naming another host file: `boot` must refuse it before QEMU starts, which would read that file
    /// as the disk (a backing file) or let the guest write into it (an external data file with `--writable`).
    struct BootRow: CustomTestStringConvertible, Sendable {
        var name: String
        /// qemu-img create's options for `image.qcow2`, with HOST for the host file's path.
        var create: [String]
        var extra: [String] = []
        var status: Int32
        var message: String
        var testDescription: String { name }
    }

    static let bootRows: [BootRow] = [
        BootRow(name: "boot: a backing file (raw host file)", create: ["-b", "HOST", "-F", "raw"],
                status: 2, message: "it has a backing file"),
        BootRow(name: "boot --writable: a backing file", create: ["-b", "HOST", "-F", "raw"], extra: ["--writable"],
                status: 2, message: "it has a backing file"),
        BootRow(name: "boot --writable: an external data file", create: ["-o", "data_file=HOST,data_file_raw=on"], extra: ["--writable"],
                status: 2, message: "it has an external data file"),
        BootRow(name: "boot: an external data file", create: ["-o", "data_file=HOST"],
                status: 2, message: "it has an external data file"),
    ]

    /// A fake qemu-system-x86_64 first on PATH records that it was started; it must not be.
    @Test(.enabled(if: hasTool("qemu-img"), "needs qemu-utils"), arguments: bootRows)
    func bootRefusesImagesNamingHostFiles(_ row: BootRow) throws {
        let scratch = try Scratch()
        let host = scratch.file("host-secret")
        try Data(repeating: 0x5A, count: 1 << 20).write(to: URL(fileURLWithPath: host))
        let image = scratch.file("image.qcow2")
        let create = row.create.map { $0.replacingOccurrences(of: "HOST", with: host) }
        try runChecked("qemu-img", ["create", "-f", "qcow2"] + create + [image, "1M"])
        let hostBytes = try Data(contentsOf: URL(fileURLWithPath: host))
        try writePassphraseFile(scratch.file("p"), "x")
        Self.file(scratch.file("OVMF.fd"), [0], mode: 0o644)
        try FileManager.default.createDirectory(atPath: scratch.file("bin"), withIntermediateDirectories: false)
        Self.file(scratch.file("bin/qemu-system-x86_64"), Array("#!/bin/sh\necho \"$@\" > \(scratch.file("qemu-started"))\nexit 1\n".utf8), mode: 0o755)
        let before = entries(of: scratch.path)
        let imageBytes = try Data(contentsOf: URL(fileURLWithPath: image))
        let path = scratch.file("bin") + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")
        let result = try sevimage(["boot", image, "--passphrase-file", scratch.file("p"), "--bios", scratch.file("OVMF.fd"), "--quiet"] + row.extra,
                                  environment: ["PATH": path])
        #expect(result.status == row.status, "\(result)")
        #expect(result.stdout.isEmpty)
        #expect(result.stderr.split(separator: "\n").count == 1 && result.stderr.hasPrefix("sevimage: error: \(image) is not a usable sevimage image: ")
                && result.stderr.contains(row.message), "\(result.stderr)")
        #expect(!FileManager.default.fileExists(atPath: scratch.file("qemu-started")), "qemu was started")
        #expect(entries(of: scratch.path) == before, "files were added or removed")
        #expect(sameBytes(try Data(contentsOf: URL(fileURLWithPath: host)), hostBytes), "the host file changed")
        #expect(sameBytes(try Data(contentsOf: URL(fileURLWithPath: image)), imageBytes), "the image changed")
    }

    /// What boot gives QEMU pins the format and turns backing files off: real QEMU 7.2 opening a QCOW2 whose
    /// header names a host file as backing file makes no block node for that file (query-named-block-nodes),
    /// with snapshot=on and off. A plain `-drive file=…,format=qcow2` does open it (the control).
    @Test(.enabled(if: hasTool("qemu-img") && hasTool("qemu-system-x86_64"), "needs qemu-utils and qemu-system-x86"))
    func qemuOpensNoBackingFileThroughBootsDrive() throws {
        let scratch = try Scratch()
        let host = scratch.file("host,secret")
        try Data(repeating: 0x5A, count: 1 << 20).write(to: URL(fileURLWithPath: host))
        let image = scratch.file("image.qcow2")
        try runChecked("qemu-img", ["create", "-f", "qcow2", "-b", host, "-F", "raw", image])
        func nodes(_ drive: String) throws -> String {
            let qmp = "{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"query-named-block-nodes\"}\n{\"execute\":\"quit\"}\n"
            let result = try runProgram("qemu-system-x86_64", ["-machine", "none", "-nodefaults", "-display", "none", "-S", "-monitor", "none",
                                                               "-drive", drive, "-qmp", "stdio"], input: Data(qmp.utf8))
            #expect(result.stdout.contains("\"drv\": \"qcow2\""), "\(result)")
            return result.stdout
        }
        let escaped = { (text: String) in text.replacingOccurrences(of: ",", with: ",,") }
        #expect(try nodes("file=\(escaped(image)),format=qcow2,if=none,id=d").contains("host,secret"), "the control opened no backing file")
        for snapshot in ["on", "off"] {
            let spec = VirtualMachineBoot.driveSpecification(image, format: .qcow2)
            let listing = try nodes("file=\(escaped(spec)),if=none,id=d,snapshot=\(snapshot)")
            let opened = listing.components(separatedBy: "\"filename\": \"").dropFirst().map { $0.prefix { $0 != "\"" } }
            #expect(!opened.contains { $0.hasSuffix("host,secret") } && opened.contains { $0.hasSuffix("image.qcow2") }, "snapshot=\(snapshot): \(listing)")
        }
    }

    @Test(arguments: crashRows)
    func noCrashAndNoLostFile(_ row: CrashRow) throws {
        let scratch = try Scratch()
        try makeRichTree(at: scratch.file("tree"), owners: false)
        let created = try sevimage(["create", "--rootfs", scratch.file("tree"), "--output", scratch.file("vm.qcow2"), "--size", "128M", "--quiet"])
        try #require(created.status == 0, "\(created)")
        try row.setup(scratch.path)
        var before: [String: Data] = [:]
        for name in entries(of: scratch.path) where !["tree", "deep", "many"].contains(name) {
            before[name] = try Data(contentsOf: URL(fileURLWithPath: scratch.file(name)))
        }
        let listing = entries(of: scratch.path)
        let result = try runProgram(sevimageBinary, row.arguments, environment: row.environment, currentDirectory: scratch.path)
        #expect(result.status == row.status, "\(result)")
        let lines = result.stderr.split(separator: "\n")
        if row.status == 0 {
            #expect(!result.stderr.contains("Program crashed"), "\(result.stderr)")
        } else if row.status == 4 {
            #expect(lines.last?.hasPrefix("sevimage: error: ") == true, "\(result.stderr)")
        } else {
            #expect(lines.count == 1 && result.stderr.hasPrefix("sevimage: error: ") && result.stderr.contains(row.message), "\(result.stderr)")
        }
        #expect(entries(of: scratch.path) == listing, "files were added or removed")
        for (name, bytes) in before {
            #expect(sameBytes(try Data(contentsOf: URL(fileURLWithPath: scratch.file(name))), bytes), "\(name) changed")
        }
    }
}
