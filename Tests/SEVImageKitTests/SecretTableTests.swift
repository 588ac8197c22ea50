import Foundation
import Testing
@testable import SEVImageKit

/// A seeded generator, so that a failing fuzz case can be replayed.
struct SecretTestRNG: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Writes a file with mode 0600 (secret files with wider modes are refused or warned about).
func writeSecretTestFile(_ path: String, _ bytes: [UInt8]) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    chmod(path, 0o600)
}

func secretBytesArray(_ secret: SecretBytes) -> [UInt8] { secret.withUnsafeBytes { [UInt8]($0) } }

@Suite("Secret table")
struct SecretTableTests {
    /// confidential-containers simple-kbs `test_request_parsing`: one 11-byte entry "test secret" under
    /// 2cf13667-ea72-4013-9dd6-155e89c5a28f gives table length 51, entry length 31 and 13 bytes of padding.
    @Test func publishedSimpleKBSVector() throws {
        let entry = SecretTable.Entry(guid: try #require(GUID("2cf13667-ea72-4013-9dd6-155e89c5a28f")),
                                      data: SecretBytes(Array("test secret".utf8)))
        let table = try SecretTable.encode([entry])
        #expect(hex(secretBytesArray(table)) == "42f5741edd71664d963eef4287ff173b330000006736f12c72ea13409dd6155e89c5a28f1f000000746573742073656372657400000000000000000000000000")
    }

    @Test func passphraseEntryEndsWithOneNUL() throws {
        let table = try SecretTable.build(passphrase: Passphrase(SecretBytes(Array("correct horse".utf8))))
        let decoded = try SecretTable.decode(secretBytesArray(table))
        #expect(decoded.size == 64 && decoded.totalLength == 54 && decoded.isPadded && decoded.paddingIsZero)
        #expect(decoded.entries.count == 1)
        #expect(decoded.entries[0].guid == KnownGUID.diskPassphraseEntry)
        #expect(decoded.entries[0].knownName == "disk-passphrase")
        #expect(secretBytesArray(decoded.entries[0].data) == Array("correct horse".utf8) + [0])
    }

    @Test func tableMustFitTheSecretArea() throws {
        let passphrase = Passphrase(SecretBytes(Array("x".utf8)))
        let guid = try #require(GUID("00000000-0000-4000-8000-000000000001"))
        // header 20 + passphrase entry 22 + entry header 20 + 3010 = 3072: fits exactly; one byte more pads to 3088.
        let fits = SecretTable.Entry(guid: guid, data: SecretBytes([UInt8](repeating: 7, count: 3010)))
        #expect(try SecretTable.build(passphrase: passphrase, extra: [fits]).count == 3072)
        let over = SecretTable.Entry(guid: guid, data: SecretBytes([UInt8](repeating: 7, count: 3011)))
        #expect(throws: SecretTableError.self) { try SecretTable.build(passphrase: passphrase, extra: [over]) }
        #expect(throws: SecretTableError.self) { try SecretTable.build(passphrase: passphrase, areaSize: 32) }
    }

    @Test func duplicateAndHeaderGUIDsAreRefused() throws {
        let passphrase = Passphrase(SecretBytes(Array("x".utf8)))
        let dup = SecretTable.Entry(guid: KnownGUID.diskPassphraseEntry, data: SecretBytes([1]))
        #expect(throws: SecretTableError.self) { try SecretTable.build(passphrase: passphrase, extra: [dup]) }
        let header = SecretTable.Entry(guid: KnownGUID.secretTableHeader, data: SecretBytes([1]))
        #expect(throws: SecretTableError.self) { try SecretTable.build(passphrase: passphrase, extra: [header]) }
    }

    /// Tables whose total length includes the padding (James Bottomley's inject script) decode too.
    @Test func decodesPaddedTotalLength() throws {
        var bytes = secretBytesArray(try SecretTable.build(passphrase: Passphrase(SecretBytes(Array("abc".utf8)))))
        bytes[16] = UInt8(bytes.count)
        let decoded = try SecretTable.decode(bytes)
        #expect(decoded.entries.count == 1 && decoded.totalLength == bytes.count)
    }

