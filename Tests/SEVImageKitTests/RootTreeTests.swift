import Foundation
import Testing
@testable import SEVImageKit

/// Tarball root trees: extracted in Swift, built into a real ext4 with `mke2fs -d`, fixed with `debugfs -w`,
/// and read back with `debugfs -R stat` and `e2fsck -fn`.
@Suite("Root trees")
struct RootTreeTests {
    static let tools = hasTool("mke2fs") && hasTool("debugfs") && hasTool("e2fsck") && hasTool("python3")

    /// Writes a tarball with Python's tarfile: owners 0:0 and 1000:1000, device nodes, a FIFO, a setuid file,
    /// a hard link, a symlink, a sticky directory, a name with a quote and a space, and a path over 100 bytes.
    static let tarballScript = #"""
    import io, sys, tarfile
    formats = {"pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT, "ustar": tarfile.USTAR_FORMAT}
    fmt, out, compression = sys.argv[1], sys.argv[2], sys.argv[3]
    def info(name, type=tarfile.REGTYPE, mode=0o644, uid=0, gid=0, **fields):
        t = tarfile.TarInfo(name)
        t.type, t.mode, t.uid, t.gid, t.mtime, t.uname, t.gname = type, mode, uid, gid, 1700000000, "", ""
        for key, value in fields.items():
            setattr(t, key, value)
        return t
    def add(tar, name, data=None, **fields):
        t = info(name, **fields)
        if data is not None:
            t.size = len(data)
            tar.addfile(t, io.BytesIO(data))
        else:
            tar.addfile(t)
    with tarfile.open(out, "w:" + compression, format=formats[fmt]) as tar:
        add(tar, "./", type=tarfile.DIRTYPE, mode=0o755)
        add(tar, "./etc", type=tarfile.DIRTYPE, mode=0o755)
        add(tar, "./etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
        add(tar, "./home/user", type=tarfile.DIRTYPE, mode=0o700, uid=1000, gid=1000)
        add(tar, "./home/user/notes.txt", b"hello\n" * 1000, mode=0o600, uid=1000, gid=1000)
        add(tar, "./usr/bin/su", b"\x7fELF", mode=0o4755)
        add(tar, "./usr/bin/su-again", type=tarfile.LNKTYPE, linkname="./usr/bin/su", mode=0o4755)
        add(tar, "./usr/bin/sh", type=tarfile.SYMTYPE, linkname="busybox", mode=0o777)
        add(tar, "./dev", type=tarfile.DIRTYPE, mode=0o755)
        add(tar, "./dev/null", type=tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3)
        add(tar, "./dev/sda", type=tarfile.BLKTYPE, mode=0o660, gid=6, devmajor=8, devminor=0)
        add(tar, "./run/initctl", type=tarfile.FIFOTYPE, mode=0o600)
        add(tar, "./opt/" + "d" * 60 + "/" + "f" * 90, b"abc", mode=0o444)
        add(tar, "./tmp", type=tarfile.DIRTYPE, mode=0o1777)
        add(tar, './etc/we"ird name', b"", mode=0o640, gid=42)
        add(tar, "./etc/secret", b"s", mode=0o000, uid=1000, gid=1000)
        capability = "\x01\x00\x00\x02\x00\x20\x00\x00" + "\x00" * 12
        add(tar, "./usr/bin/ping", b"ping", mode=0o755,
            pax_headers={"SCHILY.xattr.user.comment": "hello", "SCHILY.xattr.security.capability": capability})
    """#

    static let longPath = "/opt/" + String(repeating: "d", count: 60) + "/" + String(repeating: "f", count: 90)

    func makeTarball(format: String, compression: String, in scratch: Scratch) throws -> String {
        let script = scratch.file("make.py")
        try Self.tarballScript.write(toFile: script, atomically: true, encoding: .utf8)
        let pythonCompression = compression == "zst" ? "" : compression
        let path = scratch.file("root.tar" + (compression.isEmpty ? "" : "." + compression))
        let result = try runProgram(python3, [script, format, compression == "zst" ? scratch.file("root.tar") : path, pythonCompression])
        try #require(result.status == 0, "\(result)")
        if compression == "zst" {
            let zstd = try runProgram("zstd", ["-q", "--rm", scratch.file("root.tar"), "-o", path])
            try #require(zstd.status == 0, "\(zstd)")
        }
        return path
    }

    /// `mke2fs -d`, then `debugfs -w -f` with the prepared commands, as the image builder does.
    func buildExt4(_ prepared: PreparedRootTree, in scratch: Scratch) throws -> String {
        let image = scratch.file("root.ext4")
        let mke2fs = try runProgram("mke2fs", ["-q", "-t", "ext4", "-d", prepared.directory, "-F", image, "64M"])
        try #require(mke2fs.status == 0, "\(mke2fs)")
        let script = scratch.file("fix.debugfs")
        try (prepared.debugfsCommands.joined(separator: "\n") + "\n").write(toFile: script, atomically: true, encoding: .utf8)
        let debugfs = try runProgram("debugfs", ["-w", "-f", script, image])
        try #require(debugfs.status == 0, "\(debugfs)")
        // debugfs reports failed commands on stderr but still exits 0.
        let complaints = debugfs.stderr.split(separator: "\n").filter { !$0.hasPrefix("debugfs ") }
        #expect(complaints.isEmpty, "\(debugfs.stderr)")
        return image
    }

    struct Inode {
        var text: String
        func field(_ pattern: String) -> String? {
            guard let range = text.range(of: pattern + "[ ]*[^ \\n]+", options: .regularExpression) else { return nil }
            return text[range].dropFirst(pattern.count).trimmingCharacters(in: .whitespaces)
        }
        var type: String? {
            guard let range = text.range(of: "Type: [A-Za-z ]+?(?=  )", options: .regularExpression) else { return nil }
            return String(text[range].dropFirst(6))
        }
    }

    func stat(_ image: String, _ path: String) throws -> Inode {
        let quoted = "\"" + path.replacingOccurrences(of: "\"", with: "\"\"") + "\""
        let result = try runProgram("debugfs", ["-R", "stat \(quoted)", image])
        return Inode(text: result.stdout)
    }

    struct Flavour: Sendable, CustomStringConvertible {
        var format: String
        var compression: String
        var description: String { "\(format) \(compression.isEmpty ? "plain" : compression)" }
    }

    @Test(.enabled(if: tools, "needs e2fsprogs and python3"),
          arguments: [Flavour(format: "pax", compression: "gz"), Flavour(format: "gnu", compression: "xz"),
                      Flavour(format: "ustar", compression: ""), Flavour(format: "pax", compression: "zst")])
    func tarballBecomesTheRightExt4(_ flavour: Flavour) throws {
        if flavour.compression == "zst" { try #require(hasTool("zstd")) }
        let scratch = try Scratch()
        let tarball = try makeTarball(format: flavour.format, compression: flavour.compression, in: scratch)
        let work = scratch.file("work")
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: false)
        let prepared = try RootTree.prepare(source: tarball, scratch: work)

        #expect(prepared.directory == work + "/rootfs")
        // root etc passwd weird secret home user notes usr bin su(+su-again) sh ping dev null sda run initctl opt d… f… tmp
        #expect(prepared.inodeCount == 22)
        #expect(prepared.dataBytes == 26 + 6000 + 4 + 3 + 0 + 1 + 4)
        #expect(prepared.debugfsCommands.allSatisfy { !$0.contains("\n") })
        #expect(prepared.debugfsCommands.contains("mknod \"null\" c 1 3"))

        let image = try buildExt4(prepared, in: scratch)
        let fsck = try runProgram("e2fsck", ["-fn", image])
        #expect(fsck.status == 0, "\(fsck)")

        let root = try stat(image, "/")
        #expect(root.field("User:") == "0" && root.field("Mode:") == "0755")
        let passwd = try stat(image, "/etc/passwd")
        #expect(passwd.field("User:") == "0" && passwd.field("Group:") == "0" && passwd.field("Mode:") == "0644")
        #expect(passwd.field("Size:") == "26")
        #expect(passwd.text.contains("mtime: 0x6553f100"))
        let home = try stat(image, "/home/user")
        #expect(home.type == "directory" && home.field("User:") == "1000" && home.field("Group:") == "1000" && home.field("Mode:") == "0700")
        let notes = try stat(image, "/home/user/notes.txt")
        #expect(notes.field("User:") == "1000" && notes.field("Mode:") == "0600" && notes.field("Size:") == "6000")
        let secret = try stat(image, "/etc/secret")
        #expect(secret.field("User:") == "1000" && secret.field("Mode:") == "0000")
        let su = try stat(image, "/usr/bin/su")
        #expect(su.field("Mode:") == "04755" && su.field("Links:") == "2" && su.field("User:") == "0")
        let suAgain = try stat(image, "/usr/bin/su-again")
        #expect(suAgain.field("Inode:") == su.field("Inode:"))
        let sh = try stat(image, "/usr/bin/sh")
        #expect(sh.type == "symlink" && sh.text.contains("Fast link dest: \"busybox\""))
        let null = try stat(image, "/dev/null")
        #expect(null.type == "character special" && null.field("Mode:") == "0666" && null.field("User:") == "0")
        #expect(null.text.contains("Device major/minor number: 01:03"))
        #expect(null.text.contains("mtime: 0x6553f100"))
        let sda = try stat(image, "/dev/sda")
        #expect(sda.type == "block special" && sda.field("Mode:") == "0660" && sda.field("Group:") == "6")
        #expect(sda.text.contains("Device major/minor number: 08:00"))
        let fifo = try stat(image, "/run/initctl")
        #expect(fifo.type == "FIFO" && fifo.field("Mode:") == "0600")
        let tmp = try stat(image, "/tmp")
        #expect(tmp.field("Mode:") == "01777")
        let weird = try stat(image, "/etc/we\"ird name")
        #expect(weird.field("Group:") == "42" && weird.field("Mode:") == "0640")
        let long = try stat(image, Self.longPath)
        #expect(long.field("Size:") == "3" && long.field("Mode:") == "0444", "\(long.text)")
        let content = try runProgram("debugfs", ["-R", "cat \(Self.longPath)", image])
        #expect(content.stdout == "abc")
        if flavour.format == "pax" {
            // File capabilities and other extended attributes from pax SCHILY.xattr records.
            let attributes = try runProgram("debugfs", ["-R", "ea_list /usr/bin/ping", image]).stdout
            #expect(attributes.contains("user.comment (5) = \"hello\""), "\(attributes)")
            #expect(attributes.contains("security.capability (20) = 01 00 00 02 00 20 00 00 00 00 00 00 00 00 00 00 00 00 00 00"), "\(attributes)")
        }
    }

    @Test(.enabled(if: tools, "needs e2fsprogs"))
    func directorySourceIsReturnedAsIs() throws {
        let scratch = try Scratch()
        let tree = scratch.file("tree")
        try FileManager.default.createDirectory(atPath: tree + "/boot/grub", withIntermediateDirectories: true)
        try Data(repeating: 7, count: 5000).write(to: URL(fileURLWithPath: tree + "/boot/vmlinuz"))
        #expect(link(tree + "/boot/vmlinuz", tree + "/boot/vmlinuz.old") == 0)
        try FileManager.default.createSymbolicLink(atPath: tree + "/boot/long", withDestinationPath: String(repeating: "x", count: 70))
        try FileManager.default.createSymbolicLink(atPath: tree + "/loop", withDestinationPath: "loop")
        let prepared = try RootTree.prepare(source: tree, scratch: scratch.path)
        #expect(prepared.directory == tree && prepared.debugfsCommands.isEmpty)
        #expect(prepared.inodeCount == 6 && prepared.dataBytes == 5070)
        let image = try buildExt4(prepared, in: scratch)
        #expect(try runProgram("e2fsck", ["-fn", image]).status == 0)
    }

    @Test func directoryNamesDebugfsCannotQuoteAreRefused() throws {
        let scratch = try Scratch()
        let tree = scratch.file("tree")
        try FileManager.default.createDirectory(atPath: tree + "/etc", withIntermediateDirectories: true)
        #expect(FileManager.default.createFile(atPath: tree + "/etc/bad\nname", contents: Data()))
        #expect(throws: RootTreeError.unsupportedName("/etc/bad\nname", reason: "has a line break in its name, which debugfs cannot quote; rename it")) {
            try RootTree.prepare(source: tree, scratch: scratch.path)
        }
        let error = RootTreeError.unsupportedName("/etc/bad\nname", reason: "has a line break in its name, which debugfs cannot quote; rename it")
        #expect(error.description == "root tree entry '/etc/bad\\u{a}name' has a line break in its name, which debugfs cannot quote; rename it")
        #expect(throws: RootTreeError.missing(scratch.file("none"))) { try RootTree.prepare(source: scratch.file("none"), scratch: scratch.path) }
        try "just text\n".write(toFile: scratch.file("notes.txt"), atomically: true, encoding: .utf8)
        #expect(throws: RootTreeError.unusable(scratch.file("notes.txt"), reason: "not a directory, and not a tar archive (plain, gzip, xz, zstd or bzip2)")) {
            try RootTree.prepare(source: scratch.file("notes.txt"), scratch: scratch.path)
        }
    }

    @Test(.enabled(if: geteuid() != 0, "root reads every file, so nothing is unreadable"))
    func unreadableFilesAreRefused() throws {
        let scratch = try Scratch()
        let tree = scratch.file("tree")
        try FileManager.default.createDirectory(atPath: tree, withIntermediateDirectories: true)
        #expect(FileManager.default.createFile(atPath: tree + "/shadow", contents: Data("x".utf8), attributes: [.posixPermissions: 0]))
        #expect(throws: RootTreeError.unreadable(tree + "/shadow", reason: "permission denied")) {
            try RootTree.prepare(source: tree, scratch: scratch.path)
        }
    }

    /// Builds a small tarball with Python from a list of members: (name, type, linkname).
    func tarball(_ members: [(String, String, String)], in scratch: Scratch, name: String = "bad.tar") throws -> String {
        let path = scratch.file(name)
        let list = members.map { "(\"\($0.0)\", \($0.1), \"\($0.2)\")" }.joined(separator: ", ")
        let script = """
        import io, tarfile
        with tarfile.open("\(path)", "w", format=tarfile.PAX_FORMAT) as tar:
            for name, kind, link in [\(list)]:
                t = tarfile.TarInfo(name); t.type = kind; t.linkname = link
                data = b"data" if kind == tarfile.REGTYPE else b""
                t.size = len(data)
                tar.addfile(t, io.BytesIO(data))
        """
        let result = try runProgram(python3, ["-c", script])
        try #require(result.status == 0, "\(result)")
        return path
    }

    func failure(_ source: String, _ scratch: Scratch) -> String? {
        let work = scratch.file("work-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: false)
        defer {
            // Nothing half-extracted stays behind.
            #expect(!FileManager.default.fileExists(atPath: work + "/rootfs"))
        }
        do {
            _ = try RootTree.prepare(source: source, scratch: work)
            return nil
        } catch let error as RootTreeError {
            #expect(error.exitStatus == .invalidInput)
            return error.description
        } catch {
            return "unexpected \(error)"
        }
    }

    @Test(.enabled(if: hasTool("python3"), "needs python3"))
    func badTarballsGetOneClearLine() throws {
        let scratch = try Scratch()
        let file = "tarfile.REGTYPE", directory = "tarfile.DIRTYPE", symlink = "tarfile.SYMTYPE", hardLink = "tarfile.LNKTYPE"
        let escape = try tarball([("ok", file, ""), ("a/../../evil", file, "")], in: scratch, name: "escape.tar")
        #expect(failure(escape, scratch) == "tarball \(escape): entry 'a/../../evil' climbs out of the root tree through '..'")
        let absolute = try tarball([("/etc/passwd", file, "")], in: scratch, name: "absolute.tar")
        #expect(failure(absolute, scratch) == "tarball \(absolute): entry '/etc/passwd' has an absolute path; refusing to extract outside the root tree")
        let throughLink = try tarball([("etc", symlink, "/etc"), ("etc/passwd", file, "")], in: scratch, name: "link.tar")
        #expect(failure(throughLink, scratch) == "tarball \(throughLink): entry 'etc/passwd' lies under 'etc', which is not a directory")
        let dangling = try tarball([("a", hardLink, "missing")], in: scratch, name: "dangling.tar")
        #expect(failure(dangling, scratch) == "tarball \(dangling): hard link 'a' points to 'missing', which is not earlier in the archive")
        let replaced = try tarball([("d", directory, ""), ("d", file, "")], in: scratch, name: "replace.tar")
        #expect(failure(replaced, scratch) == "tarball \(replaced): entry 'd' would replace the directory 'd'")
        let newline = try tarball([("bad\\nname", file, "")], in: scratch, name: "newline.tar")
        #expect(failure(newline, scratch) == "root tree entry '/bad\\u{a}name' has a line break in its name, which debugfs cannot quote; rename it")

        // Damaged copies of a good archive.
        let good = try tarball([("etc", directory, ""), ("etc/passwd", file, ""), ("etc/group", file, "")], in: scratch, name: "good.tar")
        let bytes = try Data(contentsOf: URL(fileURLWithPath: good))
        let work = scratch.file("good-work")
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: false)
        #expect(try RootTree.prepare(source: good, scratch: work).inodeCount == 4)

        let truncated = scratch.file("truncated.tar")
        try bytes.prefix(2000).write(to: URL(fileURLWithPath: truncated))
        #expect(failure(truncated, scratch) == "tarball \(truncated): is truncated: it ends inside a header at byte 1536")
        let cutInData = scratch.file("cut.tar")
        try bytes.prefix(1026).write(to: URL(fileURLWithPath: cutInData))
        #expect(failure(cutInData, scratch) == "tarball \(cutInData): is truncated: entry 'etc/passwd' is cut short")
        let noEnd = scratch.file("noend.tar")
        try bytes.prefix(1536).write(to: URL(fileURLWithPath: noEnd))
        #expect(failure(noEnd, scratch) == "tarball \(noEnd): ends without the end-of-archive blocks after 1536 bytes (truncated?)")
        var corrupt = bytes
        corrupt[512 + 3] ^= 0x20
        let checksum = scratch.file("checksum.tar")
        try corrupt.write(to: URL(fileURLWithPath: checksum))
        #expect(failure(checksum, scratch) == "tarball \(checksum): bad header checksum at byte 512 (corrupt archive)")

        // A damaged gzip stream: the decompressor's own complaint.
        let gzip = try runProgram("gzip", ["-k", good])
        try #require(gzip.status == 0)
        let gz = try Data(contentsOf: URL(fileURLWithPath: good + ".gz"))
        let cutGzip = scratch.file("cut.tar.gz")
        try gz.prefix(gz.count - 10).write(to: URL(fileURLWithPath: cutGzip))
        let message = failure(cutGzip, scratch) ?? ""
        #expect(message.hasPrefix("tarball \(cutGzip): gzip cannot decompress it"), "\(message)")
    }

    /// Mutated archives must end in a `RootTreeError` or a tree, never a trap, and never write outside `scratch`.
    @Test(.enabled(if: hasTool("python3"), "needs python3"))
    func mutatedTarballsNeverTrapOrEscape() throws {
        let scratch = try Scratch()
        let file = "tarfile.REGTYPE", directory = "tarfile.DIRTYPE", symlink = "tarfile.SYMTYPE", hardLink = "tarfile.LNKTYPE"
        let long = String(repeating: "n", count: 120)
        let good = try tarball([("etc", directory, ""), ("etc/passwd", file, ""), ("etc/\(long)", file, ""),
                                ("bin", symlink, "usr/bin"), ("etc/link", hardLink, "etc/passwd")], in: scratch, name: "seed.tar")
        let seed = [UInt8](try Data(contentsOf: URL(fileURLWithPath: good)))
        var generator = ProfileFuzzTests.Generator(state: 0x7A2_0000_0001)
        let iterations = 600
        var extracted = 0
        for iteration in 0..<iterations {
            var bytes = seed
            for _ in 0..<Int.random(in: 1...6, using: &generator) {
                let at = Int.random(in: 0..<bytes.count, using: &generator)
                bytes[at] = Bool.random(using: &generator) ? UInt8.random(in: 0...255, using: &generator)
                                                           : Array("/.0 7\0x".utf8).randomElement(using: &generator) ?? 0
            }
            if iteration % 3 == 0 {
                // Keep the checksums right so that the mutation reaches the field parsers.
                for header in stride(from: 0, to: bytes.count - 512, by: 512) where bytes[header + 148] != 0 {
                    var sum = 0
                    for index in header..<(header + 512) { sum += (148..<156).contains(index - header) ? 32 : Int(bytes[index]) }
                    let digits = Array(String(sum, radix: 8).utf8)
                    if digits.count <= 6 {
                        for index in 0..<8 { bytes[header + 148 + index] = 0x30 }
                        bytes.replaceSubrange((header + 148 + 6 - digits.count)..<(header + 154), with: digits)
                        bytes[header + 154] = 0
                        bytes[header + 155] = 0x20
                    }
                }
            }
            let archive = scratch.file("m.tar")
            try Data(bytes).write(to: URL(fileURLWithPath: archive))
            let work = scratch.file("w\(iteration)")
            try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: false)
            do {
                _ = try RootTree.prepare(source: archive, scratch: work)
                extracted += 1
            } catch is RootTreeError {
            }
            try? FileManager.default.removeItem(atPath: work)
        }
        let left = try FileManager.default.contentsOfDirectory(atPath: scratch.path).sorted()
        #expect(left == ["m.tar", "seed.tar"])
        #expect(extracted > 0 && extracted < iterations)
    }

    @Test func headerNumbersAndPaxRecords() throws {
        #expect(try TarHeader.number(ArraySlice(Array("0000644\0".utf8))) == 0o644)
        #expect(try TarHeader.number(ArraySlice(Array("   17 \0".utf8))) == 0o17)
        #expect(try TarHeader.number(ArraySlice([UInt8](repeating: 0, count: 8))) == 0)
        // GNU base-256: top bit set, big-endian value in the rest.
        #expect(try TarHeader.number(ArraySlice([0x80, 0, 0, 0, 0, 0x01, 0x86, 0xa0])) == 100_000)
        #expect(throws: TarFormatError.self) { try TarHeader.number(ArraySlice([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe])) }
        #expect(throws: TarFormatError.self) { try TarHeader.number(ArraySlice(Array("00 9\0".utf8))) }
        #expect(throws: TarFormatError.self) { try TarHeader.number(ArraySlice(Array("1 2".utf8))) }

        var records: [String: [UInt8]] = ["uid": Array("5".utf8)]
        let data = Array("28 path=some/long/path/name\n10 uid=42\n22 mtime=1700000000.5\n".utf8)
        try parsePaxRecords(data, into: &records)
        #expect(records["path"] == Array("some/long/path/name".utf8) && records["uid"] == Array("42".utf8))
        #expect(try paxInteger(records["mtime"] ?? [], key: "mtime", allowFraction: true) == 1_700_000_000)
        try parsePaxRecords(Array("7 uid=\n".utf8), into: &records)
        #expect(records["uid"] == nil)
        for broken in ["99 path=x\n", "5 path=x\n", "x path=y\n", "10 pathxyz\n", "9 path=x ", "3 a\n"] {
            #expect(throws: TarFormatError.self, "\(broken)") { try parsePaxRecords(Array(broken.utf8), into: &records) }
        }
    }
}
