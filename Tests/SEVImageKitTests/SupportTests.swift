import Foundation
import Testing
@testable import SEVImageKit

@Suite struct SupportTests {
    /// `PathName` against dirname(1)/basename(1), one-character names included (NSString's
    /// `deletingLastPathComponent` trapped on those), and no source file left splitting paths through NSString.
    @Test func pathNamesSplitLikeDirnameAndBasename() throws {
        let cases = ["a", "/a", "a/", "vm.qcow2", "d/x.passphrase", "out//d/x.pass/", "/", "//", "./a", "../b/c", ".profile", "a.", ""]
        for path in cases where !path.isEmpty {
            #expect(PathName.directory(of: path) == (try runChecked("dirname", ["--", path]).stdout.trimmingCharacters(in: .newlines)), "\(path)")
            #expect(PathName.name(of: path) == (try runChecked("basename", ["--", path]).stdout.trimmingCharacters(in: .newlines)), "\(path)")
        }
        #expect(PathName.directory(of: "") == "." && PathName.name(of: "") == "")
        #expect(PathName.stem("a") == "a" && PathName.stem("d/x.passphrase") == "d/x" && PathName.stem("d.x/.profile") == "d.x/.profile")
        let sources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path + "/Sources"
        let found = try runProgram("grep", ["-rln", "-e", "deletingLastPathComponent", "-e", "deletingPathExtension", "-e", "NSString).pathExtension", sources]).stdout
        // The two left split constant paths inside the image; PathName.swift names the method it replaces.
        let allowed = ["Image/ImageBuilder.swift", "Image/InitramfsKeyfile.swift", "Support/PathName.swift"]
        #expect(found.split(separator: "\n").allSatisfy { line in allowed.contains { line.hasSuffix($0) } }, "\(found)")
    }

    @Test func secretBytesNeverPrintThemselves() throws {
        let secret = SecretBytes(Array("hunter2".utf8))
        #expect(secret.description == "<secret, 7 bytes>")
        #expect(!"\(secret)".contains("hunter2"))
    }

    @Test func randomSecretsDiffer() throws {
        let a = try SecretBytes(randomCount: 32), b = try SecretBytes(randomCount: 32)
        #expect(!a.constantTimeEquals(b))
        #expect(a.constantTimeEquals(a))
    }

    /// `ImageDigest` against Python's hashlib (Tests/Oracles/image_digest.py), on lengths around the block size.
    @Test func imageDigestMatchesTheOracle() throws {
        let scratch = try Scratch()
        let lengths = [0, 1, 65_535, 65_536, 65_537, 16 * 65_536, 16 * 65_536 + 4097, 40 * 65_536 + 3]
        let paths = try lengths.map { length -> String in
            let path = scratch.file("file-\(length)")
            try Data(randomBytes(length)).write(to: URL(fileURLWithPath: path))
            return path
        }
        let expected = try oracleImageDigests(paths)
        for (path, oracle) in zip(paths, expected) {
            #expect(hex(try ImageDigest.of(file: path)) == oracle, "\(path)")
        }
    }

    // RFC 4231 test case 2.
    @Test func hmacSHA256MatchesRFC4231() {
        let mac = Crypto.hmacSHA256(key: Array("Jefe".utf8), Array("what do ya want for nothing?".utf8))
        #expect(hex(mac) == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    }

    @Test func sha384OfABC() {
        #expect(hex(Crypto.sha384(Array("abc".utf8))) == "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7")
    }
}

@Suite struct GUIDTests {
    @Test func efiByteOrderRoundTrips() throws {
        let guid = try #require(GUID("96b582de-1fb2-45f7-baea-a366c55a082d"))
        #expect(guid.efiBytes == [0xde, 0x82, 0xb5, 0x96, 0xb2, 0x1f, 0xf7, 0x45, 0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d])
        #expect(GUID(efiBytes: guid.efiBytes) == guid)
        #expect(guid.description == "96b582de-1fb2-45f7-baea-a366c55a082d")
    }

    @Test(arguments: ["", "96b582de1fb245f7baeaa366c55a082d", "96b582de-1fb2-45f7-baea-a366c55a082", "zzb582de-1fb2-45f7-baea-a366c55a082d", "96b582de-1fb2-45f7-baea-a366c55a08-2d"])
    func rejectsMalformedText(_ text: String) {
        #expect(GUID(text) == nil)
    }
}
