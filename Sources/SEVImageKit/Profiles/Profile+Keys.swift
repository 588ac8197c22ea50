/// Where a value came from, for error messages.
struct ProfileValueOrigin: Sendable {
    var file: String
    var line: Int
    var key: String
}

/// One TOML key of a profile: its place, what it means, how to read it into a `Profile` and write it back.
struct ProfileKey: Sendable {
    let table: String
    let key: String
    /// One line for `profiles show` and the README.
    let summary: String
    let get: @Sendable (Profile) -> TOMLValue
    let set: @Sendable (inout Profile, TOMLValue, ProfileValueOrigin) throws(ProfileError) -> Void

    var qualifiedKey: String { "\(table).\(key)" }
}

extension Profile {
    /// The smallest EFI system partition: FAT32 needs 65525 clusters (33 MiB with 512-byte sectors).
    public static let minimumESPSize: UInt64 = 33 << 20
    public static let maximumESPSize: UInt64 = 4 << 30
    /// Room the root partition needs at least beyond the ESP (LUKS header, ext4, re-encryption slack).
    public static let minimumRootSize: UInt64 = 64 << 20
    public static let maximumDiskSize: UInt64 = 64 << 40
    public static let pbkdf2IterationRange: ClosedRange<Int64> = 1000...100_000_000
    public static let vcpuRange: ClosedRange<Int64> = 1...512
    public static let grubTimeoutRange: ClosedRange<Int64> = 0...3600
    public static let measureModeNames = ["sev", "sev-es", "sev-snp"]

