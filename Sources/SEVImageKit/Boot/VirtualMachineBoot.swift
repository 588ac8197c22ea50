import Foundation

/// Boots an image the way its author would on a laptop: QEMU (q35) with OVMF, the image as a virtio
/// disk, the serial console on pipes. When GRUB asks for the passphrase it is typed (followed by a
/// carriage return); the boot succeeds when the expected text appears on the console.
///
///     sevimage ──stdin──▶ qemu serial ──▶ OVMF ──▶ GRUB (ESP): "Enter passphrase for hd0,gpt2 (...)"
///              ◀─stdout── console text     ◀── kernel + initrd from the unlocked root: "SEVIMAGE-BOOT-OK"
///
/// Outcomes: the expected text → a `BootReport`; GRUB's refusal (`error: access denied`,
/// `Invalid passphrase`, the embedded config's `sevimage: cannot unlock ...`, or a second prompt) →
/// `BootError.passphraseRefused`; the guest powering off first → `poweredOffWithoutExpectedText`;
/// the time limit → `timedOut` with QEMU stopped. The passphrase goes to QEMU's stdin only, never into
/// its argv or environment. In `auto` mode KVM is tried first when `/dev/kvm` answers, and the boot
/// starts again under TCG when KVM fails: QEMU exits before the guest printed anything, reports a KVM
/// error before the expected text, or the guest stays silent for `kvmSilenceLimit`.
public enum VirtualMachineBoot {
    /// How long a KVM guest may stay silent before `auto` gives up on KVM (OVMF prints within a second).
    static let kvmSilenceLimit: Duration = .seconds(15)
    /// How long the guest may keep running after the outcome is known, so the console shows its end.
    static let grace: Duration = .seconds(3)

    public static func run(_ options: BootOptions, passphrase: Passphrase) throws -> BootReport {
        let format = try check(options)
        let qemu = try ExternalTool.qemuSystem.resolve()
        let started = ContinuousClock.now
        let deadline = started + options.timeout
        var fallbackReason: String?
        var plan: [Accelerator]
        switch options.accelerator {
        case .tcg: plan = [.tcg]
        case .kvm: plan = [.kvm]
        case .auto:
            if let reason = kvmUnavailableReason() {
                fallbackReason = reason
                plan = [.tcg]
            } else {
                plan = [.kvm, .tcg]
            }
        }
        for accelerator in plan {
            let outcome = try attempt(options, accelerator: accelerator, qemu: qemu, passphrase: passphrase, format: format,
                                      deadline: deadline, timeoutSeconds: Int(options.timeout.components.seconds))
            switch outcome {
            case .booted(var report):
                report.kvmFallbackReason = fallbackReason
                return report
            case .kvmFailed(let reason):
                guard options.accelerator == .auto else { throw BootError.kvmUnusable(reason) }
                fallbackReason = reason
                if options.consoleSink != nil {
                    Console.write("\nsevimage: kvm cannot run this guest (\(reason)); starting again under tcg\n")
                }
            }
        }
        throw BootError.kvmUnusable(fallbackReason ?? "no accelerator left to try")
    }

    /// Refuses missing inputs before QEMU starts, with messages that name the file; then reads the image the
    /// way `inspect` does and returns its format. A QCOW2 with a backing file or an external data file is
    /// refused here: QEMU would open that host file (`/etc/shadow`, say) as the guest's disk, and with
    /// `--writable` let the guest write into it.
    @discardableResult
    static func check(_ options: BootOptions) throws -> DiskImageReader.Format {
        guard isRegularFile(options.image) else { throw BootError.imageMissing(options.image) }
        if let firmwareImage = options.firmwareImage {
            guard isRegularFile(firmwareImage) else { throw BootError.firmwareMissing(firmwareImage, role: "firmware") }
        } else {
            guard isRegularFile(options.firmwareCode) else {
                throw BootError.firmwareMissing(options.firmwareCode, role: "firmware code")
            }
            guard isRegularFile(options.firmwareVariables) else {
                throw BootError.firmwareMissing(options.firmwareVariables, role: "variables template")
            }
        }
        return try DiskImageReader(path: options.image).format
    }

