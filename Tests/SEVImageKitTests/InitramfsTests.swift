import Foundation
import Testing
@testable import SEVImageKit

/// Reading a tree's initrd: the archive layouts Debian's generators write, checked against cpio's own listing.
@Suite(.enabled(if: hasTool("cpio") && hasTool("zstd") && hasTool("xz") && hasTool("gzip"), "needs cpio, gzip, xz and zstd"))
struct InitramfsTests {
    /// Writes a newc archive of `names` (empty files; directories made as needed) and returns its bytes.
    func archive(_ names: [String], in scratch: Scratch) throws -> Data {
        let staging = scratch.file("staging-\(UUID().uuidString.prefix(8))")
        for name in names {
            try FileManager.default.createDirectory(atPath: staging + "/" + (name as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try Data(repeating: 0x41, count: name.count * 37).write(to: URL(fileURLWithPath: staging + "/" + name))
        }
        let out = scratch.file("archive-\(UUID().uuidString.prefix(8)).cpio")
        try runChecked("/bin/sh", ["-c", "cd '\(staging)' && find . | LC_ALL=C sort | cpio -o -H newc --quiet > '\(out)'"])
        return try Data(contentsOf: URL(fileURLWithPath: out))
    }

    func compressed(_ data: Data, with command: String, in scratch: Scratch) throws -> Data {
        let path = scratch.file("plain-\(UUID().uuidString.prefix(8))")
        try data.write(to: URL(fileURLWithPath: path))
        try runChecked("/bin/sh", ["-c", "\(command) < '\(path)' > '\(path).z'"])
        return try Data(contentsOf: URL(fileURLWithPath: path + ".z"))
    }

    static let initramfsTools = ["init", "conf/initramfs.conf", "scripts/local", "scripts/local-top/cryptroot", "usr/sbin/cryptsetup"]

    /// Early microcode as an uncompressed cpio, zeros, then the main archive: the layout initramfs-tools writes.
    @Test(arguments: ["gzip -9n", "zstd -q -19", "xz -9 --check=crc32"])
    func earlyArchiveThenCompressedMain(compressor: String) throws {
        let scratch = try Scratch()
        let early = try archive(["kernel/x86/microcode/AuthenticAMD.bin"], in: scratch)
        let main = try compressed(try archive(Self.initramfsTools, in: scratch), with: compressor, in: scratch)
        var initrd = early
        initrd.append(Data(count: 512))
        initrd.append(main)
        try FileManager.default.createDirectory(atPath: scratch.file("tree/boot"), withIntermediateDirectories: true)
        try initrd.write(to: URL(fileURLWithPath: scratch.file("tree/boot/initrd.img")))
        let inspection = try InitramfsInspection.inspect("boot/initrd.img", in: scratch.file("tree"))
        #expect(inspection.kind == .initramfsTools && inspection.unlocksLUKS == true)
        #expect(inspection.compression == ["none", String(compressor.prefix { $0 != " " })])
    }

    /// The streaming reader lists what cpio lists, whatever the read sizes.
    @Test func listingEqualsCpios() throws {
        let scratch = try Scratch()
        let names = (0..<300).map { "dir\($0 % 7)/file-\($0)" } + Self.initramfsTools
        let bytes = [UInt8](try archive(names, in: scratch))
        let file = scratch.file("listed.cpio")
        try Data(bytes).write(to: URL(fileURLWithPath: file))
        let expected = try runChecked("/bin/sh", ["-c", "cpio -it --quiet < '\(file)'"]).stdout
            .split(separator: "\n").map(String.init).filter { $0 != "." }
        for step in [1, 7, 110, 4096, 1 << 20] {
            var position = 0
            let listing = try Cpio.list { count in
                let n = min(step, count, bytes.count - position)
                defer { position += n }
                return Array(bytes[position..<(position + n)])
            }
            #expect(listing.entries.map(\.name).filter { $0 != "." } == expected, "reads of \(step)")
            #expect(listing.rest == nil)
        }
    }

    /// An initrd sevimage cannot read is "other", not an error; a truncated archive stops the listing cleanly.
    @Test func unknownAndDamagedInitrds() throws {
        let scratch = try Scratch()
        try FileManager.default.createDirectory(atPath: scratch.file("tree/boot"), withIntermediateDirectories: true)
        try Data("not an initramfs at all".utf8).write(to: URL(fileURLWithPath: scratch.file("tree/boot/initrd")))
        let unknown = try InitramfsInspection.inspect("boot/initrd", in: scratch.file("tree"))
        #expect(unknown.kind == .other && unknown.unlocksLUKS == nil && unknown.compression == ["none", "unknown"])
        let whole = [UInt8](try archive(Self.initramfsTools, in: scratch))
        var offset = 0
        let all = try Cpio.list { count in
            let n = min(count, whole.count - offset)
            defer { offset += n }
            return Array(whole[offset..<(offset + n)])
        }.entries.count
        for cut in [0, 6, 109, 111, whole.count / 2, whole.count - 1] {
            var position = 0
            let listing = try Cpio.list { count in
                let n = min(count, cut - position)
                defer { position += n }
                return Array(whole[position..<(position + n)])
            }
            #expect(listing.entries.count <= all, "cut at \(cut)")
        }
    }
}
