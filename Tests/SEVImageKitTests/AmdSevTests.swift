import Foundation
import Testing
@testable import SEVImageKit

/// Whether `sevimage firmware grub` can run here (Debian's grub-efi-amd64-bin).
let canMakeFirmwareGrub: Bool = hasTool("grub-mkimage") && FileManager.default.fileExists(atPath: "/usr/lib/grub/x86_64-efi/luks2.mod")

/// Whether `scripts/build-amdsev-ovmf.sh` can build the firmware here: apt for the source (root installs
/// what is missing; CI runs as root and installs the build dependencies up front).
let canBuildAmdSevFirmware: Bool = canMakeFirmwareGrub && hasTool("apt-get")
    && (getuid() == 0 || ["nasm", "iasl", "gcc", "make", "dpkg-source"].allSatisfy(hasTool))

/// The AmdSev OVMF built once per test run from Debian's edk2 source with the GRUB of `sevimage firmware grub`;
/// the script's cache (`.cache/amdsev-ovmf`) makes later runs on this machine take a second.
let amdSevFirmware: Result<String, GeneralError> = {
    do {
        let scratch = try Scratch()
        let grub = scratch.file("grub.efi")
        let made = try sevimage(["firmware", "grub", "--output", grub])
        guard made.status == 0 else { return .failure(.toolFailed("sevimage firmware grub", status: made.status, stderr: made.stderr)) }
        let script = repositoryRoot.appendingPathComponent("scripts/build-amdsev-ovmf.sh").path
        let built = try runProgram(script, ["--grub", grub])
        guard built.status == 0, let path = built.stdout.split(separator: "\n").last.map(String.init),
              FileManager.default.fileExists(atPath: path) else {
            return .failure(.toolFailed("build-amdsev-ovmf.sh", status: built.status, stderr: built.stderr))
        }
        return .success(path)
    } catch let error as GeneralError {
        return .failure(error)
    } catch {
        return .failure(.invalidArgument("\(error)"))
    }
}()

/// `sevimage firmware grub`: what goes into the binary, checked with tar and by reading the binary itself.
@Suite(.enabled(if: canMakeFirmwareGrub, "needs grub-efi-amd64-bin"))
struct FirmwareGrubTests {
    @Test func buildsTheBinaryWithItsConfigInTheMemdisk() throws {
        let scratch = try Scratch()
        let output = scratch.file("grub.efi")
        let result = try sevimage(["firmware", "grub", "--output", output, "--json"])
        #expect(result.status == 0, "\(result)")
        let report = try JSONDecoder().decode(FirmwareGrub.Report.self, from: result.stdoutData)
        #expect(report.prefix == "(crypto0)")
        #expect(report.modules == FirmwareGrub.defaultModules)
        #expect(report.grubVersion.hasPrefix("grub-mkimage (GRUB) 2."))
        let data = try Data(contentsOf: URL(fileURLWithPath: output))
        #expect(report.size == data.count)
        #expect(report.sha256 == hex(Crypto.sha256(data)))
        // A PE image ("MZ"), with the embedded config and the memdisk's config stored as they are.
        #expect(data.prefix(2) == Data("MZ".utf8))
        #expect(data.range(of: Data(FirmwareGrub.config(withSecretModule: false).utf8)) != nil)
        #expect(data.range(of: Data(FirmwareGrub.bootstrapConfig.utf8)) != nil)
        // Debian's GRUB has no efisecret: the config asks, never tries `cryptomount -s`.
        let config = FirmwareGrub.config(withSecretModule: false)
        #expect(config.contains("cryptomount -a"))
        #expect(!config.contains("cryptomount -s"))
        #expect(config.contains(FirmwareGrub.unlockFailure))
        #expect(config.hasSuffix("halt\n\n") || config.hasSuffix("halt\n"))
        // The same inputs make the same bytes (the cache key of the firmware script relies on it).
        let again = scratch.file("again.efi")
        #expect(try sevimage(["firmware", "grub", "--output", again]).status == 0)
        #expect(sameBytes(try Data(contentsOf: URL(fileURLWithPath: again)), data))
    }