    private static func isRegularFile(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFREG
    }

    /// Why KVM cannot even be tried, or nil when `/dev/kvm` opens and answers with API version 12.
    static func kvmUnavailableReason() -> String? {
        let fd = open("/dev/kvm", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { return "cannot open /dev/kvm: \(errnoDescription(errno))" }
        defer { close(fd) }
        let kvmGetAPIVersion: UInt = 0xAE00  // _IO(KVMIO, 0x00)
        let version = ioctl(fd, kvmGetAPIVersion)
        guard version == 12 else { return "/dev/kvm reports API version \(version), not 12" }
        return nil
    }

    /// QEMU's command line. Paths are escaped for `-drive` (a comma is doubled).
    static func arguments(_ options: BootOptions, accelerator: Accelerator, variables: String,
                          imageFormat: DiskImageReader.Format) -> [String] {
        func escaped(_ path: String) -> String { path.replacingOccurrences(of: ",", with: ",,") }
        var arguments = ["-machine", "q35,accel=\(accelerator == .kvm ? "kvm" : "tcg")"]
        if accelerator == .kvm { arguments += ["-cpu", "host"] }
        arguments += [
            "-m", "\(options.memoryMiB)M",
            "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            // The console on stdin/stdout, not multiplexed with the monitor (no Ctrl-A escapes), and
            // Ctrl-C typed into it does not stop QEMU.
            "-chardev", "stdio,id=console,signal=off",
            "-serial", "chardev:console",
            "-monitor", "none",
        ]
        if let firmwareImage = options.firmwareImage {
            // One read-only file: the AmdSev OVMF with the GRUB in its firmware volume.
            arguments += ["-bios", firmwareImage]
        } else {
            arguments += [
                "-drive", "if=pflash,format=raw,readonly=on,file=\(escaped(options.firmwareCode))",
                "-drive", "if=pflash,format=raw,file=\(escaped(variables))",
            ]
        }
        arguments += ["-drive", "file=\(escaped(driveSpecification(options.image, format: imageFormat))),if=virtio,snapshot=\(options.writable ? "off" : "on")"]
        return arguments
    }

    /// The image's block node as QEMU's `json:` pseudo-filename: the format driver named (QEMU probes
    /// nothing), the protocol a plain `file`, and for QCOW2 `"backing": null`, so that QEMU 7.2 opens no
    /// backing file whatever the header names (checked with `query-named-block-nodes`: no node for it).
    /// `-drive` keeps `snapshot=on`, which `-blockdev` lacks. External data files have no such switch in
    /// QEMU (it opens the header's one whatever the options); `check` refuses those images.
    static func driveSpecification(_ path: String, format: DiskImageReader.Format) -> String {
        var node: [String: Any] = ["driver": format.rawValue, "file": ["driver": "file", "filename": path]]
        if format == .qcow2 { node["backing"] = NSNull() }
        let data = (try? JSONSerialization.data(withJSONObject: node, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data()
        return "json:" + String(decoding: data, as: UTF8.self)
    }

    enum Outcome {
        case booted(BootReport)
        case kvmFailed(String)
    }

    /// One QEMU run under one accelerator.
    static func attempt(_ options: BootOptions, accelerator: Accelerator, qemu: String, passphrase: Passphrase,
                        format: DiskImageReader.Format, deadline: ContinuousClock.Instant, timeoutSeconds: Int) throws -> Outcome {
        // A private copy of the variables: OVMF writes boot entries into it.
        let temporary = try TemporaryDirectory(near: NSTemporaryDirectory() + "/sevimage-boot", purpose: "sevimage-boot")
        let variables = temporary.file("OVMF_VARS.fd")
        if options.firmwareImage == nil {
            guard let template = FileManager.default.contents(atPath: options.firmwareVariables) else {
                throw GeneralError.io("read", path: options.firmwareVariables, errno: EACCES)
            }
            guard FileManager.default.createFile(atPath: variables, contents: template, attributes: [.posixPermissions: 0o600]) else {
                throw GeneralError.io("write", path: variables, errno: EIO)
            }
        }
        let vm = try QEMUProcess(executable: qemu, arguments: arguments(
            options, accelerator: accelerator, variables: variables, imageFormat: format))
        defer { vm.stop() }
        var run = ConsoleRun(options: options, accelerator: accelerator)

        var consoleOpen = true, messagesOpen = true
        while consoleOpen || messagesOpen {
            let now = ContinuousClock.now
            if now >= deadline {
                vm.stop()
                throw BootError.timedOut(seconds: timeoutSeconds, stage: run.stage)
            }
            if let finishBy = run.finishBy, now >= finishBy { break }
            if accelerator == .kvm && !run.sawOutput && now - run.started >= kvmSilenceLimit {
                return .kvmFailed("no console output within \(kvmSilenceLimit.components.seconds) seconds")
            }
            var descriptors: [pollfd] = []
            if consoleOpen { descriptors.append(pollfd(fd: vm.consoleDescriptor, events: Int16(POLLIN), revents: 0)) }
            if messagesOpen { descriptors.append(pollfd(fd: vm.messagesDescriptor, events: Int16(POLLIN), revents: 0)) }
            let ready = poll(&descriptors, nfds_t(descriptors.count), 250)
            if ready < 0 && errno != EINTR {
                throw GeneralError.io("poll the console of", path: "qemu-system-x86_64", errno: errno)
            }
            for descriptor in descriptors where descriptor.revents != 0 {
                let bytes = vm.read(descriptor.fd)
                if descriptor.fd == vm.consoleDescriptor {
                    if bytes.isEmpty { consoleOpen = false; continue }
                    for event in run.console(bytes) where event == .passphrasePrompt && !run.typed {
                        run.typed = true
                        _ = passphrase.secret.withUnsafeBytes { vm.type($0) }
                        _ = [UInt8(ascii: "\r")].withUnsafeBytes { vm.type($0) }
                    }
                } else {
                    if bytes.isEmpty { messagesOpen = false; continue }
                    run.messages(bytes)
                    // KVM failing, even after the firmware printed: start again under TCG (the
                    // passphrase is typed again at the new prompt).
                    if accelerator == .kvm && run.expectedSeconds == nil, let failure = run.kvmFailure {
                        return .kvmFailed(failure)
                    }
                }
            }
        }
        // QEMU exited, or the outcome is known and the grace period is over.
        // Both pipes closed means QEMU is exiting even if it is not reaped yet.
        let exitedByItself = (!consoleOpen && !messagesOpen) || !vm.isRunning
        let status = exitedByItself ? vm.waitForExit() : 0
        vm.stop()
        if let seconds = run.expectedSeconds {
            return .booted(BootReport(image: options.image, accelerator: accelerator, kvmFallbackReason: nil,
                                      passphrasePromptSeconds: run.promptSeconds, expectedTextSeconds: seconds,
                                      expectedText: options.expectedText, snapshot: !options.writable))
        }
        if run.refused { throw BootError.passphraseRefused }
        if let line = run.grubStopped { throw BootError.grubStopped(line) }
        if let sign = run.guestStuck { throw BootError.guestStuck(sign) }
        if accelerator == .kvm && !run.sawOutput {
            return .kvmFailed(run.kvmFailure ?? "qemu exited with status \(status): \(run.lastMessage)")
        }
        if status != 0 { throw BootError.qemuFailed(status: status, detail: run.lastMessage) }
        // With no text to wait for (`--expect ''`), a clean power-off after the passphrase was typed is the success.
        if options.expectedText.isEmpty, let prompt = run.promptSeconds, exitedByItself {
            return .booted(BootReport(image: options.image, accelerator: accelerator, kvmFallbackReason: nil,
                                      passphrasePromptSeconds: prompt, expectedTextSeconds: nil,
                                      expectedText: "", snapshot: !options.writable))
        }
        throw BootError.poweredOffWithoutExpectedText(options.expectedText)
    }
}

/// The state of one QEMU run as its console and messages stream in.
struct ConsoleRun {
    let options: BootOptions
    let accelerator: Accelerator
    let started = ContinuousClock.now
    let scanner: SerialConsoleScanner
    let rawToTerminal = Console.isTerminal

    var sawOutput = false
    var typed = false
    var prompts = 0
    var promptSeconds: Double?
    var expectedSeconds: Double?
    var refused = false
    var grubStopped: String?
    /// What the guest printed when it got stuck after GRUB (a second passphrase prompt, an emergency shell).
    var guestStuck: String?
    /// When to stop the guest once the outcome is known.
    var finishBy: ContinuousClock.Instant?
    /// The end of QEMU's stderr (a KVM failure dumps registers there).
    var messageTail: [UInt8] = []

    init(options: BootOptions, accelerator: Accelerator) {
        self.options = options
        self.accelerator = accelerator
        scanner = SerialConsoleScanner(expecting: options.expectedText)
    }

    /// What the boot is still waiting for, for the timeout message.
    var stage: String {
        if !sawOutput { return "waiting for the firmware's first console output" }
        if !typed && expectedSeconds == nil { return "waiting for GRUB's passphrase prompt" }
        return "waiting for \"\(options.expectedText)\" on the console"
    }

    private var elapsed: Double {
        let duration = ContinuousClock.now - started
        return Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }

    /// Streams console bytes to the sink and updates the state; returns the events they completed.
    mutating func console(_ bytes: [UInt8]) -> [SerialConsoleScanner.Event] {
        sawOutput = true
        let (text, events) = scanner.consume(bytes)
        if options.consoleSink != nil {
            let shown = rawToTerminal ? bytes : text
            shown.withUnsafeBytes { buffer in
                var offset = 0
                while offset < buffer.count, let base = buffer.baseAddress {
                    let n = write(STDERR_FILENO, base + offset, buffer.count - offset)
                    if n < 0 && errno == EINTR { continue }
                    guard n > 0 else { break }
                    offset += n
                }
            }
        }
        for event in events {
            switch event {
            case .passphrasePrompt:
                prompts += 1
                if typed || prompts > 1 {
                    // GRUB asks again: the first answer was wrong.
                    refuse()
                } else {
                    promptSeconds = elapsed
                }
            case .passphraseRefused:
                refuse()
            case .grubStopped(let line):
                if grubStopped == nil { grubStopped = line }
                finishBy = finishBy ?? ContinuousClock.now + VirtualMachineBoot.grace
            case .expectedText:
                if expectedSeconds == nil && !refused { expectedSeconds = elapsed }
                finishBy = finishBy ?? ContinuousClock.now + VirtualMachineBoot.grace
            case .guestStuck(let sign):
                if guestStuck == nil && expectedSeconds == nil { guestStuck = sign }
                finishBy = finishBy ?? ContinuousClock.now + VirtualMachineBoot.grace
            }
        }
        return events
    }

    private mutating func refuse() {
        if expectedSeconds == nil { refused = true }
        finishBy = finishBy ?? ContinuousClock.now + VirtualMachineBoot.grace
    }

    mutating func messages(_ bytes: [UInt8]) {
        messageTail.append(contentsOf: bytes)
        if messageTail.count > 16384 { messageTail.removeFirst(messageTail.count - 16384) }
    }

    /// A KVM failure QEMU reported on stderr.
    var kvmFailure: String? {
        let signs = ["KVM internal error", "failed to initialize kvm", "Could not access KVM", "failed to set MSR",
                     "kvm_buf_set_msrs"]
        let lines = String(decoding: messageTail, as: UTF8.self).split(separator: "\n")
        guard let line = lines.first(where: { line in signs.contains { line.contains($0) } }) else { return nil }
        return line.trimmingCharacters(in: .whitespaces)
            .replacingOccurrences(of: "qemu-system-x86_64: ", with: "")
            .replacingOccurrences(of: "error: ", with: "")
    }

    /// QEMU's last stderr line, for error messages.
    var lastMessage: String {
        let text = String(decoding: messageTail, as: UTF8.self)
        let line = text.split(separator: "\n").last(where: { !$0.trimmingCharacters(in: .whitespaces).isEmpty }) ?? ""
        return line.trimmingCharacters(in: .whitespaces)
            .replacingOccurrences(of: "qemu-system-x86_64: ", with: "")
    }
}
