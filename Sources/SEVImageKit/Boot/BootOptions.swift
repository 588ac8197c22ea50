import Foundation

/// How `sevimage boot` runs an image: the image author's smoke test on plain OVMF ("standard boot"
/// through the unencrypted ESP), with the passphrase typed at GRUB's prompt on the serial console.
public struct BootOptions: Sendable {
    /// Debian's OVMF (package `ovmf`): 4 MiB flash, code and variables in two files.
    public static let debianFirmwareCode = RuntimeFile.ovmfCode.candidates[0]
    public static let debianFirmwareVariables = RuntimeFile.ovmfVariables.candidates[0]
    /// What the demo root tree's init prints once the kernel from the encrypted root runs.
    public static let defaultExpectedText = "SEVIMAGE-BOOT-OK"

    public var image: String
    /// The read-only firmware code.
    public var firmwareCode: String = BootOptions.debianFirmwareCode
    /// A variables template; the boot writes to a private copy, never to this file.
    public var firmwareVariables: String = BootOptions.debianFirmwareVariables
    /// A whole firmware in one file (an AmdSev `OVMF.fd`: code, variables and its own GRUB), given to QEMU
    /// as `-bios`. When set, `firmwareCode` and `firmwareVariables` are not used. QEMU maps `-bios` read-only:
    /// the file is never written.
    public var firmwareImage: String?
    /// Wall-clock limit for the whole boot, KVM attempt included.
    public var timeout: Duration = .seconds(300)
    /// The console text that means success.
    public var expectedText: String = BootOptions.defaultExpectedText
    public var memoryMiB: Int = 512
    public var accelerator: Accelerator = .auto
    /// Whether the guest may write to the image. Off by default: QEMU's `snapshot=on` sends writes to a
    /// temporary overlay, so the smoke test leaves the image (and the SHA-256 in its manifest) unchanged.
    public var writable: Bool = false
    /// Where the console goes while the guest runs; nil keeps it quiet.
    public var consoleSink: ConsoleSink? = .standardError

    public init(image: String) {
        self.image = image
    }
}

/// Which QEMU accelerator runs the guest.
public enum Accelerator: String, Sendable, CaseIterable, Codable {
    /// KVM when `/dev/kvm` opens and the guest actually starts under it; TCG otherwise.
    case auto
    case kvm
    /// QEMU's emulator: slow (a boot takes 10-60 s) but works everywhere.
    case tcg
}

/// Where the guest's serial console is streamed.
public enum ConsoleSink: Sendable {
    /// stderr, byte for byte on a terminal; without escape sequences and carriage returns otherwise.
    case standardError
}

/// What a successful boot looked like.
public struct BootReport: Sendable, Codable, Equatable {
    public var image: String
    /// The accelerator the successful run used.
    public var accelerator: Accelerator
    /// Why KVM was given up in `auto` mode, if it was tried.
    public var kvmFallbackReason: String?
    /// Seconds from QEMU's start (of the run that succeeded) to GRUB's prompt, if GRUB asked.
    public var passphrasePromptSeconds: Double?
    /// Seconds from QEMU's start (of the run that succeeded) to the expected text (nil: `--expect ''` and a clean power-off).
    public var expectedTextSeconds: Double?
    public var expectedText: String
    public var snapshot: Bool
}

/// A size in MiB for `--memory`: `512`, `512M`, `1G`, `1024MiB`.
public func parseMemoryMiB(_ text: String) throws -> Int {
    let trimmed = text.trimmingCharacters(in: .whitespaces)
    let digits = trimmed.prefix { $0.isASCII && $0.isNumber }
    let unit = trimmed.dropFirst(digits.count).uppercased()
    guard let number = Int(digits) else { throw BootError.invalidMemory(text) }
    let factor: Int
    switch unit {
    case "", "M", "MB", "MIB": factor = 1
    case "G", "GB", "GIB": factor = 1024
    default: throw BootError.invalidMemory(text)
    }
    let (mib, overflow) = number.multipliedReportingOverflow(by: factor)
    guard !overflow, mib >= 128, mib <= 1 << 20 else { throw BootError.invalidMemory(text) }
    return mib
}
