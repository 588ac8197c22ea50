import Foundation
import Testing
@testable import SEVImageKit

/// The serial console scanner: GRUB's and the guest's text, split and painted the way OVMF sends it.
@Suite struct BootConsoleScannerTests {
    private func events(_ chunks: [String], expecting: String = "SEVIMAGE-BOOT-OK") -> [SerialConsoleScanner.Event] {
        let scanner = SerialConsoleScanner(expecting: expecting)
        return chunks.flatMap { scanner.consume(Array($0.utf8)).events }
    }

    @Test func promptSplitAcrossReadsAndColours() {
        // As captured from GRUB 2.06 on OVMF: colour changes, then the prompt in two reads.
        let chunks = ["\u{1B}[0m\u{1B}[30m\u{1B}[47mWelcome to GRUB!\r\n\r\n\u{1B}[0m\u{1B}[37m\u{1B}[40mEnter passphrase ",
                      "for hd0,gpt2 (899490dfd308417199504a251dc0ab5e): "]
        #expect(events(chunks) == [.passphrasePrompt])
    }

    @Test func escapeSequenceInsideThePattern() {
        #expect(events(["Enter pass\u{1B}[", "1;1Hphrase for hd0,gpt2 (x): "]) == [.passphrasePrompt])
    }

    @Test func refusalsAndTheEmbeddedConfigsLine() {
        let chunks = ["Enter passphrase for hd0,gpt2 (x): \r\n", "error: Invalid passphrase.\r\nerror: no such cryptodisk found.\r\n",
                      "sevimage: cannot unlock the root", " partition\r\n"]
        #expect(events(chunks) == [.passphrasePrompt, .passphraseRefused, .passphraseRefused])
        #expect(events(["error: access denied.\r\n"]) == [.passphraseRefused])
    }

    @Test func otherStopLineIsReportedWhole() {
        #expect(events(["sevimage: cannot boot from /boot/grub/grub.cfg\r", "\n"])
                == [.grubStopped("sevimage: cannot boot from /boot/grub/grub.cfg")])
    }

    @Test func expectedTextOnceAndInOrder() {
        let chunks = ["Slot \"0\" opened\r\n[    2.0] Run /init\r\n\r\nSEVIMAGE-BO", "OT-OK 6.1.0-56-amd64\r\n", "SEVIMAGE-BOOT-OK\r\n"]
        #expect(events(chunks) == [.expectedText, .expectedText])
        #expect(events(["login: "], expecting: "login:") == [.expectedText])
    }

    @Test func cleanTextDropsEscapesAndCarriageReturns() {
        let scanner = SerialConsoleScanner(expecting: "x")
        let first = scanner.consume(Array("\u{1B}[2J\u{1B}[01;01HBdsDxe: loading\r\n\u{1B}".utf8)).text
        let second = scanner.consume(Array("[0mok\r\n".utf8)).text
        #expect(String(decoding: first + second, as: UTF8.self) == "BdsDxe: loading\nok\n")
    }
}

@Suite struct BootOptionsTests {
    @Test(arguments: [("512", 512), ("512M", 512), ("1G", 1024), ("2GiB", 2048), ("768MiB", 768)])
    func memorySizes(text: String, mib: Int) throws {
        #expect(try parseMemoryMiB(text) == mib)
    }

    @Test(arguments: ["", "64", "1T", "lots", "-512", "99999999999999999999G"])
    func badMemorySizes(text: String) {
        #expect(throws: BootError.self) { try parseMemoryMiB(text) }
    }

    @Test func qemuCommandLine() {
        var options = BootOptions(image: "/images/a,b.qcow2")
        let arguments = VirtualMachineBoot.arguments(options, accelerator: .tcg, variables: "/tmp/vars.fd", imageFormat: .qcow2)
        // The format and the protocol pinned, no backing file (issue 16); commas doubled for -drive.
        #expect(arguments.contains(#"file=json:{"backing":null,,"driver":"qcow2",,"file":{"driver":"file",,"filename":"/images/a,,b.qcow2"}},if=virtio,snapshot=on"#), "\(arguments)")
        #expect(arguments.contains("q35,accel=tcg"))
        #expect(arguments.contains("if=pflash,format=raw,file=/tmp/vars.fd"))
        #expect(arguments.contains("if=pflash,format=raw,readonly=on,file=\(BootOptions.debianFirmwareCode)"))
        #expect(!arguments.contains("-cpu"))
        options.writable = true
        let kvm = VirtualMachineBoot.arguments(options, accelerator: .kvm, variables: "/tmp/vars.fd", imageFormat: .raw)
        #expect(kvm.contains(#"file=json:{"driver":"raw",,"file":{"driver":"file",,"filename":"/images/a,,b.qcow2"}},if=virtio,snapshot=off"#), "\(kvm)")
        #expect(kvm.contains("q35,accel=kvm") && kvm.contains("host"))
    }

