import Foundation
import Testing
@testable import SEVImageKit

/// Debian's python3, the interpreter of libvirt-clients-qemu's `virt-qemu-sev-validate` (it needs lxml and the
/// libvirt bindings from Debian's packages; `python3` on PATH may be another one).
let systemPython: String = ProcessInfo.processInfo.environment["SEVIMAGE_SYSTEM_PYTHON"] ?? "/usr/bin/python3"
let sevValidator = "/usr/bin/virt-qemu-sev-validate"
/// Whether libvirt's validator and its Python modules are installed (libvirt-clients-qemu, python3-lxml, python3-cryptography).
let hasSEVValidator: Bool = FileManager.default.fileExists(atPath: sevValidator)
    && (try? runProgram(systemPython, ["-c", "import lxml, libvirt, cryptography"]).status) == 0
let sevValidateHarness = repositoryRoot.path + "/Tests/Oracles/sev_validate_harness.py"

/// `export libvirt`: the domain XML validates with libvirt's own schema (`virt-xml-validate`) and parses with
/// libvirt's own parser (the test driver, through python3-libvirt), and `Tests/Oracles/libvirt_domain.py`, which
/// reads it with Python's XML parser, finds nothing in it that differs from what the manifest expects.
@Suite("export libvirt", .serialized) struct ExportLibvirtTests {
    static let tools = hasTool("virt-xml-validate") && hasTool("qemu-img")

    struct Checked {
        var xml: String
        var domain: [String: Any]
        var problems: [String]
        var launchSecurity: [String: Any]? { domain["launchSecurity"] as? [String: Any] }
        var policy: UInt32? { (launchSecurity?["policy"] as? String).flatMap { UInt32($0.dropFirst(2), radix: 16) } }
    }

    /// Runs `export libvirt` into a file, validates it with virt-xml-validate and, where python3-libvirt is there,
    /// has libvirt's parser define it; returns the oracle's reading of the file and of libvirt's dump.
    func export(_ fixture: ExportFixture, _ arguments: [String], image: String? = nil, firmware: String? = nil,
                sourceLocation: SourceLocation = #_sourceLocation) throws -> Checked {
        let image = image ?? fixture.image
        let output = fixture.scratch.file("domain-\(UUID().uuidString).xml")
        let run = try sevimage(["export", "libvirt", image, "--output", output] + arguments)
        try #require(run.status == 0, "\(run)", sourceLocation: sourceLocation)
        #expect(run.stdout.isEmpty && run.stderr.contains("sevimage: wrote \(output)"), "\(run)", sourceLocation: sourceLocation)
        let validation = try runProgram("virt-xml-validate", [output, "domain"])
        #expect(validation.status == 0, "virt-xml-validate: \(validation)", sourceLocation: sourceLocation)
        let checked = try oracle(output, fixture: fixture, image: image, firmware: firmware)
        if hasSEVValidator {
            let defined = try runProgram(systemPython, [sevValidateHarness, "libvirt-define", output])
            #expect(defined.status == 0, "libvirt's parser: \(defined)", sourceLocation: sourceLocation)
            let dump = fixture.scratch.file("dump-\(UUID().uuidString).xml")
            try Data(defined.stdout.utf8).write(to: URL(fileURLWithPath: dump))
            let again = try oracle(dump, fixture: fixture, image: image, firmware: firmware)
            #expect(again.problems.isEmpty, "libvirt's own reading: \(again.problems)", sourceLocation: sourceLocation)
            #expect(again.domain["name"] as? String == checked.domain["name"] as? String, sourceLocation: sourceLocation)
        }
        return checked
    }

