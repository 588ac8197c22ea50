import Foundation
import Testing
@testable import SEVImageKit

@Suite("LAUNCH_SECRET packet")
struct SecretPacketTests {
    /// Fixed keys and IV, recomputed here from the layout of AMD's sev-tool
    /// (`create_launch_secret_header`) with this module's primitives as a self-check of field order.
    @Test func headerLayout() throws {
        let keys = try TransportKeys(tek: SecretBytes([UInt8](repeating: 0x11, count: 16)), tik: SecretBytes([UInt8](repeating: 0x22, count: 16)))
        let table = try SecretTable.build(passphrase: Passphrase(SecretBytes(Array("pw".utf8))))
        let iv = [UInt8](0..<16)
        let measurement = [UInt8](repeating: 0x33, count: 32)
        let packet = try LaunchSecretPacket(table: table, keys: keys, measurement: measurement, iv: iv)
        #expect(packet.header.count == 52)
        #expect(Array(packet.header[0..<4]) == [0, 0, 0, 0])
        #expect(Array(packet.header[4..<20]) == iv)
        #expect(packet.payload.count == table.count)
        let plain = try Crypto.aes128CTR(key: [UInt8](repeating: 0x11, count: 16), iv: iv, packet.payload)
        #expect(plain == secretBytesArray(table))
        let n: [UInt8] = [UInt8(packet.payload.count), 0, 0, 0]
        let mac = Crypto.hmacSHA256(key: [UInt8](repeating: 0x22, count: 16), [0x01, 0, 0, 0, 0] + iv + n + n + packet.payload + measurement)
        #expect(Array(packet.header[20..<52]) == mac)
        // Two packets get different IVs from the CSPRNG.
        let a = try LaunchSecretPacket(table: table, keys: keys, measurement: measurement)
        let b = try LaunchSecretPacket(table: table, keys: keys, measurement: measurement)
        #expect(a.iv != b.iv)
    }

    @Test func launchMeasureParsing() throws {
        let raw = [UInt8](0..<48)
        let measure = try LaunchMeasure(base64: Data(raw).base64EncodedString())
        #expect(measure.measurement == Array(raw[0..<32]) && measure.nonce == Array(raw[32..<48]))
        #expect(throws: LaunchSecretError.self) { try LaunchMeasure(base64: Data(raw.prefix(32)).base64EncodedString()) }
        #expect(throws: LaunchSecretError.self) { try LaunchMeasure(base64: "not base64 !!") }
    }

    /// `secret package` output decrypted with the TEK and authenticated with the TIK by Python `cryptography`.
    @Test(.enabled(if: hasTool("python3"), "the oracle needs python3 with cryptography"), arguments: [false, true])
    func cliPackageMatchesOracle(separateKeys: Bool) throws {
        let scratch = try Scratch()
        let pw = scratch.file("pw"), tk = scratch.file("tk"), tek = scratch.file("tek"), tik = scratch.file("tik"), extra = scratch.file("extra")
        let keys = (0..<32).map { UInt8($0 * 7 + 3) }
        try writeSecretTestFile(pw, Array("a passphrase for the oracle".utf8))
        try writeSecretTestFile(tk, keys)
        try writeSecretTestFile(tek, Array(keys[0..<16]))
        try writeSecretTestFile(tik, Array(keys[16..<32]))
        try writeSecretTestFile(extra, [UInt8](repeating: 0x5A, count: 100))
        let measure = Data((0..<48).map { UInt8(255 - $0) }).base64EncodedString()
        let entry = "83c83f7f-1356-4975-8b7e-d3a0b54312c6=\(extra)"
        let keyArgs = separateKeys ? ["--tek-file", tek, "--tik-file", tik] : ["--tk-file", tk]
        let run = try sevimage(["secret", "package", "--passphrase-file", pw, "--entry", entry, "--launch-measure", measure,
                                "--gpa", "0x80b000", "--json"] + keyArgs)
        #expect(run.status == 0, "\(run)")
        let output = try #require(try JSONSerialization.jsonObject(with: run.stdoutData) as? [String: Any])
        #expect((output["gpa"] as? NSNumber)?.uint64Value == 0x80B000)
        let header = try #require(output["packet-header"] as? String)
        let secret = try #require(output["secret"] as? String)
        let oracle = try runProgram(python3, [repositoryRoot.path + "/Tests/Oracles/secret_oracle.py", "verify-packet",
                                              "--passphrase-file", pw, "--entry", entry, "--tk-file", tk,
                                              "--launch-measure", measure, "--header", header, "--secret", secret])
        #expect(oracle.status == 0, "\(oracle)")
        #expect(oracle.stdout.contains("\"hmacValid\": true") && oracle.stdout.contains("\"tableMatches\": true"))
    }

    @Test func cliPackageRefusesBadKeys() throws {
        let scratch = try Scratch()
        let pw = scratch.file("pw"), tk = scratch.file("tk")
        try writeSecretTestFile(pw, Array("pw".utf8))
        try writeSecretTestFile(tk, [UInt8](repeating: 1, count: 31))
        let measure = Data(count: 48).base64EncodedString()
        let short = try sevimage(["secret", "package", "--passphrase-file", pw, "--tk-file", tk, "--launch-measure", measure])
        #expect(short.status == 2 && short.stderr.contains("expected 32"), "\(short)")
        let both = try sevimage(["secret", "package", "--passphrase-file", pw, "--tk-file", tk, "--tek-file", tk, "--tik-file", tk, "--launch-measure", measure])
        #expect(both.status == 2, "\(both)")
    }
}