    /// Random inputs and mutations of valid tables: decode either succeeds with entries inside the
    /// input or throws SecretTableError; it never traps. 60,000 inputs.
    @Test func decoderSurvivesFuzzing() throws {
        var rng = SecretTestRNG(state: 0x5EC7_AB1E)
        let passphrase = Passphrase(SecretBytes(Array("fuzz passphrase".utf8)))
        let extra = SecretTable.Entry(guid: try #require(GUID("11111111-2222-4333-8444-555555555555")), data: SecretBytes([UInt8](repeating: 0xAB, count: 40)))
        let valid = secretBytesArray(try SecretTable.build(passphrase: passphrase, extra: [extra]))
        var decodedCount = 0, rejectedCount = 0, total = 0
        func check(_ input: [UInt8]) {
            total += 1
            do {
                let decoded = try SecretTable.decode(input)
                decodedCount += 1
                for entry in decoded.entries {
                    #expect(entry.offset + entry.length <= input.count && entry.length >= 20)
                }
            } catch is SecretTableError {
                rejectedCount += 1
            } catch {
                Issue.record("unexpected error \(error)")
            }
        }
        for _ in 0..<20_000 {
            let length = Int.random(in: 0...200, using: &rng)
            var input = (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) }
            // Half of them get the right header GUID, so that the walker is reached.
            if length >= 16 && Bool.random(using: &rng) { input.replaceSubrange(0..<16, with: KnownGUID.secretTableHeader.efiBytes) }
            check(input)
        }
        for _ in 0..<40_000 {
            var input = valid
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                switch Int.random(in: 0..<4, using: &rng) {
                case 0: input[Int.random(in: 0..<input.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                case 1: input = Array(input.prefix(Int.random(in: 0...input.count, using: &rng)))
                case 2: // a length field set to something random
                    let at = [16, 36, 36 + 36].randomElement(using: &rng) ?? 16
                    if at + 4 <= input.count {
                        let v = UInt32.random(in: 0...UInt32.max, using: &rng) >> UInt32.random(in: 0...31, using: &rng)
                        input.replaceSubrange(at..<at + 4, with: withUnsafeBytes(of: v.littleEndian, Array.init))
                    }
                default: input += (0..<Int.random(in: 0...40, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                }
                if input.isEmpty { break }
            }
            check(input)
        }
        #expect(total == 60_000)
        #expect(decodedCount > 1000 && rejectedCount > 1000)
        print("secret table fuzz: \(total) inputs, \(decodedCount) decoded, \(rejectedCount) rejected")
    }

    // MARK: Command line, checked against the Python oracle

    @Test(.enabled(if: hasTool("python3"), "the oracle needs python3 with cryptography"))
    func cliTableMatchesOracle() throws {
        let scratch = try Scratch()
        let pw = scratch.file("pw"), extra = scratch.file("extra"), out = scratch.file("table.bin")
        try writeSecretTestFile(pw, Array("hunter2 is not a passphrase\n".utf8))
        try writeSecretTestFile(extra, Array("{\"key\": \"value\"}".utf8))
        let entry = "e6f5a162-d67f-4750-a67c-5d065f2a9910=\(extra)"
        let run = try sevimage(["secret", "table", "--passphrase-file", pw, "--entry", entry, "--output", out, "--json"])
        #expect(run.status == 0, "\(run)")
        let oracle = try runProgram(python3, [repositoryRoot.path + "/Tests/Oracles/secret_oracle.py", "table", "--passphrase-file", pw, "--entry", entry])
        #expect(oracle.status == 0, "\(oracle)")
        let written = try [UInt8](Data(contentsOf: URL(fileURLWithPath: out)))
        #expect(hex(written) == oracle.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
        var info = stat()
        #expect(stat(out, &info) == 0 && info.st_mode & 0o777 == 0o600)
        // The JSON summary names entries, never values.
        #expect(!run.stdout.contains("hunter2") && !run.stdout.contains("value"))
        #expect(run.stdout.contains("disk-passphrase"))

        // An existing output is a conflict (exit 3) and stays untouched.
        let again = try sevimage(["secret", "table", "--passphrase-file", pw, "--output", out])
        #expect(again.status == 3, "\(again)")
        #expect(try [UInt8](Data(contentsOf: URL(fileURLWithPath: out))) == written)

        // inspect: no values unless asked.
        let inspect = try sevimage(["secret", "inspect", out])
        #expect(inspect.status == 0 && !inspect.stderr.contains("hunter2") && inspect.stderr.contains("disk-passphrase"), "\(inspect)")
        let shown = try sevimage(["secret", "inspect", out, "--show-values", "--json"])
        let report = try #require(try JSONSerialization.jsonObject(with: shown.stdoutData) as? [String: Any])
        let entries = try #require(report["entries"] as? [[String: Any]])
        #expect(entries.count == 2)
        #expect(entries[0]["valueText"] as? String == "hunter2 is not a passphrase")
        #expect(entries[1]["guid"] as? String == "e6f5a162-d67f-4750-a67c-5d065f2a9910")

        // A table too large for --area-size fails cleanly and writes nothing.
        let small = try sevimage(["secret", "table", "--passphrase-file", pw, "--area-size", "48", "--output", scratch.file("small.bin")])
        #expect(small.status == 2 && small.stderr.contains("secret area holds 48"), "\(small)")
        #expect(!FileManager.default.fileExists(atPath: scratch.file("small.bin")))
    }

    @Test func cliInspectRejectsGarbage() throws {
        let scratch = try Scratch()
        let path = scratch.file("junk.bin")
        try writeSecretTestFile(path, Array("this is not a secret table at all".utf8))
        let run = try sevimage(["secret", "inspect", path])
        #expect(run.status == 2 && run.stderr.contains("not a secret table"), "\(run)")
        #expect(run.stderr.split(separator: "\n").count == 1)
    }

    /// `--ovmf` reads the area from the firmware's GUIDed table (a synthetic 16 KiB image with only
    /// the SEV secret block: base 0x80B000, size 64).
    @Test func cliTableSizeFromOVMF() throws {
        let scratch = try Scratch()
        var image = [UInt8](repeating: 0, count: 16384)
        func le32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian, Array.init) }
        let entry = le32(0x80B000) + le32(64) + [26, 0] + KnownGUID.sevSecretBlock.efiBytes
        let tail = entry + [UInt8(entry.count + 18), 0] + KnownGUID.ovmfTableFooter.efiBytes
        image.replaceSubrange((image.count - 32 - tail.count)..<(image.count - 32), with: tail)
        let ovmf = scratch.file("OVMF.fd"), pw = scratch.file("pw"), extra = scratch.file("extra")
        try Data(image).write(to: URL(fileURLWithPath: ovmf))
        try writeSecretTestFile(pw, Array("short".utf8))
        try writeSecretTestFile(extra, [UInt8](repeating: 1, count: 8))
        let fits = try sevimage(["secret", "table", "--passphrase-file", pw, "--ovmf", ovmf, "--output", scratch.file("a.bin"), "--json"])
        #expect(fits.status == 0, "\(fits)")
        #expect(fits.stdout.contains("\"areaSize\" : 64"))
        let tooBig = try sevimage(["secret", "table", "--passphrase-file", pw, "--ovmf", ovmf, "--entry",
                                   "e6f5a162-d67f-4750-a67c-5d065f2a9910=\(extra)", "--output", scratch.file("b.bin")])
        #expect(tooBig.status == 2 && tooBig.stderr.contains("secret area holds 64"), "\(tooBig)")
    }
}