    /// Every key a profile may set, in the order `profiles show` prints them.
    static let keys: [ProfileKey] = [
        ProfileKey(table: "image", key: "size", summary: "virtual disk size: bytes, or a number with K, M, G or T (powers of 1024)",
                   get: { .string(formatSize($0.diskSize)) },
                   set: { profile, value, origin throws(ProfileError) in
                       profile.diskSize = try size(value, origin, range: (Profile.minimumESPSize + Profile.minimumRootSize)...Profile.maximumDiskSize)
                   }),
        ProfileKey(table: "esp", key: "size", summary: "EFI system partition size (FAT32: 33M to 4G)",
                   get: { .string(formatSize($0.espSize)) },
                   set: { profile, value, origin throws(ProfileError) in
                       profile.espSize = try size(value, origin, range: Profile.minimumESPSize...Profile.maximumESPSize)
                   }),
        ProfileKey(table: "luks", key: "pbkdf2_iterations", summary: "PBKDF2-SHA256 iterations of the generated passphrase's keyslot",
                   get: { .integer(Int64($0.pbkdf2Iterations)) },
                   set: { profile, value, origin throws(ProfileError) in
                       profile.pbkdf2Iterations = UInt32(try integer(value, origin, range: Profile.pbkdf2IterationRange))
                   }),
        ProfileKey(table: "luks", key: "recovery_pbkdf2_iterations", summary: "PBKDF2-SHA256 iterations of a keyslot for a passphrase a person types",
                   get: { .integer(Int64($0.recoveryPbkdf2Iterations)) },
                   set: { profile, value, origin throws(ProfileError) in
                       profile.recoveryPbkdf2Iterations = UInt32(try integer(value, origin, range: Profile.pbkdf2IterationRange))
                   }),
        ProfileKey(table: "luks", key: "wipe_free_space", summary: "encrypt the whole root partition, free space included",
                   get: { .boolean($0.wipeFreeSpace) },
                   set: { profile, value, origin throws(ProfileError) in profile.wipeFreeSpace = try boolean(value, origin) }),
        ProfileKey(table: "boot", key: "kernel_cmdline", summary: "appended to the generated kernel command line (root=UUID=… rd.luks.uuid=… rw)",
                   get: { .string($0.kernelCommandLine) },
                   set: { profile, value, origin throws(ProfileError) in
                       let text = try string(value, origin)
                       if text.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) {
                           throw ProfileError.invalidValue(file: origin.file, line: origin.line, key: origin.key,
                                                           message: "must be one line without control characters")
                       }
                       profile.kernelCommandLine = text
                   }),
        ProfileKey(table: "boot", key: "replace_kernel_cmdline", summary: "kernel_cmdline is the whole command line (@ROOT_UUID@ and @LUKS_UUID@ filled in)",
                   get: { .boolean($0.replaceKernelCommandLine) },
                   set: { profile, value, origin throws(ProfileError) in profile.replaceKernelCommandLine = try boolean(value, origin) }),
        ProfileKey(table: "boot", key: "grub_cfg", summary: "a /boot/grub/grub.cfg in the tree: \"generate\" replaces it, \"keep\" boots it",
                   get: { .string($0.grubConfig.rawValue) },
                   set: { profile, value, origin throws(ProfileError) in
                       let text = try string(value, origin)
                       guard let choice = GrubConfigChoice(rawValue: text) else {
                           throw ProfileError.invalidValue(file: origin.file, line: origin.line, key: origin.key,
                                                           message: "must be \"generate\" or \"keep\", not '\(printable(text))'")
                       }
                       profile.grubConfig = choice
                   }),
        ProfileKey(table: "boot", key: "initramfs_unlock", summary: "a keyslot and an archive in /boot that let the initramfs unlock the root without a prompt",
                   get: { .boolean($0.initramfsUnlock) },
                   set: { profile, value, origin throws(ProfileError) in profile.initramfsUnlock = try boolean(value, origin) }),
        ProfileKey(table: "boot", key: "grub_timeout", summary: "seconds GRUB's menu waits in a generated grub.cfg (0 to 3600)",
                   get: { .integer(Int64($0.grubTimeout)) },
                   set: { profile, value, origin throws(ProfileError) in
                       profile.grubTimeout = Int(try integer(value, origin, range: Profile.grubTimeoutRange))
                   }),
        ProfileKey(table: "firmware", key: "measure_modes", summary: "launch digests to record with --ovmf: any of sev, sev-es, sev-snp",
                   get: { .array($0.measureModes.map(TOMLValue.string)) },
                   set: { profile, value, origin throws(ProfileError) in
                       let modes = try array(value, origin, of: "strings") { element throws(ProfileError) -> String in
                           guard case .string(let mode) = element else { throw ProfileError.wrongType(file: origin.file, line: origin.line, key: origin.key, expected: "an array of strings", found: "an array holding \(element.typeDescription)") }
                           guard Profile.measureModeNames.contains(mode) else {
                               throw ProfileError.invalidValue(file: origin.file, line: origin.line, key: origin.key,
                                                               message: "has an unknown mode '\(printable(mode))' (use sev, sev-es or sev-snp)")
                           }
                           return mode
                       }
                       profile.measureModes = modes
                   }),
        ProfileKey(table: "firmware", key: "vcpus", summary: "vCPU counts for the SEV-ES and SEV-SNP digests (1 to 512)",
                   get: { .array($0.vcpus.map { .integer(Int64($0)) }) },
                   set: { profile, value, origin throws(ProfileError) in
                       switch value {
                       case .integer, .float:
                           profile.vcpus = [Int(try integer(value, origin, range: Profile.vcpuRange))]
                           return
                       default:
                           break
                       }
                       profile.vcpus = try array(value, origin, of: "integers") { element throws(ProfileError) -> Int in
                           if case .float = element { return Int(try integer(element, origin, range: Profile.vcpuRange)) }
                           guard case .integer = element else { throw ProfileError.wrongType(file: origin.file, line: origin.line, key: origin.key, expected: "an array of integers", found: "an array holding \(element.typeDescription)") }
                           return Int(try integer(element, origin, range: Profile.vcpuRange))
                       }
                   }),
        ProfileKey(table: "firmware", key: "vcpu_type", summary: "QEMU vCPU type for the SEV-ES and SEV-SNP digests",
                   get: { .string($0.vcpuType) },
                   set: { profile, value, origin throws(ProfileError) in
                       let text = try string(value, origin)
                       let nameCharacters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-".unicodeScalars
                       let allowed = text.unicodeScalars.allSatisfy { nameCharacters.contains($0) }
                       guard !text.isEmpty, allowed else {
                           throw ProfileError.invalidValue(file: origin.file, line: origin.line, key: origin.key,
                                                           message: "must be a QEMU cpu model name such as EPYC-v4 (letters, digits, '.', '_', '-')")
                       }
                       profile.vcpuType = text
                   }),
        ProfileKey(table: "firmware", key: "standard_boot_only", summary: "accept a firmware without an SEV secret area (typed passphrase only)",
                   get: { .boolean($0.allowStandardBootOnly) },
                   set: { profile, value, origin throws(ProfileError) in profile.allowStandardBootOnly = try boolean(value, origin) }),
        ProfileKey(table: "output", key: "json", summary: "print one JSON object on stdout, as --json does",
                   get: { .boolean($0.json) },
                   set: { profile, value, origin throws(ProfileError) in profile.json = try boolean(value, origin) }),
        ProfileKey(table: "output", key: "quiet", summary: "print no progress, as --quiet does",
                   get: { .boolean($0.quiet) },
                   set: { profile, value, origin throws(ProfileError) in profile.quiet = try boolean(value, origin) }),
        ProfileKey(table: "recovery", key: "keyslot", summary: "add a keyslot for a recovery passphrase a person keeps",
                   get: { .boolean($0.recoveryKeyslot) },
                   set: { profile, value, origin throws(ProfileError) in profile.recoveryKeyslot = try boolean(value, origin) }),
    ]

    /// The tables in the order they are printed.
    static var tables: [String] {
        var seen: [String] = []
        for key in keys where !seen.contains(key.table) { seen.append(key.table) }
        return seen
    }
}

// MARK: - Value readers

private func wrongType(_ value: TOMLValue, _ origin: ProfileValueOrigin, expected: String) -> ProfileError {
    .wrongType(file: origin.file, line: origin.line, key: origin.key, expected: expected, found: value.typeDescription)
}

/// A float where a whole number belongs (an integer or a size): said as such, since `1.5` is an easy mistake.
private func notWhole(_ value: TOMLValue, _ origin: ProfileValueOrigin) -> ProfileError {
    .notWholeNumber(file: origin.file, line: origin.line, key: origin.key, text: value.tomlText)
}

