import Foundation
import Testing
@testable import SEVImageKit

/// What Python's tomllib makes of files, through `Tests/Oracles/profile_toml.py`.
enum TOMLOracle {
    /// Per file: the values by key path (as `TOMLEntry.qualifiedKey` spells it), or nil where tomllib refuses
    /// the text, with its line.
    struct Reading {
        var entries: [String: TOMLValue]?
        var line: Int
    }

    static func flatten(_ paths: [String]) throws -> [Reading] {
        let result = try runProgram(python3, [repositoryRoot.path + "/Tests/Oracles/profile_toml.py", "flatten"] + paths)
        guard result.status == 0,
              let files = try JSONSerialization.jsonObject(with: result.stdoutData) as? [[String: Any]] else {
            throw OracleFailure(result.description)
        }
        return try files.map { file in
            guard file["ok"] as? Bool == true else { return Reading(entries: nil, line: file["line"] as? Int ?? 0) }
            let entries = try (file["entries"] as? [String: Any] ?? [:]).mapValues(value)
            return Reading(entries: entries, line: 0)
        }
    }

    /// The oracle's `{"integer": 1}` shapes as TOMLValue.
    static func value(_ object: Any) throws -> TOMLValue {
        guard let tagged = object as? [String: Any], tagged.count == 1, let (type, inner) = tagged.first else {
            throw OracleFailure("untagged value \(object)")
        }
        switch type {
        case "string": if let text = inner as? String { return .string(text) }
        case "integer": if let number = inner as? NSNumber { return .integer(number.int64Value) }
        case "boolean": if let flag = inner as? Bool { return .boolean(flag) }
        case "float": if let text = inner as? String, let number = Double(text) { return .float(number) }
        case "date": if let text = inner as? String { return .date(text) }
        case "time": if let text = inner as? String { return .time(text) }
        case "dateTime": if let text = inner as? String { return .dateTime(text) }
        case "array": if let values = inner as? [Any] { return .array(try values.map(value)) }
        case "table": if let members = inner as? [String: Any] { return .table(try members.mapValues(value)) }
        default: break
        }
        throw OracleFailure("unreadable value \(object)")
    }

    /// The profile a file resolves to, as `sevimage profiles show --json` lays it out (no name, no chain).
    static func resolve(_ path: String) throws -> NSDictionary {
        let result = try runProgram(python3, [repositoryRoot.path + "/Tests/Oracles/profile_toml.py", "resolve", path])
        guard result.status == 0, let object = try JSONSerialization.jsonObject(with: result.stdoutData) as? NSDictionary else {
            throw OracleFailure(result.description)
        }
        return object
    }

    struct OracleFailure: Error, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }
}

/// A document's entries by key path, with the `[table]` headers that hold no key as empty tables (tomllib
/// gives those as `{}` values; a header inside an array of tables is part of that array's value).
func flatEntries(_ document: TOMLDocument) -> [String: TOMLValue] {
    var result: [String: TOMLValue] = [:]
    for entry in document.entries { result[entry.qualifiedKey] = entry.value }
    for table in document.tables {
        let holdsKeys = document.entries.contains { $0.qualifiedKey.hasPrefix(table.name + ".") }
        let inArray = document.entries.contains { table.name.hasPrefix($0.qualifiedKey + ".") }
        if !holdsKeys && !inArray { result[table.name] = .table([:]) }
    }
    return result
}