    @Test(arguments: [(["--memory", "64"], "memory size \"64\" is not a size"),
                      (["--accel", "xen"], "--accel xen is not one of kvm, tcg, auto"),
                      (["--timeout", "0"], "is not a positive number of seconds")])
    func badArguments(extra: [String], message: String) throws {
        let result = try sevimage(["boot", "/nonexistent.qcow2", "--passphrase-file", "/nonexistent"] + extra)
        #expect(result.status == ExitStatus.invalidInput.rawValue)
        #expect(result.stderr.contains(message), "\(result)")
        #expect(result.stderr.split(separator: "\n").count == 1)
    }

    @Test func exitStatuses() {
        #expect(BootError.passphraseRefused.exitStatus == .wrongPassphrase)
        #expect(BootError.passphraseRefused.description == "the passphrase was refused by GRUB")
        #expect(BootError.timedOut(seconds: 5, stage: "x").exitStatus == .failure)
        #expect(BootError.firmwareMissing("/x", role: "firmware code").exitStatus == .invalidInput)
    }
}

/// End to end: the demo root tree, an image of it, and real boots through OVMF and GRUB in QEMU.
/// One QEMU at a time (`.serialized`): TCG boots are CPU-bound.
@Suite(.serialized, .enabled(if: canCreateDemoImage, "needs qemu-system-x86, qemu-utils, ovmf, grub-efi-amd64-bin, dosfstools, mtools, e2fsprogs, cpio"))
struct BootTests {
    @Test func demoRootTreeHasKernelAndInitrd() throws {
        let tree = try demoRootTree()
        let boot = try FileManager.default.contentsOfDirectory(atPath: tree + "/boot")
        let kernel = try #require(boot.first { $0.hasPrefix("vmlinuz-") })
        let version = kernel.dropFirst("vmlinuz-".count)
        #expect(boot.contains("initrd.img-\(version)"))
        #expect(FileManager.default.fileExists(atPath: tree + "/etc/hostname"))
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: tree + "/etc/os-release") == "../usr/lib/os-release")
        // The initramfs: a gzip'ed newc cpio with /init that prints the marker, and a static busybox.
        let listing = try runProgram("/bin/sh", ["-c", "gzip -dc '\(tree)/boot/initrd.img-\(version)' | cpio -it --quiet"])
        #expect(listing.status == 0)
        #expect(listing.stdout.split(separator: "\n").contains("init"))
        #expect(listing.stdout.split(separator: "\n").contains("bin/busybox"))
        let initText = try runProgram("/bin/sh", ["-c", "gzip -dc '\(tree)/boot/initrd.img-\(version)' | cpio -i --to-stdout --quiet init"])
        #expect(initText.stdout.contains("SEVIMAGE-BOOT-OK"))
        #expect(initText.stdout.contains("poweroff -f"))
        // A second run reuses the tree.
        let started = Date()
        #expect(try demoRootTree() == tree)
        #expect(Date().timeIntervalSince(started) < 5)
    }

    @Test func bootsWithTheRightPassphrase() throws {
        let scratch = try Scratch()
        let (image, passphraseFile) = try makeBootableImage(in: scratch)
        let before = try Crypto.hashFile(image)
        let result = try sevimage(["boot", image, "--passphrase-file", passphraseFile, "--json", "--timeout", "600"])
        #expect(result.status == 0, "\(result)")
        #expect(result.stderr.contains("Enter passphrase for"))
        #expect(result.stderr.contains("SEVIMAGE-BOOT-OK"))
        #expect(!result.stderr.contains(try String(contentsOfFile: passphraseFile, encoding: .utf8)))
        let report = try JSONDecoder().decode(BootReport.self, from: result.stdoutData)
        #expect(report.expectedText == "SEVIMAGE-BOOT-OK")
        #expect(report.snapshot)
        #expect(report.passphrasePromptSeconds != nil)
        // snapshot=on: the smoke test leaves the image as it was.
        #expect(try Crypto.hashFile(image) == before)
        #expect(qemuProcesses(using: image).isEmpty)
    }

    @Test(.enabled(if: canMakeReferenceImage, "needs root, cryptsetup-bin and fdisk"))
    func bootsTheHandMadeReferenceImage() throws {
        let scratch = try Scratch()
        let (image, passphraseFile) = try makeReferenceImage(in: scratch)
        let result = try sevimage(["boot", image, "--passphrase-file", passphraseFile, "--accel", "tcg", "--timeout", "600"])
        #expect(result.status == 0, "\(result)")
        #expect(result.stderr.contains("SEVIMAGE-BOOT-OK"))
        #expect(result.stderr.contains("reference.qcow2 booted under tcg: \"SEVIMAGE-BOOT-OK\" after "))
        #expect(result.stdout.isEmpty)
    }

    @Test func wrongPassphraseNeverReachesTheKernel() throws {
        let scratch = try Scratch()
        let (image, _) = try makeBootableImage(in: scratch)
        let wrong = scratch.file("wrong.passphrase")
        try writePassphraseFile(wrong, "not the passphrase")
        // As an unprivileged user when we are root: no /dev/kvm for it, so `auto` goes straight to TCG.
        let user: UInt32? = getuid() == 0 ? 65534 : nil
        if let user { chown(wrong, user, user) }
        let result = try sevimage(["boot", image, "--passphrase-file", wrong, "--timeout", "600"], user: user)
        #expect(result.status == ExitStatus.wrongPassphrase.rawValue, "\(result)")
        if user != nil { #expect(!result.stderr.contains("starting again under tcg")) }
        #expect(result.stderr.contains("Enter passphrase for"))
        #expect(result.stderr.hasSuffix("sevimage: error: the passphrase was refused by GRUB\n"))
        #expect(!result.stderr.contains("SEVIMAGE-BOOT-OK"))
        #expect(!result.stderr.contains("Linux version"))
        #expect(result.stdout.isEmpty)
        #expect(qemuProcesses(using: image).isEmpty)
    }

    @Test func timeoutStopsQemu() throws {
        let scratch = try Scratch()
        let (image, passphraseFile) = try makeBootableImage(in: scratch)
        let started = Date()
        let result = try sevimage(["boot", image, "--passphrase-file", passphraseFile, "--accel", "tcg", "--timeout", "2"])
        #expect(result.status == ExitStatus.failure.rawValue, "\(result)")
        #expect(result.stderr.contains("did not boot within 2 seconds"))
        #expect(result.stderr.contains("qemu was stopped"))
        #expect(Date().timeIntervalSince(started) < 15)
        #expect(qemuProcesses(using: image).isEmpty)
    }

    @Test func interruptStopsQemuAndRemovesTheVariablesCopy() throws {
        let scratch = try Scratch()
        let (image, passphraseFile) = try makeBootableImage(in: scratch)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: sevimageBinary)
        process.arguments = ["boot", image, "--passphrase-file", passphraseFile, "--accel", "tcg", "--quiet"]
        process.environment = ProcessInfo.processInfo.environment.merging(["TMPDIR": scratch.path]) { $1 }
        process.standardError = FileHandle.nullDevice
        try process.run()
        // Wait until QEMU runs, then interrupt sevimage.
        let started = Date()
        while qemuProcesses(using: image).isEmpty && Date().timeIntervalSince(started) < 20 { usleep(100_000) }
        #expect(!qemuProcesses(using: image).isEmpty)
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        #expect(process.terminationStatus == 128 + SIGTERM)
        let stopped = Date()
        while !qemuProcesses(using: image).isEmpty && Date().timeIntervalSince(stopped) < 5 { usleep(100_000) }
        let survivors = qemuProcesses(using: image)
        #expect(survivors.isEmpty, "\(survivors.map { (try? String(contentsOfFile: "/proc/\($0)/stat", encoding: .utf8)) ?? "" })")
        // A failure must not leave a VM waiting at GRUB's prompt for ever.
        for pid in survivors { kill(pid, SIGKILL) }
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: scratch.path).filter { $0.hasPrefix(".sevimage-boot") }
        #expect(leftovers.isEmpty)
    }

    @Test func poweroffWithoutTheExpectedTextFails() throws {
        let scratch = try Scratch()
        let (image, passphraseFile) = try makeBootableImage(in: scratch)
        let result = try sevimage(["boot", image, "--passphrase-file", passphraseFile, "--accel", "tcg",
                                   "--expect", "TEXT-THE-GUEST-NEVER-PRINTS", "--quiet", "--timeout", "600"])
        #expect(result.status == ExitStatus.failure.rawValue, "\(result)")
        #expect(result.stderr == "sevimage: error: the guest powered off without printing \"TEXT-THE-GUEST-NEVER-PRINTS\"\n")
        // With no text to wait for, the same clean power-off is the success.
        let clean = try sevimage(["boot", image, "--passphrase-file", passphraseFile, "--accel", "tcg",
                                  "--expect", "", "--quiet", "--timeout", "600", "--json"])
        #expect(clean.status == 0, "\(clean)")
        #expect(clean.stdout.contains("\"expectedText\" : \"\""))
    }

    @Test func missingFirmwareIsRefusedBeforeQemuStarts() throws {
        let scratch = try Scratch()
        let image = scratch.file("empty.qcow2")
        _ = FileManager.default.createFile(atPath: image, contents: Data())
        let passphraseFile = scratch.file("p")
        try writePassphraseFile(passphraseFile, "x")
        let result = try sevimage(["boot", image, "--passphrase-file", passphraseFile, "--ovmf-code", scratch.file("none.fd")])
        #expect(result.status == ExitStatus.invalidInput.rawValue)
        #expect(result.stderr.contains("does not exist"))
        let missing = try sevimage(["boot", scratch.file("nothing.qcow2"), "--passphrase-file", passphraseFile])
        #expect(missing.status == ExitStatus.invalidInput.rawValue)
        #expect(missing.stderr == "sevimage: error: image \(scratch.file("nothing.qcow2")) does not exist or is not a regular file\n")
    }
}

/// QEMU processes whose command line names `image` (none may outlive a boot).
func qemuProcesses(using image: String) -> [Int32] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { Int32($0) }.filter { pid in
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
        let arguments = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        return arguments.first?.hasSuffix("qemu-system-x86_64") == true && arguments.contains { $0.contains(image) }
    }
}