    @Test func secretStepOnlyWhenTheModuleIsBuiltIn() throws {
        let config = FirmwareGrub.config(withSecretModule: true)
        let secret = try #require(config.range(of: "cryptomount -s efisecret"))
        let ask = try #require(config.range(of: "cryptomount -a"))
        #expect(secret.upperBound < ask.lowerBound)
        #expect(try FirmwareGrub.modules(adding: ["efisecret", "part_gpt"]) == FirmwareGrub.defaultModules + ["efisecret"])
        // A module directory without efisecret (Debian's) refuses it by name.
        let scratch = try Scratch()
        let result = try sevimage(["firmware", "grub", "--output", scratch.file("g.efi"), "--modules", "efisecret"])
        #expect(result.status == ExitStatus.invalidInput.rawValue, "\(result)")
        #expect(result.stderr == "sevimage: error: GRUB module efisecret is not in /usr/lib/grub/x86_64-efi\n")
    }

    @Test func memdiskIsAUstarArchiveThatTarReads() throws {
        let scratch = try Scratch()
        let archive = scratch.file("memdisk.tar")
        let text = FirmwareGrub.config(withSecretModule: false)
        try Data(FirmwareGrub.ustar([("grub.cfg", Array(text.utf8))])).write(to: URL(fileURLWithPath: archive))
        let listing = try runChecked("tar", ["-tvf", archive])
        #expect(listing.stdout.hasPrefix("-rw-r--r-- 0/0 "), "\(listing.stdout)")
        #expect(listing.stdout.contains(" \(text.utf8.count) "))
        #expect(listing.stdout.hasSuffix("grub.cfg\n"))
        let content = try runChecked("tar", ["-xOf", archive, "grub.cfg"])
        #expect(content.stdout == text)
    }

    @Test(arguments: [
        (["--modules", "bad/name"], "module name 'bad/name' is not a GRUB module name"),
        (["--modules", "nosuchmodule"], "GRUB module nosuchmodule is not in /usr/lib/grub/x86_64-efi"),
        (["--directory", "/nonexistent"], "GRUB module directory /nonexistent does not exist"),
    ])
    func badArguments(extra: [String], message: String) throws {
        let scratch = try Scratch()
        let result = try sevimage(["firmware", "grub", "--output", scratch.file("g.efi")] + extra)
        #expect(result.status == ExitStatus.invalidInput.rawValue, "\(result)")
        #expect(result.stderr.hasPrefix("sevimage: error: \(message)"), "\(result)")
        #expect(result.stderr.split(separator: "\n").count == 1)
        #expect(entries(of: scratch.path).isEmpty)
    }

    @Test func existingOutputNeedsForce() throws {
        let scratch = try Scratch()
        let output = scratch.file("grub.efi")
        try Data("keep".utf8).write(to: URL(fileURLWithPath: output))
        let refused = try sevimage(["firmware", "grub", "--output", output])
        #expect(refused.status == ExitStatus.conflict.rawValue)
        #expect(try String(contentsOfFile: output, encoding: .utf8) == "keep")
        #expect(try sevimage(["firmware", "grub", "--output", output, "--force"]).status == 0)
        #expect(entries(of: scratch.path) == ["grub.efi"])
    }
}

/// The AmdSev OVMF built from Debian's edk2 source with sevimage's GRUB: its table, its digests, and
/// images booted through it alone. One QEMU at a time; three boots.
@Suite(.serialized, .enabled(if: canBuildAmdSevFirmware && canCreateDemoImage, "needs apt (edk2 source), grub-efi-amd64-bin, qemu, and the demo image's tools"))
struct AmdSevTests {
    func firmware() throws -> String { try amdSevFirmware.get() }

    @Test func inspectReportsTheSecretAreaOfTheTable() throws {
        let path = try firmware()
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        #expect(data.count == 4 << 20)
        // The table read here by hand: footer GUID at size-48, u16 length at size-50, entries `data | u16 length | GUID`
        // walked backwards.
        let bytes = [UInt8](data)
        /// A GUID's text as its 16 bytes in EFI order (first three fields little-endian), done here by hand.
        func efi(_ text: String) -> [UInt8] {
            let h = Array(text.replacingOccurrences(of: "-", with: ""))
            let b = stride(from: 0, to: 32, by: 2).map { UInt8(String(h[$0..<$0 + 2]), radix: 16) ?? 0 }
            return [b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6]] + b[8...]
        }
        func u16(_ at: Int) -> Int { Int(bytes[at]) | Int(bytes[at + 1]) << 8 }
        func u32(_ at: Int) -> Int { u16(at) | u16(at + 2) << 16 }
        let footer = bytes.count - 48
        #expect(Array(bytes[footer..<footer + 16]) == efi("96b582de-1fb2-45f7-baea-a366c55a082d"))
        let start = footer - (u16(footer - 2) - 18)
        var cursor = footer - 2
        var secret: (base: Int, size: Int)?
        while cursor > start {
            let guid = Array(bytes[cursor - 16..<cursor])
            let length = u16(cursor - 18)
            let dataStart = cursor - length
            if guid == efi("4c2eb361-7d9b-4cc3-8081-127c90d3d294") { secret = (u32(dataStart), u32(dataStart + 4)) }
            cursor = dataStart
        }
        let area = try #require(secret)
        #expect(area.base == 0x80_C000 && area.size == 0xC00)