@Suite("Profiles in full TOML")
struct ProfileFullTOMLTests {
    /// TOML 1.0 beyond what profiles use, each line numbered in a comment.
    static let richDocument = #"""
    # 1
    title = "caf\u00e9 \U0001F600 tab\there \"q\" \\ é"   # 2
    'literal key' = 'C:\no\escapes'                      # 3
    "dotted.quoted"."ké\u0079" = 1                        # 4
    hex = 0xDEAD_beef                                     # 5
    oct = 0o755                                           # 6
    bin = 0b1101                                          # 7
    big = -9_223_372_036_854_775_808                      # 8
    floats = [1.5, -0.0, 6.02e23, 1e-5, inf, -inf]       # 9
    multi = """
    first \
        second
    third"""                                              # 13
    raw = '''
    [not.a.header]
    x = 1'''                                              # 16
    when = 1979-05-27T07:32:00.5-07:30                    # 17
    local = 1979-05-27 07:32:00                           # 18
    day = 1979-05-27                                      # 19
    clock = 07:32:00.25                                   # 20
    mixed = [1, "two", [3], { four = 4 }]                 # 21
    empty = {}                                            # 22
    point = { x = 1, y.z = "deep", "q k" = [ ] }          # 23
    [server]                                              # 24
    host = "a = b # not a comment"                        # 25
    [server.tls]                                          # 26
    on = true                                             # 27
    [[fruit]]                                             # 28
    name = "apple"                                        # 29
    [fruit.colour]                                        # 30
    main = "red"                                          # 31
    [[fruit]]                                             # 32
    name = "pear"                                         # 33
    [empty-header]                                        # 34
    """#

    @Test func readsTOMLAsTomllibDoes() throws {
        let scratch = try Scratch()
        try Self.richDocument.write(toFile: scratch.file("rich.toml"), atomically: true, encoding: .utf8)
        let document = try TOMLReader.parse(Self.richDocument)
        let oracle = try #require(try TOMLOracle.flatten([scratch.file("rich.toml")]).first?.entries)
        let ours = flatEntries(document)
        #expect(Set(ours.keys) == Set(oracle.keys))
        for (key, value) in oracle {
            #expect(ours[key] == value, "\(key)")
        }
        // A few by hand, so that a bug shared by both readers would still show.
        #expect(ours["title"] == .string("café 😀 tab\there \"q\" \\ é"))
        #expect(ours["\"literal key\""] == .string("C:\\no\\escapes"))
        #expect(ours["\"dotted.quoted\".\"kéy\""] == .integer(1))
        #expect(ours["hex"] == .integer(0xdead_beef) && ours["oct"] == .integer(0o755) && ours["bin"] == .integer(13))
        #expect(ours["multi"] == .string("first second\nthird"))
        #expect(ours["raw"] == .string("[not.a.header]\nx = 1"))
        #expect(ours["when"] == .dateTime("1979-05-27T07:32:00.5-07:30"))
        #expect(ours["point.y.z"] == .string("deep"))
        #expect(ours["fruit"] == .array([.table(["name": .string("apple"), "colour": .table(["main": .string("red")])]),
                                         .table(["name": .string("pear")])]))
    }

    @Test func everyKeyHasItsLine() throws {
        let document = try TOMLReader.parse(Self.richDocument)
        var lines: [String: Int] = [:]
        for entry in document.entries { lines[entry.qualifiedKey] = entry.line }
        #expect(lines == [
            "title": 2, "\"literal key\"": 3, "\"dotted.quoted\".\"kéy\"": 4, "hex": 5, "oct": 6, "bin": 7, "big": 8,
            "floats": 9, "multi": 10, "raw": 14, "when": 17, "local": 18, "day": 19, "clock": 20, "mixed": 21,
            "empty": 22, "point.x": 23, "point.y.z": 23, "point.\"q k\"": 23, "server.host": 25, "server.tls.on": 27,
            "fruit": 28,
        ])
        // In the order the keys appear, not toml++'s (sorted) order.
        #expect(document.entries.map(\.qualifiedKey).prefix(3) == ["title", "\"literal key\"", "\"dotted.quoted\".\"kéy\""])
        #expect(document.tables == [TOMLTable(name: "server", line: 24), TOMLTable(name: "server.tls", line: 26),
                                    TOMLTable(name: "fruit.colour", line: 30), TOMLTable(name: "empty-header", line: 34)])
    }

    // MARK: - Profiles

    func resolve(_ text: String) throws -> Profile {
        try Profile.resolve(text: text, displayName: "test.toml", environment: [:]).profile
    }

    func message(_ text: String) -> String? {
        do {
            _ = try Profile.resolve(text: text, displayName: "test.toml", environment: [:])
            return nil
        } catch {
            return error.description
        }
    }

    /// The same settings in every spelling TOML has for tables.
    static let spellings: [String: String] = [
        "headers": """
        [image]
        size = "4G"
        [esp]
        size = "128M"
        [boot]
        kernel_cmdline = "console=ttyS0 café"
        grub_timeout = 5
        [firmware]
        measure_modes = ["sev", "sev-snp"]
        vcpus = [2, 4]
        [output]
        json = true
        """,
        "dotted": """
        image.size = "4G"
        esp.size = "128M"
        boot.kernel_cmdline = "console=ttyS0 caf\\u00e9"
        boot.grub_timeout = 0x5
        firmware.measure_modes = ['sev', 'sev-snp']
        firmware.vcpus = [ 2, 4, ]
        output.json = true
        """,
        "inline": """
        image = { size = "4G" }
        esp = { size = "128M" }
        boot = { kernel_cmdline = '''console=ttyS0 café''', grub_timeout = 5 }
        firmware = { measure_modes = ["sev", "sev-snp"], vcpus = [2, 4] }
        output = { json = true }
        """,
        "mixed": """
        image.size = "4G"
        esp = { size = "128M" }
        [boot]
        kernel_cmdline = \"\"\"
        console=ttyS0 \\
          café\"\"\"
        "grub_timeout" = 5
        [firmware]
        measure_modes = [
          "sev",   # the old one
          "sev-snp",
        ]
        vcpus = [2, 4]
        [output]
        json = true
        """,
    ]

    @Test func everyTableSpellingGivesTheSameProfile() throws {
        let expected = try resolve(Self.spellings["headers"] ?? "")
        #expect(expected.diskSize == 4 << 30 && expected.espSize == 128 << 20 && expected.grubTimeout == 5)
        #expect(expected.kernelCommandLine == "console=ttyS0 café" && expected.vcpus == [2, 4] && expected.json)
        for (name, text) in Self.spellings.sorted(by: { $0.key < $1.key }) {
            #expect(try resolve(text) == expected, "\(name)")
        }
    }

    /// `profiles show --json` of each spelling, of the built-in profiles and of a chain of files equals what
    /// tomllib reads in the same files, and so does `profiles show`'s TOML read back by tomllib.
    @Test func profilesShowAgreesWithTomllib() throws {
        let scratch = try Scratch()
        var paths: [String] = []
        for (name, text) in Self.spellings {
            try text.write(toFile: scratch.file(name + ".toml"), atomically: true, encoding: .utf8)
            paths.append(scratch.file(name + ".toml"))
        }
        try "extends = \"mixed.toml\"\nluks = { recovery_pbkdf2_iterations = 2_000_000 }\nrecovery.keyslot = true\n"
            .write(toFile: scratch.file("child.toml"), atomically: true, encoding: .utf8)
        try "extends = \"sev-es\"\n[firmware]\nvcpus = 8\nvcpu_type = \"EPYC-Milan\"\n"
            .write(toFile: scratch.file("builtin-child.toml"), atomically: true, encoding: .utf8)
        paths += [scratch.file("child.toml"), scratch.file("builtin-child.toml")]
        paths += Profile.builtInProfileNames.map { repositoryRoot.path + "/profiles/\($0).toml" }
        for path in paths {
            let show = try sevimage(["profiles", "show", path, "--json"])
            #expect(show.status == 0, "\(show)")
            let shown = try #require(try JSONSerialization.jsonObject(with: show.stdoutData) as? [String: Any])
            let values = NSDictionary(dictionary: shown.filter { $0.key != "name" && $0.key != "chain" })
            #expect(values == (try TOMLOracle.resolve(path)), "\(path)")

            // The TOML `profiles show` prints, read by tomllib, is the same profile again.
            let text = try sevimage(["profiles", "show", path])
            let rendered = scratch.file("rendered.toml")
            try text.stdout.write(toFile: rendered, atomically: true, encoding: .utf8)
            #expect(values == (try TOMLOracle.resolve(rendered)), "\(path) rendered")
        }
    }

    struct Bad: Sendable, CustomStringConvertible {
        var text: String
        var message: String
        var description: String { message }
    }

    @Test(arguments: [
        // Unknown keys, however spelled, with the line of the key and a did-you-mean.
        Bad(text: "[image]\nsize = \"8G\"\nluks.iteration = 5", message: "profile test.toml, line 3: unknown key 'image.luks.iteration' (did you mean 'luks.pbkdf2_iterations'?)"),
        Bad(text: "# a comment\n\nluks.iteration = 5", message: "profile test.toml, line 3: unknown key 'luks.iteration' (did you mean 'luks.pbkdf2_iterations'?)"),
        Bad(text: "image.size = \"8G\"\nimag.size = \"8G\"", message: "profile test.toml, line 2: unknown key 'imag.size' (did you mean 'image.size'?)"),
        Bad(text: "extends = \"default\"\noutput = { json = true, jsno = true }", message: "profile test.toml, line 2: unknown key 'output.jsno' (did you mean 'output.json'?)"),
        Bad(text: "\"image.size\" = \"4G\"", message: "profile test.toml, line 1: unknown key '\"image.size\"' (did you mean 'image.size'?)"),
        Bad(text: "[boot.extra]\nx = 1", message: "profile test.toml, line 1: unknown table [boot.extra]"),
        // Wrong types, naming the key and what it takes.
        Bad(text: "luks = { pbkdf2_iterations = \"1000\" }", message: "profile test.toml, line 1: 'luks.pbkdf2_iterations' must be an integer, not a string"),
        Bad(text: "\n\nfirmware.vcpus = [{ n = 1 }]", message: "profile test.toml, line 3: 'firmware.vcpus' must be an array of integers, not an array holding a table"),
        Bad(text: "output.json = 1979-05-27", message: "profile test.toml, line 1: 'output.json' must be true or false, not a date"),
        Bad(text: "[boot]\ngrub_timeout = 07:00:00", message: "profile test.toml, line 2: 'boot.grub_timeout' must be an integer, not a time"),
        Bad(text: "image = \"8G\"", message: "profile test.toml, line 1: 'image' must be a table, not a string"),
        Bad(text: "[[image]]\nsize = \"8G\"", message: "profile test.toml, line 1: 'image' must be a table, not an array"),
        Bad(text: "[image.size]\nbytes = 1", message: "profile test.toml, line 1: 'image.size' must be a size such as \"8G\" or a number of bytes, not a table"),
        Bad(text: "boot.grub_timeout.seconds = 5", message: "profile test.toml, line 1: 'boot.grub_timeout' must be an integer, not a table"),
        Bad(text: "extends = {}", message: "profile test.toml, line 1: 'extends' must be the name or path of another profile, not a table"),
        Bad(text: "[luks]\npbkdf2_iterations = 1e3", message: "profile test.toml, line 2: floating-point numbers like '1000.0' are not supported; use a whole number"),
        Bad(text: "firmware.vcpus = [1, 2.5]", message: "profile test.toml, line 1: floating-point numbers like '2.5' are not supported; use a whole number"),
        Bad(text: "image.size = inf", message: "profile test.toml, line 1: floating-point numbers like 'inf' are not supported; use a whole number"),
        // Values: the checks of the old reader hold in every spelling.
        Bad(text: "boot = { kernel_cmdline = \"\"\"quiet\nsingle\"\"\" }", message: "profile test.toml, line 1: 'boot.kernel_cmdline' must be one line without control characters"),
        Bad(text: "image = { size = \"100M\" }\nesp.size = \"64M\"",
            message: "profile test.toml, line 1: 'image.size' leaves no room for the root: the disk (100M) must be at least the ESP (64M) plus 64M"),
        // Syntax, from toml++ with its line and column; duplicates in every spelling.
        Bad(text: "[image]\nsize = \"4G", message: "profile test.toml, line 2, column 11: error while parsing string: encountered end-of-file"),
        Bad(text: "[image]\nsize = \"4G\"\nsize = \"8G\"", message: "profile test.toml, line 3, column 8: error while parsing key-value pair: cannot redefine existing string 'size'"),
        Bad(text: "image.size = \"4G\"\n[image]\nsize = \"8G\"", message: "profile test.toml, line 2, column 1: error while parsing table header: cannot redefine existing table 'image'"),
        Bad(text: "image = { size = \"4G\" }\nimage.size = \"8G\"", message: "profile test.toml, line 2, column 1: error while parsing key-value pair: cannot redefine existing table as dotted key-value pair"),
        Bad(text: "[esp]\n[esp]", message: "profile test.toml, line 2, column 1: error while parsing table header: cannot redefine existing table 'esp'"),
        Bad(text: "boot = { grub_timeout = 5, grub_timeout = 6 }", message: "profile test.toml, line 1, column 43: error while parsing key-value pair: cannot redefine existing integer 'grub_timeout'"),
        // sevimage's own refusals, before toml++.
        Bad(text: "[boot]\nkernel_cmdline = \"quiet\\u0000 single\"", message: "profile test.toml, line 2, column 24: a \\u0000 escape: profiles take no nul characters (tomlkit would cut the string there)"),
        Bad(text: "[\nimage]", message: "profile test.toml, line 1, column 2: expected a table name after '[', found the end of the line"),
        Bad(text: "firmware.vcpus = [1,\n}", message: "profile test.toml, line 2, column 1: expected a value or ']' in an array, found '}'"),
        Bad(text: "x = 1979-05-27T'07:00'", message: "profile test.toml, line 1, column 5: a date and time needs its time as HH:MM:SS after the date"),
    ])
    func refuses(_ bad: Bad) {
        #expect(message(bad.text) == bad.message)
    }

    /// Every text refused above as a syntax error is refused by tomllib too, on the same line: sevimage's own
    /// checks before toml++ refuse no valid TOML.
    @Test func syntaxErrorsAreTomllibsToo() throws {
        let scratch = try Scratch()
        let texts: [(text: String, line: Int)] = [
            ("[image]\nsize = \"4G", 2), ("[image]\nsize = \"4G\"\nsize = \"8G\"", 3), ("image.size = \"4G\"\n[image]\nsize = \"8G\"", 2),
            ("image = { size = \"4G\" }\nimage.size = \"8G\"", 2), ("[esp]\n[esp]", 2), ("boot = { grub_timeout = 5, grub_timeout = 6 }", 1),
            ("[\nimage]", 1), ("[ #\nimage]", 1), ("[[\nimage]]", 1), ("[[=", 1), ("firmware.vcpus = [1,\n}", 2), ("a = [}", 1), ("a = { b = [ } ]", 1),
            ("x = 1979-05-27T'07:00'", 1), ("x = [1979-05-27 0]", 1), ("x = 1979-05-'e 7", 1), ("x = 1979-05-27 7}", 1),
        ]
        for (index, sample) in texts.enumerated() {
            try sample.text.write(toFile: scratch.file("\(index).toml"), atomically: true, encoding: .utf8)
        }
        let readings = try TOMLOracle.flatten(texts.indices.map { scratch.file("\($0).toml") })
        for (sample, reading) in zip(texts, readings) {
            #expect(reading.entries == nil, "tomllib reads \(sample.text)")
            #expect(throws: TOMLSyntaxError.self, "\(sample.text)") { try TOMLReader.parse(sample.text) }
            do {
                _ = try TOMLReader.parse(sample.text)
            } catch {
                #expect(error.line == sample.line, "\(sample.text): \(error)")
            }
        }
    }

    /// Valid TOML next to what the checks before toml++ look for: read, and as tomllib reads it.
    @Test func nearMissesAreRead() throws {
        let texts = [
            "[ \"a b\" ]\nx = 1", "[ 'a' . b ]\nx = 1", "[[ x ]]\n[[x]]", "a = [ ]", "a = [ {} ]", "a = [{ b = 1 }, { c = [ ] }]",
            "a = [\n  # }\n  1,\n]", "a = \"\"\"\n[\nx]\n}\"\"\"", "a = '''\n[\n'''", "d = 1979-05-27T07:32:00", "d = 1979-05-27t07:32:00Z",
            "d = 1979-05-27 07:32:00", "d = [1979-05-27 07:32:00, 1979-05-27]", "d = { e = 1979-05-27 07:32:00 }", "s = \"1979-05-27T'\"",
            "d = 1979-05-27 # a date", "a = \"\\u0001 \\U0010FFFF \\\\u0000\"", "\"\\u00e9\" = 1", "a.\"[\" = { \"}\" = \"]\" }",
        ]
        let scratch = try Scratch()
        for (index, text) in texts.enumerated() {
            try text.write(toFile: scratch.file("\(index).toml"), atomically: true, encoding: .utf8)
        }
        let readings = try TOMLOracle.flatten(texts.indices.map { scratch.file("\($0).toml") })
        for (text, reading) in zip(texts, readings) {
            let oracle = try #require(reading.entries, "tomllib refuses \(text)")
            let document = try TOMLReader.parse(text)
            #expect(flatEntries(document) == oracle, "\(text)")
        }
    }

    /// Quote runs that end multi-line strings, and escaped quotes inside them: the keys after keep their lines.
    @Test func linesAfterQuoteRuns() throws {
        let text = #"""
        a = """x"""""
        b = '''y''''
        c = """\""""
        d = """ "" \"\"\" """
        e = '''
        '''
        f = [
          """
        ]""",
        ]
        g = 1
        """#
        let scratch = try Scratch()
        try text.write(toFile: scratch.file("q.toml"), atomically: true, encoding: .utf8)
        let document = try TOMLReader.parse(text)
        #expect(document.entries.map(\.key) == ["a", "b", "c", "d", "e", "f", "g"])
        #expect(document.entries.map(\.line) == [1, 2, 3, 4, 5, 7, 11])
        #expect(flatEntries(document) == (try TOMLOracle.flatten([scratch.file("q.toml")]).first?.entries))
        #expect(flatEntries(document)["a"] == .string("x\"\"") && flatEntries(document)["c"] == .string("\""))
    }

    /// Nesting is bounded before toml++ (which allows arrays 256 deep) and before any recursion of sevimage's.
    @Test func nestingIsBounded() throws {
        let deepest = "a = " + String(repeating: "[", count: 64) + "1" + String(repeating: "]", count: 64)
        #expect(try TOMLReader.parse(deepest).entries.count == 1)
        #expect(throws: TOMLSyntaxError(line: 2, message: "arrays nest more than 64 levels deep")) {
            try TOMLReader.parse("\na = " + String(repeating: "[", count: 65) + String(repeating: "]", count: 65))
        }
        let path = Array(repeating: "k", count: 64).joined(separator: ".")
        #expect(try TOMLReader.parse("\(path) = 1").entries.first?.line == 1)
        #expect(throws: TOMLSyntaxError(line: 1, message: "keys nest more than 64 tables deep")) { try TOMLReader.parse("k.\(path) = 1") }
        #expect(throws: TOMLSyntaxError(line: 3, message: "keys nest more than 64 tables deep")) { try TOMLReader.parse("\n\n[k.\(path)]") }
        #expect(throws: TOMLSyntaxError(line: 1, message: "keys nest more than 64 tables deep")) {
            try TOMLReader.parse("a = " + String(repeating: "{ b = ", count: 70) + "1" + String(repeating: " }", count: 70))
        }
        #expect(throws: TOMLSyntaxError(line: 1, message: "arrays nest more than 64 levels deep")) {
            try TOMLReader.parse("a = " + String(repeating: "[{ b = ", count: 40) + "1" + String(repeating: " }]", count: 40))
        }
        // A profile-sized file (1 MiB) of the worst of each is refused or read at once.
        let start = Date()
        for text in ["a = " + String(repeating: "[", count: 1 << 20), "[" + String(repeating: "a.", count: 1 << 19) + "a]",
                     "a = \"" + String(repeating: "\\n", count: 1 << 19) + "\"", (0..<100_000).map { "k\($0) = \($0)" }.joined(separator: "\n")] {
            _ = try? TOMLReader.parse(text)
        }
        #expect(Date().timeIntervalSince(start) < 30)
    }

    @Test func aNulByteIsRefusedWithItsPosition() {
        #expect(throws: TOMLSyntaxError(line: 2, column: 7, message: "a nul byte (0x00), which toml does not allow")) {
            try TOMLReader.parse(Array("a = 1\nb = \"é".utf8) + [0] + Array("\"".utf8))
        }
    }

    /// Mutated full-TOML documents through the reader and the profile mapping, in the debug build where
    /// toml++'s own assertions are live: an input that reached one would stop the test process.
    @Test func mutatedFullTOMLNeverTraps() {
        var generator = ProfileFuzzTests.Generator(state: 0x70_4D4C_6B17_0018)
        let seeds = ([Self.richDocument] + Self.spellings.values.sorted()
            + ["[\nx]", "a = [}", "d = 1979-05-27T07:32:00", "d = [1979-05-27 07:32:00]", "a = [[1], {b = [2]}]"]).map { Array($0.utf8) }
        let alphabet = Array("[]{}=\"'#\\.,_-+:0123456789TZeftruxn \t\n\r".utf8) + [0x00, 0x7f, 0xc3, 0xa9, 0xff, 0xef, 0xbb, 0xbf]
        var accepted = 0, refused = 0
        for _ in 0..<20_000 {
            var input = seeds.randomElement(using: &generator) ?? []
            ProfileFuzzTests.mutate(&input, alphabet: alphabet, using: &generator) { alphabet.randomElement(using: &$0) ?? 0 }
            do {
                try ProfileFuzzTests.readProfile(input)
                accepted += 1
            } catch {
                #expect(!"\(error)".contains { $0.isNewline })
                refused += 1
            }
        }
        #expect(accepted > 100 && refused > 100)
    }
}
