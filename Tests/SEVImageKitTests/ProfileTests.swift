import Foundation
import Testing
@testable import SEVImageKit

@Suite("Sizes")
struct ProfileSizeTests {
    struct Case: Sendable, CustomStringConvertible {
        var text: String
        var bytes: UInt64?
        var description: String { text }
    }

    @Test(arguments: [
        Case(text: "8G", bytes: 8 << 30), Case(text: "64M", bytes: 64 << 20), Case(text: "1k", bytes: 1024),
        Case(text: "2T", bytes: 2 << 40), Case(text: "512", bytes: 512), Case(text: "3GiB", bytes: 3 << 30),
        Case(text: " 7M ", bytes: 7 << 20), Case(text: "16383P", bytes: nil), Case(text: "8X", bytes: nil),
        Case(text: "1e20", bytes: nil), Case(text: "1.5G", bytes: nil), Case(text: "-1G", bytes: nil),
        Case(text: "", bytes: nil), Case(text: "G", bytes: nil), Case(text: "0", bytes: nil), Case(text: "0G", bytes: nil),
        Case(text: "18446744073709551616", bytes: nil), Case(text: "16777216T", bytes: nil),
        Case(text: "16777215T", bytes: 16_777_215 << 40), Case(text: "18446744073709551615", bytes: UInt64.max),
    ])
    func parses(_ sample: Case) throws {
        if let bytes = sample.bytes {
            #expect(try parseSize(sample.text) == bytes)
        } else {
            #expect(throws: SizeError.self) { try parseSize(sample.text) }
        }
    }

    @Test func messages() {
        #expect(throws: SizeError.unknownSuffix("8X", suffix: "X")) { try parseSize("8X") }
        #expect(throws: SizeError.zero("0")) { try parseSize("0") }
        #expect(throws: SizeError.tooLarge("99999999T")) { try parseSize("99999999T") }
        #expect(throws: SizeError.malformed("1e20")) { try parseSize("1e20") }
        #expect((try? parseSize("0", allowZero: true)) == 0)
        #expect(SizeError.unknownSuffix("8X", suffix: "X").description == "invalid size '8X': unknown suffix 'X' (use K, M, G or T, powers of 1024)")
    }

    @Test func formatsExactly() throws {
        for bytes: UInt64 in [1, 1023, 1024, 64 << 20, 8 << 30, (8 << 30) + 1024, 3 << 40] {
            #expect(try parseSize(formatSize(bytes)) == bytes)
        }
        #expect(formatSize(8 << 30) == "8G")
        #expect(formatSize(1536 << 10) == "1536K")
    }
}

@Suite("TOML reader")
struct ProfileTOMLTests {
    @Test func readsTheSubset() throws {
        let text = """
        # a comment
        extends = "default" # trailing comment

        [image]
        size = "8G"
        [luks]
        pbkdf2_iterations = 1_000_000
        wipe_free_space = true
        escaped = "tab\\there \\"q\\" \\\\ \\u00e9\\U0001F600"
        literal = 'C:\\path\\no escapes'
        negative = -42
        [firmware]
        vcpus = [
          1, # one
          2,
          4,
        ]
        modes = ["sev", 'sev-es']
        nested = [[1], []]
        """
        let document = try TOMLReader.parse(text)
        let values = Dictionary(uniqueKeysWithValues: document.entries.map { ($0.qualifiedKey, $0.value) })
        #expect(values["extends"] == .string("default"))
        #expect(values["image.size"] == .string("8G"))
        #expect(values["luks.pbkdf2_iterations"] == .integer(1_000_000))
        #expect(values["luks.wipe_free_space"] == .boolean(true))
        #expect(values["luks.escaped"] == .string("tab\there \"q\" \\ é😀"))
        #expect(values["luks.literal"] == .string("C:\\path\\no escapes"))
        #expect(values["luks.negative"] == .integer(-42))
        #expect(values["firmware.vcpus"] == .array([.integer(1), .integer(2), .integer(4)]))
        #expect(values["firmware.modes"] == .array([.string("sev"), .string("sev-es")]))
        #expect(values["firmware.nested"] == .array([.array([.integer(1)]), .array([])]))
        #expect(document.entries.first { $0.key == "vcpus" }?.line == 13)
        #expect(document.tables.map(\.name) == ["image", "luks", "firmware"])
    }

    @Test func crlfAndBOM() throws {
        let document = try TOMLReader.parse([0xef, 0xbb, 0xbf] + Array("[a]\r\nb = 1\r\n".utf8))
        #expect(document.entries == [TOMLEntry(table: "a", key: "b", value: .integer(1), line: 2)])
    }