        let result = try sevimage(["firmware", "inspect", path, "--json"])
        #expect(result.status == 0, "\(result)")
        let json = try #require(try JSONSerialization.jsonObject(with: result.stdoutData) as? [String: Any])
        let reported = try #require(json["secretArea"] as? [String: Any])
        #expect(reported["base"] as? Int == area.base)
        #expect(reported["size"] as? Int == area.size)
        let verdict = try #require(json["verdict"] as? [String: Any])
        #expect(verdict["encryptedBoot"] as? Bool == true)
        let human = try sevimage(["firmware", "inspect", path])
        #expect(human.stderr.contains("usable for encrypted boot: secret area at 0x0080c000, 3072 bytes"), "\(human)")
    }

    @Test(.enabled(if: hasSevSnpMeasure, "needs PyPI sev-snp-measure"))
    func measureAgreesWithSevSnpMeasure() throws {
        let path = try firmware()
        let cases: [(mode: String, vcpus: Int, type: String)] = [
            ("sev", 1, "EPYC"), ("sev-es", 1, "EPYC-v4"), ("sev-es", 2, "EPYC-v4"), ("sev-es", 2, "EPYC-Milan"),
            ("sev-snp", 1, "EPYC-v4"), ("sev-snp", 2, "EPYC-Milan"),
        ]
        let answers = try firmwareOracle(cases.map {
            ["kind": "digest", "ovmf": path, "mode": $0.mode, "vcpus": $0.vcpus, "vcpuType": $0.type] as [String: Any]
        })
        for (c, answer) in zip(cases, answers) {
            var arguments = ["firmware", "measure", path, "--mode", c.mode, "--json"]
            if c.mode != "sev" { arguments += ["--vcpus", String(c.vcpus), "--vcpu-type", c.type] }
            let result = try sevimage(arguments)
            #expect(result.status == 0, "\(result)")
            let json = try JSONSerialization.jsonObject(with: result.stdoutData) as? [String: Any]
            let theirs = try #require(answer["digest"] as? String, "oracle: \(answer)")
            #expect(json?["digest"] as? String == theirs, "\(c): \(result.stdout)")
        }
        // Plain SEV: the digest is the firmware's SHA-256.
        #expect(answers[0]["digest"] as? String == hex(try Crypto.hashFile(path)))
    }

    /// `create --ovmf` links the image to the firmware; it boots through the firmware's GRUB alone.
    @Test func bootsThroughTheFirmwareGrubEvenWithTheESPWiped() throws {
        let path = try firmware()
        let scratch = try Scratch()
        let tree = try demoRootTree()
        let image = scratch.file("amdsev.qcow2")
        let created = try sevimage(["create", "--rootfs", tree, "--output", image, "--ovmf", path, "--quiet"])
        #expect(created.status == 0, "\(created)")
        let passphraseFile = scratch.file("amdsev.passphrase")
        let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: scratch.file("amdsev.manifest.json")))) as? [String: Any]
        let link = try #require(manifest?["firmware"] as? [String: Any])
        let digests = try #require(link["launchDigests"] as? [[String: Any]])
        #expect(digests.contains { $0["mode"] as? String == "sev" && $0["digest"] as? String == hex(try! Crypto.hashFile(path)) })

        // 1. As created.
        let first = try sevimage(["boot", image, "--passphrase-file", passphraseFile, "--bios", path, "--timeout", "600", "--json"])
        #expect(first.status == 0, "\(first)")
        #expect(first.stderr.contains("\"Grub Bootloader\" from Fv("), "the firmware volume's GRUB ran")
        #expect(first.stderr.contains("Enter passphrase for hd0,gpt2"))
        #expect(first.stderr.contains("Loading /boot/grub/grub.cfg from (crypto0)."))
        #expect(first.stderr.contains("SEVIMAGE-BOOT-OK"))
        #expect(!first.stderr.contains(try String(contentsOfFile: passphraseFile, encoding: .utf8)))

        // 2. A copy whose ESP is zeros: no BOOTX64.EFI, no FAT at all. It boots all the same.
        let wiped = try copyWithZeroedESP(image, in: scratch)
        let second = try sevimage(["boot", wiped, "--passphrase-file", passphraseFile, "--bios", path, "--timeout", "600"])
        #expect(second.status == 0, "\(second)")
        #expect(second.stderr.contains("Loading /boot/grub/grub.cfg from (crypto0)."))
        #expect(second.stderr.contains("SEVIMAGE-BOOT-OK"))
    }

    @Test func wrongPassphraseAtTheFirmwareGrubNeverReachesTheKernel() throws {
        let path = try firmware()
        let scratch = try Scratch()
        let (image, _) = try makeBootableImage(in: scratch)
        let wrong = scratch.file("wrong.passphrase")
        try writePassphraseFile(wrong, "not the passphrase")
        let result = try sevimage(["boot", image, "--passphrase-file", wrong, "--bios", path, "--timeout", "600"])
        #expect(result.status == ExitStatus.wrongPassphrase.rawValue, "\(result)")
        #expect(result.stderr.contains("\"Grub Bootloader\" from Fv("))
        #expect(result.stderr.contains("Enter passphrase for hd0,gpt2"))
        #expect(!result.stderr.contains("Loading /boot/grub/grub.cfg"))
        #expect(!result.stderr.contains("Linux version"))
        #expect(!result.stderr.contains("SEVIMAGE-BOOT-OK"))
        #expect(result.stderr.hasSuffix("sevimage: error: the passphrase was refused by GRUB\n"))
        #expect(result.stdout.isEmpty)
    }
}