private func boolean(_ value: TOMLValue, _ origin: ProfileValueOrigin) throws(ProfileError) -> Bool {
    guard case .boolean(let flag) = value else { throw wrongType(value, origin, expected: "true or false") }
    return flag
}

private func string(_ value: TOMLValue, _ origin: ProfileValueOrigin) throws(ProfileError) -> String {
    guard case .string(let text) = value else { throw wrongType(value, origin, expected: "a string") }
    return text
}

private func integer(_ value: TOMLValue, _ origin: ProfileValueOrigin, range: ClosedRange<Int64>) throws(ProfileError) -> Int64 {
    if case .float = value { throw notWhole(value, origin) }
    guard case .integer(let number) = value else { throw wrongType(value, origin, expected: "an integer") }
    guard range.contains(number) else {
        throw ProfileError.invalidValue(file: origin.file, line: origin.line, key: origin.key,
                                        message: "must be between \(TOMLValue.integer(range.lowerBound).tomlText) and \(TOMLValue.integer(range.upperBound).tomlText), not \(TOMLValue.integer(number).tomlText)")
    }
    return number
}

/// A size: a string such as "8G" or an integer number of bytes.
private func size(_ value: TOMLValue, _ origin: ProfileValueOrigin, range: ClosedRange<UInt64>) throws(ProfileError) -> UInt64 {
    let bytes: UInt64
    switch value {
    case .string(let text):
        do {
            bytes = try parseSize(text)
        } catch {
            throw ProfileError.invalidValue(file: origin.file, line: origin.line, key: origin.key,
                                            message: "is not a size: \(error.description.replacingFirst("invalid size '\(text)': "))")
        }
    case .integer(let number) where number > 0:
        bytes = UInt64(number)
    case .integer:
        throw ProfileError.invalidValue(file: origin.file, line: origin.line, key: origin.key, message: "must be greater than zero")
    case .float:
        throw notWhole(value, origin)
    default:
        throw wrongType(value, origin, expected: "a size such as \"8G\" or a number of bytes")
    }
    guard range.contains(bytes) else {
        throw ProfileError.invalidValue(file: origin.file, line: origin.line, key: origin.key,
                                        message: "must be between \(formatSize(range.lowerBound)) and \(formatSize(range.upperBound)), not \(formatSize(bytes))")
    }
    return bytes
}

private func array<Element: Equatable>(_ value: TOMLValue, _ origin: ProfileValueOrigin, of what: String,
                                       _ element: (TOMLValue) throws(ProfileError) -> Element) throws(ProfileError) -> [Element] {
    guard case .array(let values) = value else { throw wrongType(value, origin, expected: "an array of \(what)") }
    guard !values.isEmpty else {
        throw ProfileError.invalidValue(file: origin.file, line: origin.line, key: origin.key, message: "needs at least one value")
    }
    var result: [Element] = []
    for value in values {
        let item = try element(value)
        guard !result.contains(item) else {
            throw ProfileError.invalidValue(file: origin.file, line: origin.line, key: origin.key, message: "lists \(value.tomlText) twice")
        }
        result.append(item)
    }
    return result
}

/// `100_000_000` style, as a profile would write it.
func grouped(_ number: Int64) -> String {
    let digits = String(number.magnitude)
    var result = ""
    for (index, character) in digits.enumerated() {
        if index > 0 && (digits.count - index) % 3 == 0 { result.append("_") }
        result.append(character)
    }
    return (number < 0 ? "-" : "") + result
}

private extension String {
    func replacingFirst(_ prefix: String) -> String {
        hasPrefix(prefix) ? String(dropFirst(prefix.count)) : self
    }
}

extension TOMLValue {
    /// The value written as TOML.
    var tomlText: String {
        switch self {
        case .string(let text):
            var escaped = "\""
            for scalar in text.unicodeScalars {
                switch scalar {
                case "\"": escaped += "\\\""
                case "\\": escaped += "\\\\"
                case "\n": escaped += "\\n"
                case "\t": escaped += "\\t"
                case "\r": escaped += "\\r"
                default:
                    if scalar.value < 0x20 || scalar.value == 0x7f {
                        let hex = String(scalar.value, radix: 16)
                        escaped += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                    } else {
                        escaped.unicodeScalars.append(scalar)
                    }
                }
            }
            return escaped + "\""
        case .integer(let number):
            return number >= 10_000 || number <= -10_000 ? grouped(number) : String(number)
        case .boolean(let flag):
            return flag ? "true" : "false"
        case .array(let values):
            return "[" + values.map(\.tomlText).joined(separator: ", ") + "]"
        case .float(let number):
            return number.isNaN ? "nan" : number.description
        case .date(let text), .time(let text), .dateTime(let text):
            return text
        case .table(let members):
            guard !members.isEmpty else { return "{}" }
            let pairs = members.sorted { $0.key < $1.key }.map { "\(TOMLReader.displayPath([$0.key])) = \($0.value.tomlText)" }
            return "{ " + pairs.joined(separator: ", ") + " }"
        }
    }
}