    func oracle(_ path: String, fixture: ExportFixture, image: String? = nil, firmware: String? = nil) throws -> Checked {
        var arguments = [repositoryRoot.path + "/Tests/Oracles/libvirt_domain.py", path, "--manifest", fixture.manifest,
                         "--image", image ?? fixture.image]
        if let firmware { arguments += ["--firmware", firmware] }
        let answer = try jsonObject(try runChecked(python3, arguments).stdoutData)
        return Checked(xml: try String(contentsOfFile: path, encoding: .utf8), domain: try #require(answer["domain"] as? [String: Any]),
                       problems: try #require(answer["problems"] as? [String]))
    }

    struct SEVCase: CustomStringConvertible, Sendable {
        var description: String
        var arguments: [String]
        var vcpuType = "EPYC-Milan"
        var policy: UInt32
        var vcpus: Int
        var cpuModel: String
        var cbitpos = "51"
        var reducedPhysBits = "1"
    }

    static let sevCases: [SEVCase] = [
        SEVCase(description: "defaults: SEV-ES, the first vCPU count", arguments: [], policy: 0x7, vcpus: 2, cpuModel: "EPYC-Milan"),
        SEVCase(description: "SEV-ES for 4 vCPUs", arguments: ["--vcpus", "4"], policy: 0x7, vcpus: 4, cpuModel: "EPYC-Milan"),
        SEVCase(description: "a versioned QEMU type", arguments: ["--vcpus", "4"], vcpuType: "EPYC-v4", policy: 0x7, vcpus: 4, cpuModel: "EPYC"),
        SEVCase(description: "plain SEV, any vCPU count", arguments: ["--policy", "0x3", "--vcpus", "3"], policy: 0x3, vcpus: 3, cpuModel: "EPYC-Milan"),
        SEVCase(description: "NOSEND in decimal, the host's C-bit", arguments: ["--policy", "15", "--cbitpos", "47", "--reduced-phys-bits", "5"],
                policy: 0xF, vcpus: 2, cpuModel: "EPYC-Milan", cbitpos: "47", reducedPhysBits: "5"),
    ]

    /// The SEV domain: the manifest's firmware as a read-only stateless pflash loader without NVRAM, the policy
    /// whose mode has a digest in the manifest, the digest's vCPU count and model, cbitpos and reducedPhysBits,
    /// the QCOW2 disk and every virtio device with iommu on, the metadata naming the digest.
    @Test(.enabled(if: tools, "needs virt-xml-validate (libvirt-clients, libxml2-utils) and qemu-img"), arguments: sevCases)
    func sevDomainIsWhatTheManifestExpects(_ item: SEVCase) throws {
        let fixture = try ExportFixture(modes: ["sev", "sev-es"], vcpus: [2, 4], vcpuType: item.vcpuType)
        let checked = try export(fixture, item.arguments, firmware: fixture.ovmf)
        #expect(checked.problems.isEmpty, "\(checked.problems)\n\(checked.xml)")
        #expect(checked.policy == item.policy)
        #expect(checked.launchSecurity?["type"] as? String == "sev")
        #expect(checked.launchSecurity?["cbitpos"] as? String == item.cbitpos && checked.launchSecurity?["reducedPhysBits"] as? String == item.reducedPhysBits)
        #expect(checked.domain["vcpus"] as? Int == item.vcpus)
        #expect(checked.domain["cpuModel"] as? String == item.cpuModel && checked.domain["cpuMode"] as? String == "custom")
        #expect(checked.domain["loader"] as? String == fixture.ovmf)
        #expect(checked.domain["memoryMiB"] as? Int == 2048 && checked.domain["type"] as? String == "kvm")
        let disks = try #require(checked.domain["disks"] as? [[String: Any]])
        #expect(disks.count == 1 && disks[0]["iommu"] as? String == "on" && disks[0]["bus"] as? String == "virtio")
        let manifest = try jsonObject(Data(contentsOf: URL(fileURLWithPath: fixture.manifest)))
        let firmware = try #require(manifest["firmware"] as? [String: Any])
        #expect((checked.domain["metadata"] as? [String: Any])?["firmware-sha256"] as? String == (try coreutilsDigest("sha256sum", fixture.ovmf)))
        #expect(firmware["sha256"] as? String == (try coreutilsDigest("sha256sum", fixture.ovmf)))
    }

    /// The oracle is not a rubber stamp: the same domain with one value changed the way a wrong export would
    /// (another vCPU count, policy, firmware, model, a virtio device without iommu) has that problem named.
    @Test(.enabled(if: tools, "needs virt-xml-validate and qemu-img"))
    func oracleNamesEveryWrongValue() throws {
        let fixture = try ExportFixture(modes: ["sev", "sev-es"], vcpus: [2, 4], vcpuType: "EPYC-v4")
        let right = try export(fixture, [])
        #expect(right.problems.isEmpty, "\(right.problems)")
        let other = fixture.scratch.file("other.fd")
        try SyntheticOVMF(seed: 9).write(to: other)
        let edits: [(String, String, String)] = [
            ("<vcpu placement='static'>2</vcpu>", "<vcpu placement='static'>3</vcpu>", "no sev-es launch digest for 3 vCPUs"),
            ("<policy>0x0007</policy>", "<policy>0x0005</policy>", "does not set NODBG and NOKS"),
            ("<model fallback='forbid'>EPYC</model>", "<model fallback='forbid'>EPYC-Rome</model>", "cpu model EPYC-Rome"),
            (">\(fixture.ovmf)</loader>", ">\(other)</loader>", "SHA-256 is not the manifest's"),
            ("<driver name='qemu' type='qcow2' iommu='on'/>", "<driver name='qemu' type='qcow2'/>", "without iommu='on': disk"),
            (" stateless='yes'", "", "not a read-only stateless pflash"),
        ]
        for (from, to, problem) in edits {
            #expect(right.xml.contains(from), "\(from)")
            let path = fixture.scratch.file("edited.xml")
            try Data(right.xml.replacingOccurrences(of: from, with: to).utf8).write(to: URL(fileURLWithPath: path))
            let edited = try oracle(path, fixture: fixture)
            #expect(edited.problems.contains { $0.contains(problem) }, "\(to): \(edited.problems)")
        }
    }

    /// The launch session and the QMP socket: `--dh-cert` and `--session` land in launchSecurity, which the
    /// validator's own domain check then accepts (it refuses the domain without them); `--qmp-socket` adds QEMU's
    /// -qmp with the path's comma doubled.
    @Test(.enabled(if: tools && hasSEVValidator, "needs virt-xml-validate and libvirt-clients-qemu's virt-qemu-sev-validate"))
    func launchSessionAndQMPSocketSatisfyTheValidatorsDomainCheck() throws {
        let fixture = try ExportFixture(modes: ["sev"])
        let godh = fixture.scratch.file("vm_godh.b64"), session = fixture.scratch.file("vm_session.b64")
        let godhText = Data(try randomBytes(600)).base64EncodedString(), sessionText = Data(try randomBytes(180)).base64EncodedString()
        try Data((godhText + "\n").utf8).write(to: URL(fileURLWithPath: godh))
        try Data(sessionText.utf8).write(to: URL(fileURLWithPath: session))
        let checked = try export(fixture, ["--dh-cert", godh, "--session", session, "--qmp-socket", "/run/sev,vm.qmp"])
        #expect(checked.problems.isEmpty, "\(checked.problems)")
        #expect(checked.launchSecurity?["dhCert"] as? String == godhText && checked.launchSecurity?["session"] as? String == sessionText)
        #expect(checked.domain["qemuArgs"] as? [String] == ["-qmp", "unix:/run/sev,,vm.qmp,server=on,wait=off"])
        let path = fixture.scratch.file("with-session.xml")
        try Data(checked.xml.utf8).write(to: URL(fileURLWithPath: path))
        let accepted = try runProgram(systemPython, [sevValidateHarness, "check-domain", path])
        #expect(accepted.status == 0 && accepted.stdout == "ok\n", "\(accepted)")

        let bare = try export(fixture, [])
        let barePath = fixture.scratch.file("bare.xml")
        try Data(bare.xml.utf8).write(to: URL(fileURLWithPath: barePath))
        let refused = try runProgram(systemPython, [sevValidateHarness, "check-domain", barePath])
        #expect(refused.status == 1 && refused.stdout.contains("SEV owner cert"), "\(refused)")
    }

    /// The laptop's domain: Debian's OVMF code with its variables template (or the files given), no launch
    /// security, the same disk and serial console.
    @Test(.enabled(if: tools && FileManager.default.fileExists(atPath: BootOptions.debianFirmwareCode), "needs virt-xml-validate and Debian's ovmf"))
    func standardDomainBootsDebiansOVMF() throws {
        let fixture = try ExportFixture(modes: ["sev"])
        let standard = try export(fixture, ["--standard", "--vcpus", "2", "--memory", "1536M"])
        #expect(standard.problems.isEmpty, "\(standard.problems)")
        #expect(standard.launchSecurity == nil)
        #expect(standard.domain["loader"] as? String == BootOptions.debianFirmwareCode && standard.domain["stateless"] is NSNull)
        #expect(standard.domain["nvramTemplate"] as? String == BootOptions.debianFirmwareVariables)
        #expect(standard.domain["vcpus"] as? Int == 2 && standard.domain["memoryMiB"] as? Int == 1536)
        #expect(standard.domain["metadata"] is NSNull)

        let code = fixture.scratch.file("code.fd"), variables = fixture.scratch.file("vars.fd")
        try FileManager.default.copyItem(atPath: BootOptions.debianFirmwareCode, toPath: code)
        try FileManager.default.copyItem(atPath: BootOptions.debianFirmwareVariables, toPath: variables)
        let given = try export(fixture, ["--standard", "--ovmf", code, "--nvram-template", variables])
        #expect(given.domain["loader"] as? String == code && given.domain["nvramTemplate"] as? String == variables)
    }

    static let hostileNames = ["a<b&'c\"", "]]>", "&amp;", "x&#10;y", "<!-- -->", "'; rm -rf ~", "名前 ☃", "<memory unit='T'>9<"]

    /// Names and paths from users are escaped: each hostile name (markup, entities, quotes, CDATA's end) comes back exactly from
    /// Python's parser and libvirt's, in both variants, and so does an image path full of markup characters.
    @Test(.enabled(if: tools, "needs virt-xml-validate and qemu-img"))
    func hostileNamesAndPathsAreEscaped() throws {
        let fixture = try ExportFixture(modes: ["sev", "sev-es"], vcpus: [1])
        for name in Self.hostileNames {
            for variant in [[], ["--standard"]] {
                let checked = try export(fixture, variant + ["--name", name])
                #expect(checked.domain["name"] as? String == name, "\(variant)")
                #expect(checked.problems.isEmpty, "\(name): \(checked.problems)")
            }
        }
        let directory = fixture.scratch.file("d'<&>\" x")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        let image = directory + "/vm.qcow2"
        try FileManager.default.copyItem(atPath: fixture.image, toPath: image)
        let checked = try export(fixture, ["--manifest", fixture.manifest], image: image)
        #expect((checked.domain["disks"] as? [[String: Any]])?.first?["file"] as? String == image)
        #expect(checked.domain["name"] as? String == "vm")
    }

    /// The element builder escapes what XML would read as markup (and what attribute-value normalization would
    /// turn into spaces), and refuses what XML 1.0 cannot carry at all, even as a character reference.
    @Test func markupElementEscapesAndRefuses() throws {
        let tree = MarkupElement("a", ["v": "x'\"<&>\t\n\r"], text: "]]> & <b>\r", children: [MarkupElement("c")])
        #expect(try tree.rendered() == "<a v='x&apos;&quot;&lt;&amp;&gt;&#9;&#10;&#13;'>]]&gt; &amp; &lt;b&gt;&#13;\n  <c/>\n</a>\n")
        for bad in ["\u{1}", "\u{1B}[0m", "\u{FFFE}", "\u{0}"] {
            #expect(throws: ExportError.self) { try MarkupElement("n", text: bad).rendered() }
            #expect(throws: ExportError.self) { try MarkupElement("n", ["v": bad]).rendered() }
        }
        #expect(try MarkupElement("n", text: "\u{10FFFF}\u{FFFD}\u{E000}").rendered() == "<n>\u{10FFFF}\u{FFFD}\u{E000}</n>\n")
    }

    /// stdout holds exactly the file's bytes; `--json` reports what was written; `--force` replaces.
    @Test(.enabled(if: tools, "needs virt-xml-validate and qemu-img"))
    func stdoutAndJSONSummary() throws {
        let fixture = try ExportFixture(modes: ["sev", "sev-es"], vcpus: [2])
        let stdout = try sevimage(["export", "libvirt", fixture.image])
        #expect(stdout.status == 0 && stdout.stderr.isEmpty, "\(stdout)")
        let output = fixture.scratch.file("vm.xml")
        try Data("old\n".utf8).write(to: URL(fileURLWithPath: output))
        let run = try sevimage(["export", "libvirt", fixture.image, "--output", output, "--force", "--json"])
        #expect(run.status == 0, "\(run)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: output)) == stdout.stdoutData)
        let summary = try jsonObject(run.stdoutData)
        let domain = try #require(summary["domain"] as? [String: Any])
        #expect(summary["output"] as? String == output && domain["mode"] as? String == "sev-es" && domain["policy"] as? String == "0x0007")
        #expect(domain["vcpus"] as? Int == 2 && domain["firmware"] as? String == fixture.ovmf && domain["xml"] == nil)
        let manifest = try jsonObject(Data(contentsOf: URL(fileURLWithPath: fixture.manifest)))
        let digests = try #require((manifest["firmware"] as? [String: Any])?["launchDigests"] as? [[String: Any]])
        #expect(domain["launchDigest"] as? String == digests.first { $0["mode"] as? String == "sev-es" }?["digest"] as? String)
    }

    struct Refusal: CustomStringConvertible, Sendable {
        var description: String
        var arguments: [String]
        var status: Int32 = 2
        var phrase: String
        var modes = ["sev", "sev-es"]
        var edit: @Sendable (ExportFixture) throws -> Void = { _ in }
    }

    static let refusals: [Refusal] = [
        Refusal(description: "a missing manifest", arguments: ["--manifest", "/nonexistent/m.json"], phrase: "cannot read the manifest /nonexistent/m.json"),
        Refusal(description: "an unknown flag", arguments: ["--frobnicate"], phrase: "unknown option '--frobnicate'"),
        Refusal(description: "a manifest without firmware", arguments: [], phrase: "has no launch digests: link the image to its firmware first",
                edit: { try $0.editManifest { $0["firmware"] = nil } }),
        Refusal(description: "a firmware without secret area", arguments: [], phrase: "has no SEV secret area",
                edit: { try $0.editManifest { object in
                    var firmware = object["firmware"] as? [String: Any] ?? [:]
                    firmware["secretArea"] = nil
                    object["firmware"] = firmware
                } }),
        Refusal(description: "SEV-ES without SEV-ES digests", arguments: ["--policy", "0x7"], phrase: "has no sev-es launch digest, which policy 0x7 launches (it has: sev)",
                modes: ["sev"]),
        Refusal(description: "only SEV-SNP digests", arguments: [], phrase: "has no sev launch digest, which policy 0x3 launches (it has: sev-snp)", modes: ["sev-snp"]),
        Refusal(description: "an SEV-ES vCPU count without digest", arguments: ["--vcpus", "3"], phrase: "no sev-es launch digest for 3 vCPUs (only for 1, 4)"),
        Refusal(description: "a debug policy", arguments: ["--policy", "0x2"], phrase: "allows debugging (NODBG, bit 0, clear)"),
        Refusal(description: "a key-sharing policy", arguments: ["--policy", "0x5"], phrase: "allows key sharing (NOKS, bit 1, clear)"),
        Refusal(description: "a policy over 32 bits", arguments: ["--policy", "0x100000000"], phrase: "--policy 0x100000000 is not an integer in 0...4294967295"),
        Refusal(description: "another firmware file", arguments: ["--ovmf", "OTHER"], status: 4, phrase: "was linked to (sha256 "),
        Refusal(description: "no firmware beside the manifest", arguments: [], phrase: "(the manifest names OVMF.fd, looked for beside it; give the file with --ovmf)",
                edit: { _ = unlink($0.ovmf) }),
        Refusal(description: "SEV flags with --standard", arguments: ["--standard", "--cbitpos", "47"], phrase: "--cbitpos belongs to the SEV domain"),
        Refusal(description: "--nvram-template without --standard", arguments: ["--nvram-template", "/x"], phrase: "--nvram-template belongs to the --standard domain"),
        Refusal(description: "a slash in the name", arguments: ["--name", "a/b"], phrase: "holds a '/', which libvirt refuses"),
        Refusal(description: "a newline in the name", arguments: ["--name", "a\nb"], phrase: "the domain name holds a control character"),
        Refusal(description: "an empty name", arguments: ["--name", " "], phrase: "the domain name is empty"),
        Refusal(description: "a long name", arguments: ["--name", String(repeating: "n", count: 201)], phrase: "at most 200"),
        Refusal(description: "too little memory", arguments: ["--memory", "64M"], phrase: "--memory 64M is not a whole number of MiB from 128M to 16T"),
        Refusal(description: "a fraction of a MiB", arguments: ["--memory", "1000K"], phrase: "--memory 1000K is not a whole number of MiB"),
        Refusal(description: "a C-bit below 32", arguments: ["--cbitpos", "12"], phrase: "--cbitpos 12 is not a physical address bit from 32 to 63"),
        Refusal(description: "no reduction", arguments: ["--reduced-phys-bits", "0"], phrase: "--reduced-phys-bits 0 is not from 1 to 63"),
        Refusal(description: "a DH certificate without session", arguments: ["--dh-cert", "GODH"], phrase: "--dh-cert and --session go together"),
        Refusal(description: "a session that is not base64", arguments: ["--dh-cert", "GODH", "--session", "NOTB64"], phrase: "does not hold base64"),
        Refusal(description: "a relative QMP socket", arguments: ["--qmp-socket", "vm.qmp"], phrase: "--qmp-socket vm.qmp is not an absolute path"),
        Refusal(description: "--json without --output", arguments: ["--json"], phrase: "--json needs --output"),
        Refusal(description: "an existing output", arguments: ["--output", "EXISTING"], status: 3, phrase: "exists; pass --force to replace it"),
        Refusal(description: "the manifest as the output", arguments: ["--output", "MANIFEST", "--force"], phrase: "an input of this command"),
        Refusal(description: "an image that is not QCOW2", arguments: [], phrase: "not a QCOW2 file",
                edit: { try Data(repeating: 0, count: 1 << 20).write(to: URL(fileURLWithPath: $0.image)) }),
    ]

    /// Each bad input or command line is one line on stderr with its exit status; nothing is written.
    @Test(.enabled(if: hasTool("qemu-img"), "the fixture's image comes from qemu-img"), arguments: refusals)
    func refusesWithOneLine(_ refusal: Refusal) throws {
        let fixture = try ExportFixture(modes: refusal.modes, vcpus: [1, 4])
        try refusal.edit(fixture)
        let existing = fixture.scratch.file("existing.xml"), other = fixture.scratch.file("other.fd")
        let godh = fixture.scratch.file("godh.b64"), notB64 = fixture.scratch.file("session.b64")
        try Data("keep me\n".utf8).write(to: URL(fileURLWithPath: existing))
        try SyntheticOVMF(seed: 7).write(to: other)
        try Data("Zm9vYmFy\n".utf8).write(to: URL(fileURLWithPath: godh))
        try Data("not base64 at all!\n".utf8).write(to: URL(fileURLWithPath: notB64))
        let before = entries(of: fixture.scratch.path)
        let substitutes = ["EXISTING": existing, "MANIFEST": fixture.manifest, "OTHER": other, "GODH": godh, "NOTB64": notB64]
        let arguments = refusal.arguments.map { substitutes[$0] ?? $0 }
        let output = arguments.contains("--output") ? [] : ["--output", fixture.scratch.file("refused.xml")]
        let run = try sevimage(["export", "libvirt", fixture.image] + arguments + (arguments.contains("--json") ? [] : output))
        #expect(run.status == refusal.status, "\(run)")
        #expect(run.stderr.contains(refusal.phrase), "\(run)")
        #expect(run.stderr.split(separator: "\n").count == 1, "\(run)")
        if arguments.contains("--json") {
            #expect(try jsonObject(run.stdoutData)["error"] != nil, "\(run)")
        } else {
            #expect(run.stdout.isEmpty, "\(run)")
        }
        #expect(entries(of: fixture.scratch.path) == before)
        #expect(try String(contentsOfFile: existing, encoding: .utf8) == "keep me\n")
    }
}