/// `boot --bios`: the firmware as one read-only `-bios` file instead of pflash code and variables.
@Suite struct BootBiosOptionTests {
    @Test func qemuGetsOneBiosFileAndNoPflash() {
        var options = BootOptions(image: "/images/a.qcow2")
        options.firmwareImage = "/fw/OVMF.fd"
        let arguments = VirtualMachineBoot.arguments(options, accelerator: .tcg, variables: "/tmp/vars.fd", imageFormat: .qcow2)
        let bios = arguments.firstIndex(of: "-bios")
        #expect(bios.map { arguments[$0 + 1] } == "/fw/OVMF.fd")
        #expect(!arguments.contains { $0.contains("pflash") })
        #expect(arguments.last == #"file=json:{"backing":null,,"driver":"qcow2",,"file":{"driver":"file",,"filename":"/images/a.qcow2"}},if=virtio,snapshot=on"#)
    }

    @Test func biosAndPflashOptionsExcludeEachOther() throws {
        let result = try sevimage(["boot", "/nonexistent.qcow2", "--passphrase-file", "/nonexistent", "--bios", "/x/OVMF.fd",
                                   "--ovmf-code", "/x/CODE.fd"])
        #expect(result.status == ExitStatus.invalidInput.rawValue, "\(result)")
        #expect(result.stderr == "sevimage: error: --bios replaces --ovmf-code and --ovmf-vars; give one or the other (see --help)\n"
                || result.stderr == "sevimage: error: --bios replaces --ovmf-code and --ovmf-vars; give one or the other\n", "\(result)")
    }

    @Test func missingBiosFileIsNamed() throws {
        let scratch = try Scratch()
        let image = scratch.file("x.qcow2")
        try Data("x".utf8).write(to: URL(fileURLWithPath: image))
        let passphrase = scratch.file("p")
        try writePassphraseFile(passphrase, "some passphrase")
        let result = try sevimage(["boot", image, "--passphrase-file", passphrase, "--bios", "/nonexistent/OVMF.fd"])
        #expect(result.status == ExitStatus.invalidInput.rawValue, "\(result)")
        #expect(result.stderr == "sevimage: error: OVMF firmware /nonexistent/OVMF.fd does not exist; build an AmdSev one with scripts/build-amdsev-ovmf.sh\n", "\(result)")
        #expect(result.stderr.split(separator: "\n").count == 1)
    }
}