    /// What the hand-written subset refused and TOML 1.0 has: read now, as TOML means it.
    @Test func readsWhatTheSubsetRefused() throws {
        func entries(_ text: String) throws -> [TOMLEntry] { try TOMLReader.parse(text).entries }
        #expect(try entries("a = 1.5") == [TOMLEntry(table: "", key: "a", value: .float(1.5), line: 1)])
        #expect(try entries("\n\na = 1979-05-27") == [TOMLEntry(table: "", key: "a", value: .date("1979-05-27"), line: 3)])
        #expect(try entries("a = {b = 1}") == [TOMLEntry(table: "a", key: "b", value: .integer(1), line: 1)])
        #expect(try entries("[[a]]") == [TOMLEntry(table: "", key: "a", value: .array([.table([:])]), line: 1)])
        #expect(try entries("a.b = 1") == [TOMLEntry(table: "a", key: "b", value: .integer(1), line: 1)])
        #expect(try entries("\"a\" = 1") == [TOMLEntry(table: "", key: "a", value: .integer(1), line: 1)])
        #expect(try entries("a = \"\"\"x\"\"\"") == [TOMLEntry(table: "", key: "a", value: .string("x"), line: 1)])
        #expect(try entries("a = 0x10") == [TOMLEntry(table: "", key: "a", value: .integer(16), line: 1)])
        var nested = TOMLValue.integer(1)
        for _ in 0..<10 { nested = .array([nested]) }
        #expect(try entries("a = [[[[[[[[[[1]]]]]]]]]]") == [TOMLEntry(table: "", key: "a", value: nested, line: 1)])
    }

    struct Bad: Sendable, CustomStringConvertible {
        var text: String
        var line: Int
        var column: Int
        var message: String
        var description: String { text }
    }

    /// What TOML 1.0 refuses too, now with toml++'s message, line and column.
    @Test(arguments: [
        Bad(text: "a = \"x", line: 1, column: 7, message: "error while parsing string: encountered end-of-file"),
        Bad(text: "a = \"\\q\"", line: 1, column: 7, message: "error while parsing string: unknown escape sequence '\\q'"),
        Bad(text: "a = \"\\uD800\"", line: 1, column: 12, message: "error while parsing unicode scalar sequence: unicode surrogates (U+D800 - U+DFFF) are explicitly prohibited"),
        Bad(text: "a = 012", line: 1, column: 8, message: "error while parsing decimal integer: leading zeroes are prohibited"),
        Bad(text: "a = 1__0", line: 1, column: 7, message: "error while parsing decimal integer: underscores may only follow digits"),
        Bad(text: "a = 9223372036854775808", line: 1, column: 24, message: "error while parsing decimal integer: '9223372036854775808' is not representable in 64 bits"),
        Bad(text: "a = yes", line: 1, column: 5, message: "error while parsing value: could not determine value type"),
        Bad(text: "a = truth", line: 1, column: 8, message: "error while parsing boolean: expected 'true', saw 'trut'"),
        Bad(text: "a = 1 2", line: 1, column: 7, message: "error while parsing key-value pair: expected a comment or whitespace, saw '2'"),
        Bad(text: "a = [1,\n2", line: 2, column: 2, message: "error while parsing array: encountered end-of-file"),
        Bad(text: "a = [1 2]", line: 1, column: 8, message: "error while parsing array: expected comma or closing ']', saw '2'"),
        Bad(text: "a = 1\na = 2", line: 2, column: 5, message: "error while parsing key-value pair: cannot redefine existing integer 'a'"),
        Bad(text: "[t]\n[t]", line: 2, column: 1, message: "error while parsing table header: cannot redefine existing table 't'"),
        Bad(text: "a", line: 1, column: 2, message: "error while parsing key-value pair: encountered end-of-file"),
        Bad(text: "= 1", line: 1, column: 1, message: "error while parsing root table: expected keys, tables, whitespace or comments, saw '='"),
        Bad(text: "a = ", line: 1, column: 5, message: "error while parsing key-value pair: encountered end-of-file"),
        Bad(text: "a = 1\rb = 2", line: 1, column: 7, message: "error while parsing key-value pair: expected '\\n' after '\\r', saw 'b'"),
        Bad(text: "a = \"\u{01}\"", line: 1, column: 6, message: "error while parsing string: unescaped control characters other than TAB (U+0009) are explicitly prohibited"),
    ])
    func refuses(_ bad: Bad) {
        #expect(throws: TOMLSyntaxError(line: bad.line, column: bad.column, message: bad.message)) { try TOMLReader.parse(bad.text) }
    }

    @Test func refusesInvalidUTF8WithItsLine() {
        #expect(throws: TOMLSyntaxError(line: 2, message: "the text is not valid utf-8")) {
            try TOMLReader.parse(Array("a = 1\n# ".utf8) + [0xff] + Array("\n".utf8))
        }
    }
}

@Suite("Profiles")
struct ProfileTests {
    func resolve(_ text: String, environment: [String: String] = [:]) throws -> Profile {
        try Profile.resolve(text: text, displayName: "test.toml", environment: environment).profile
    }

    func message(_ text: String, environment: [String: String] = [:]) -> String? {
        do {
            _ = try Profile.resolve(text: text, displayName: "test.toml", environment: environment)
            return nil
        } catch {
            return error.description
        }
    }

    @Test func builtInTextEqualsTheFilesInProfiles() throws {
        let directory = repositoryRoot.appendingPathComponent("profiles").path
        let files = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".toml") }.sorted()
        #expect(files.map { String($0.dropLast(5)) } == Profile.builtInProfileNames.sorted())
        for name in Profile.builtInProfileNames {
            let text = try String(contentsOfFile: directory + "/" + name + ".toml", encoding: .utf8)
            #expect(Profile.builtInProfiles[name] == text, "Sources/SEVImageKit/Profiles/BuiltInProfiles.swift differs from profiles/\(name).toml")
        }
    }

    @Test func everyKeyIsDocumented() throws {
        let readme = try String(contentsOfFile: repositoryRoot.appendingPathComponent("profiles/README.md").path, encoding: .utf8)
        for key in Profile.keys {
            #expect(readme.contains("`[\(key.table)] \(key.key)`"), "profiles/README.md lacks [\(key.table)] \(key.key)")
        }
    }

    @Test func defaultTOMLSpellsOutTheDefaults() throws {
        var expected = Profile()
        expected.name = "default"
        #expect(try Profile.load(nameOrPath: "default", environment: [:]) == expected)
        // Every key appears in default.toml.
        let document = try TOMLReader.parse(Profile.builtInProfiles["default"] ?? "")
        #expect(Set(document.entries.map(\.qualifiedKey)) == Set(Profile.keys.map(\.qualifiedKey)))
    }

    @Test func builtInProfiles() throws {
        let pipeline = try Profile.load(nameOrPath: "pipeline", environment: [:])
        #expect(pipeline.json && pipeline.quiet && pipeline.name == "pipeline" && pipeline.diskSize == 8 << 30)
        let sevES = try Profile.load(nameOrPath: "sev-es", environment: [:])
        #expect(sevES.measureModes == ["sev", "sev-es"] && sevES.vcpus == [1, 2, 4] && sevES.vcpuType == "EPYC-v4")
        let sevSNP = try Profile.load(nameOrPath: "sev-snp", environment: [:])
        #expect(sevSNP.measureModes == ["sev-snp"] && sevSNP.vcpuType == "EPYC-v4")
        let recovery = try Profile.load(nameOrPath: "recovery", environment: [:])
        #expect(recovery.recoveryKeyslot && recovery.recoveryPbkdf2Iterations == 2_000_000 && !recovery.json)
        #expect(try Profile.resolve(nameOrPath: "pipeline", environment: [:]).chain == ["pipeline.toml", "default.toml"])
    }

    @Test func everyKeyMaps() throws {
        let profile = try resolve("""
        [image]
        size = 17179869184
        [esp]
        size = "128M"
        [luks]
        pbkdf2_iterations = 2000
        recovery_pbkdf2_iterations = 3_000_000
        wipe_free_space = true
        [boot]
        kernel_cmdline = "console=ttyS0 root=/dev/mapper/root"
        grub_timeout = 5
        [firmware]
        measure_modes = ["sev-snp", "sev"]
        vcpus = 8
        vcpu_type = "EPYC-Milan"
        standard_boot_only = true
        [output]
        json = true
        quiet = true
        [recovery]
        keyslot = true
        """)
        #expect(profile.diskSize == 16 << 30 && profile.espSize == 128 << 20)
        #expect(profile.pbkdf2Iterations == 2000 && profile.recoveryPbkdf2Iterations == 3_000_000 && profile.wipeFreeSpace)
        #expect(profile.kernelCommandLine == "console=ttyS0 root=/dev/mapper/root" && profile.grubTimeout == 5)
        #expect(profile.measureModes == ["sev-snp", "sev"] && profile.vcpus == [8] && profile.vcpuType == "EPYC-Milan")
        #expect(profile.allowStandardBootOnly && profile.json && profile.quiet && profile.recoveryKeyslot)
        // What `profiles show` prints reads back to the same profile.
        var again = try resolve(profile.tomlText(header: ["round trip"]))
        again.name = profile.name
        #expect(again == profile)
    }

    struct Bad: Sendable, CustomStringConvertible {
        var text: String
        var message: String
        var description: String { message }
    }

    @Test(arguments: [
        Bad(text: "extends = \"default\"\n[luks]\niteration = 5",
            message: "profile test.toml, line 3: unknown key 'luks.iteration' (did you mean 'luks.pbkdf2_iterations'?)"),
        Bad(text: "size = \"8G\"", message: "profile test.toml, line 1: unknown key 'size' (did you mean 'image.size'?)"),
        Bad(text: "[output]\njsno = true", message: "profile test.toml, line 2: unknown key 'output.jsno' (did you mean 'output.json'?)"),
        Bad(text: "[imag]\nsize = \"8G\"", message: "profile test.toml, line 1: unknown table [imag] (did you mean [image]?)"),
        Bad(text: "[luks]\npbkdf2_iterations = \"1000\"", message: "profile test.toml, line 2: 'luks.pbkdf2_iterations' must be an integer, not a string"),
        Bad(text: "[luks]\npbkdf2_iterations = 999", message: "profile test.toml, line 2: 'luks.pbkdf2_iterations' must be between 1000 and 100_000_000, not 999"),
        Bad(text: "[luks]\nrecovery_pbkdf2_iterations = 100_000_001", message: "profile test.toml, line 2: 'luks.recovery_pbkdf2_iterations' must be between 1000 and 100_000_000, not 100_000_001"),
        Bad(text: "[luks]\nwipe_free_space = \"yes\"", message: "profile test.toml, line 2: 'luks.wipe_free_space' must be true or false, not a string"),
        Bad(text: "[esp]\nsize = \"32M\"", message: "profile test.toml, line 2: 'esp.size' must be between 33M and 4G, not 32M"),
        Bad(text: "[esp]\nsize = \"5G\"", message: "profile test.toml, line 2: 'esp.size' must be between 33M and 4G, not 5G"),
        Bad(text: "[image]\nsize = \"8X\"", message: "profile test.toml, line 2: 'image.size' is not a size: unknown suffix 'X' (use K, M, G or T, powers of 1024)"),
        Bad(text: "[image]\nsize = \"65T\"", message: "profile test.toml, line 2: 'image.size' must be between 97M and 64T, not 65T"),
        Bad(text: "[image]\nsize = 0", message: "profile test.toml, line 2: 'image.size' must be greater than zero"),
        Bad(text: "[image]\nsize = true", message: "profile test.toml, line 2: 'image.size' must be a size such as \"8G\" or a number of bytes, not a boolean"),
        Bad(text: "[image]\nsize = \"100M\"\n[esp]\nsize = \"64M\"",
            message: "profile test.toml, line 2: 'image.size' leaves no room for the root: the disk (100M) must be at least the ESP (64M) plus 64M"),
        Bad(text: "[firmware]\nmeasure_modes = [\"sev\", \"tdx\"]", message: "profile test.toml, line 2: 'firmware.measure_modes' has an unknown mode 'tdx' (use sev, sev-es or sev-snp)"),
        Bad(text: "[firmware]\nmeasure_modes = []", message: "profile test.toml, line 2: 'firmware.measure_modes' needs at least one value"),
        Bad(text: "[firmware]\nmeasure_modes = \"sev\"", message: "profile test.toml, line 2: 'firmware.measure_modes' must be an array of strings, not a string"),
        Bad(text: "[firmware]\nvcpus = [1, 1]", message: "profile test.toml, line 2: 'firmware.vcpus' lists 1 twice"),
        Bad(text: "[firmware]\nvcpus = [0]", message: "profile test.toml, line 2: 'firmware.vcpus' must be between 1 and 512, not 0"),
        Bad(text: "[firmware]\nvcpus = [1, \"2\"]", message: "profile test.toml, line 2: 'firmware.vcpus' must be an array of integers, not an array holding a string"),
        Bad(text: "[firmware]\nvcpu_type = \"EPYC v4\"", message: "profile test.toml, line 2: 'firmware.vcpu_type' must be a QEMU cpu model name such as EPYC-v4 (letters, digits, '.', '_', '-')"),
        Bad(text: "[boot]\ngrub_timeout = -1", message: "profile test.toml, line 2: 'boot.grub_timeout' must be between 0 and 3600, not -1"),
        Bad(text: "[boot]\nkernel_cmdline = \"quiet\\nsingle\"", message: "profile test.toml, line 2: 'boot.kernel_cmdline' must be one line without control characters"),
        Bad(text: "extends = 3", message: "profile test.toml, line 1: 'extends' must be the name or path of another profile, not an integer"),
        Bad(text: "extends = \"nonexistent\"", message: "no profile named 'nonexistent' (looked in the built-in profiles); give a path to a .toml file or run 'sevimage profiles list'"),
        Bad(text: "[luks]\npbkdf2_iterations = 1.5", message: "profile test.toml, line 2: floating-point numbers like '1.5' are not supported; use a whole number"),
    ])
    func refuses(_ bad: Bad) {
        #expect(message(bad.text) == bad.message)
    }

    @Test func directoryProfilesExtendAndCycle() throws {
        let scratch = try Scratch()
        let environment = [Profile.directoryVariable: scratch.path]
        try "# mine\nextends = \"pipeline\"\n[image]\nsize = \"2G\"\n".write(toFile: scratch.file("mine.toml"), atomically: true, encoding: .utf8)
        // A directory default.toml that extends "default" means the built-in one and shadows it.
        try "extends = \"default\"\n[boot]\ngrub_timeout = 3\n".write(toFile: scratch.file("default.toml"), atomically: true, encoding: .utf8)
        let mine = try Profile.resolve(nameOrPath: "mine", environment: environment)
        #expect(mine.profile.diskSize == 2 << 30 && mine.profile.json && mine.profile.grubTimeout == 3)
        #expect(mine.chain == [scratch.file("mine.toml"), "pipeline.toml", scratch.file("default.toml"), "default.toml"])
        let names = Profile.available(environment: environment).map { "\($0.name) \($0.isBuiltIn)" }
        #expect(names == ["default false", "mine false", "pipeline true", "sev-es true", "sev-snp true", "recovery true"])

        try "extends = \"b\"\n".write(toFile: scratch.file("a.toml"), atomically: true, encoding: .utf8)
        try "extends = \"./a.toml\"\n".write(toFile: scratch.file("b.toml"), atomically: true, encoding: .utf8)
        #expect(throws: ProfileError.self) { try Profile.load(nameOrPath: "a", environment: environment) }
        do {
            _ = try Profile.load(nameOrPath: scratch.file("a.toml"), environment: environment)
        } catch {
            #expect(error.description == "profile \(scratch.file("a.toml")) extends itself: \(scratch.file("a.toml")) -> \(scratch.file("b.toml")) -> \(scratch.path)/./a.toml")
        }
    }

    @Test func command() throws {
        let list = try sevimage(["profiles", "list"], environment: [Profile.directoryVariable: ""])
        #expect(list.status == 0, "\(list)")
        #expect(list.stdout.split(separator: "\n").map { $0.split(separator: " ").first.map(String.init) ?? "" }
                == ["default", "pipeline", "sev-es", "sev-snp", "recovery"])
        let show = try sevimage(["profiles", "show", "pipeline"])
        #expect(show.status == 0 && show.stdout.contains("json = true") && show.stdout.contains("size = \"8G\""), "\(show)")
        let json = try sevimage(["profiles", "show", "sev-snp", "--json"])
        let object = try #require(try JSONSerialization.jsonObject(with: json.stdoutData) as? [String: Any])
        #expect((object["image"] as? [String: Any])?["size"] as? Int == 8 << 30)
        #expect((object["firmware"] as? [String: Any])?["measure_modes"] as? [String] == ["sev-snp"])

        let scratch = try Scratch()
        try "[luks]\niteration = 5\n".write(toFile: scratch.file("bad.toml"), atomically: true, encoding: .utf8)
        let bad = try sevimage(["profiles", "show", scratch.file("bad.toml")])
        #expect(bad.status == ExitStatus.invalidInput.rawValue && bad.stdout.isEmpty)
        #expect(bad.stderr == "sevimage: error: profile \(scratch.file("bad.toml")), line 2: unknown key 'luks.iteration' (did you mean 'luks.pbkdf2_iterations'?)\n")
        let missing = try sevimage(["profiles", "show", scratch.file("none.toml")])
        #expect(missing.status == ExitStatus.invalidInput.rawValue)
        #expect(missing.stderr == "sevimage: error: cannot read profile \(scratch.file("none.toml")): no such file or directory\n")
    }
}
