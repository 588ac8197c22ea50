import Foundation

/// The GRUB that goes into an AmdSev OVMF's firmware volume (`OvmfPkg/AmdSev/Grub/grub.efi`).
///
/// It is measured with the firmware, so everything up to the disk unlock is covered by the SEV launch
/// digest. It has no filesystem of its own: the config lives in a memdisk inside the binary.
///
///     grub.efi (grub-mkimage -O x86_64-efi -p '(crypto0)')
///     ├── modules: GPT, FAT, ext4, cryptodisk, LUKS/LUKS2, AES, SHA-256/512, PBKDF2, linux, ...
///     ├── embedded config: `normal (memdisk)/grub.cfg`  (the rescue parser knows no `if`)
///     └── memdisk (ustar): grub.cfg
///            1. built with `efisecret` (`--modules efisecret`, a GRUB that has it) → `cryptomount -s efisecret`
///               (the disk passphrase from the SEV secret table)
///            2. no such module, or no volume unlocked → `cryptomount -a` (a person types the passphrase)
///            3. the first (cryptoN) holding /boot/grub/grub.cfg → root=cryptoN, prefix=(cryptoN)/boot/grub,
///               `configfile /boot/grub/grub.cfg`
///            4. nothing unlocked or no config: one `sevimage: ...` line, then `halt`
///
/// The prefix `(crypto0)` is the one edk2's own `grub.sh` uses: grub-mkimage needs a prefix, and no disk
/// exists when this GRUB starts; `(crypto0)` is the name the first unlocked volume gets, so whatever GRUB
/// loads through its prefix (a module it autoloads) comes from the encrypted root, never from the
/// unencrypted ESP. The config sets the prefix to `(cryptoN)/boot/grub` before handing over.
///
/// A wrong passphrase leaves no `(crypto*)` volume, so nothing of the disk's contents is read and the
/// kernel is never reached: the config says `sevimage: cannot unlock ...` and powers off.
public enum FirmwareGrub {
    /// The prefix built into the image (see above).
    public static let prefix = "(crypto0)"

    /// Modules built into the image. `memdisk` and `tar` read the config; `regexp` expands `(crypto*)`.
    public static let defaultModules = [
        "part_gpt", "part_msdos", "fat", "ext2", "cryptodisk", "luks", "luks2",
        "gcry_rijndael", "gcry_sha256", "gcry_sha512", "pbkdf2",
        "memdisk", "tar", "normal", "configfile", "linux", "test", "regexp", "echo", "halt", "sleep",
        "search", "search_fs_uuid", "search_fs_file", "all_video",
    ]

    /// Debian's module directory (package `grub-efi-amd64-bin`).
    public static let defaultModuleDirectory = RuntimeFile.grubModules.candidates[0]

    /// The embedded (bootstrap) config: hand over to the memdisk's config in normal mode.
    public static let bootstrapConfig = "normal (memdisk)/grub.cfg\n"

    /// Printed when no volume unlocked (recognised by `sevimage boot` as a refused passphrase).
    public static let unlockFailure = "sevimage: cannot unlock the root partition (wrong passphrase?); powering off"
    /// Printed when volumes unlocked but none holds the config.
    public static let configFailure = "sevimage: no unlocked volume holds /boot/grub/grub.cfg; powering off"
    /// Printed when the root's config returned without booting anything.
    public static let returnedFailure = "sevimage: /boot/grub/grub.cfg on the encrypted root did not boot; powering off"

    /// The module that reads the disk passphrase from the SEV secret area (upstream GRUB 2.12's `efisecret`;
    /// Debian's GRUB 2.06 has none).
    public static let secretModule = "efisecret"

    /// The memdisk's `grub.cfg`. With `secretModule` built in, it first tries `cryptomount -s efisecret`.
    ///
    /// Whether that module is there is decided when the image is built, not by `insmod efisecret` at boot:
    /// GRUB 2.06's `insmod` reports success to the script even when the module file is missing (measured
    /// here: `if insmod efisecret` takes the `then` branch after "file not found"), and Debian's
    /// `cryptomount` rejects `-s` outright. Whatever the secret step did, the config then checks for an
    /// unlocked `(cryptoN)` itself and asks for the passphrase when there is none.
    public static func config(withSecretModule: Bool) -> String {
        let secretStep = withSecretModule ? """
            echo "Unlocking the encrypted root with the secret injected at launch."
            cryptomount -s \(secretModule)
            sevimage_find_root
            if [ "$sevimage_volumes" = 0 ]; then
              echo "The injected secret unlocked nothing; asking for the passphrase."
            fi

            """ : ""
        return """
            # sevimage: the firmware's GRUB. Unlock the LUKS root, then hand over to /boot/grub/grub.cfg inside it.
            # Nothing here reads the unencrypted ESP.
            set pager=0
            # Sets sevimage_volumes=1 when a (cryptoN) exists, sevimage_root=cryptoN for the first holding the config.
            function sevimage_find_root {
              set sevimage_volumes=0
              set sevimage_root=
              for sevimage_device in (crypto*); do
                if regexp --set=1:sevimage_name '^\\((crypto[0-9]+)\\)$' "$sevimage_device"; then
                  set sevimage_volumes=1
                  if [ -f "($sevimage_name)/boot/grub/grub.cfg" ]; then
                    set sevimage_root="$sevimage_name"
                    break
                  fi
                fi
              done
            }
            set sevimage_volumes=0
            \(secretStep)if [ "$sevimage_volumes" = 0 ]; then
              echo "Unlocking the encrypted root partition."
              cryptomount -a
              sevimage_find_root
            fi
            if [ -n "$sevimage_root" ]; then
              set root="$sevimage_root"
              set prefix=($root)/boot/grub
              echo "Loading /boot/grub/grub.cfg from ($root)."
              configfile /boot/grub/grub.cfg
              echo "\(returnedFailure)"
            elif [ "$sevimage_volumes" = 0 ]; then
              echo "\(unlockFailure)"
            else
              echo "\(configFailure)"
            fi
            sleep 1
            halt

            """
    }

    /// What `build` made.
    public struct Report: Sendable, Codable, Equatable {
        public var output: String
        public var size: Int
        public var sha256: String
        public var prefix: String
        public var modules: [String]
        public var moduleDirectory: String
        /// `grub-mkimage --version`, e.g. "grub-mkimage (GRUB) 2.06-13+deb12u1".
        public var grubVersion: String
    }

    /// The modules to build in: the defaults, then `extra` in order, without duplicates.
    public static func modules(adding extra: [String]) throws -> [String] {
        var result = defaultModules
        for name in extra where !result.contains(name) {
            guard !name.isEmpty, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") }) else {
                throw GeneralError.invalidArgument("module name '\(name)' is not a GRUB module name (letters, digits, _ and -)")
            }
            result.append(name)
        }
        return result
    }

    /// Builds `grub.efi` with `grub-mkimage` into a temporary file next to `output`, then publishes it.
    public static func build(output: String, extraModules: [String] = [], moduleDirectory: String = defaultModuleDirectory,
                             force: Bool = false) throws -> Report {
        let modules = try modules(adding: extraModules)
        try OutputFiles.checkWritable(output, force: force)
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: moduleDirectory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw GeneralError.invalidArgument(
                "GRUB module directory \(moduleDirectory) does not exist; install the Debian package grub-efi-amd64-bin")
        }
        for module in modules where !FileManager.default.fileExists(atPath: "\(moduleDirectory)/\(module).mod") {
            throw GeneralError.invalidArgument("GRUB module \(module) is not in \(moduleDirectory)")
        }
        let temporary = try TemporaryDirectory(near: output, purpose: "sevimage-grub")
        let bootstrap = temporary.file("bootstrap.cfg")
        let memdisk = temporary.file("memdisk.tar")
        let image = temporary.file("grub.efi")
        try Data(bootstrapConfig.utf8).write(to: URL(fileURLWithPath: bootstrap))
        let config = config(withSecretModule: modules.contains(secretModule))
        try Data(ustar([("grub.cfg", Array(config.utf8))])).write(to: URL(fileURLWithPath: memdisk))
        try ExternalTool.grubMkimage.run([
            "-O", "x86_64-efi", "-d", moduleDirectory, "-p", prefix,
            "-c", bootstrap, "-m", memdisk, "-o", image,
        ] + modules)
        let version = (try? ExternalTool.grubMkimage.run(["--version"]).stdoutText)?
            .trimmingCharacters(in: .whitespacesAndNewlines).split(separator: "/").last.map(String.init) ?? "unknown"
        let digest = hex(try Crypto.hashFile(image))
        let size = (try FileManager.default.attributesOfItem(atPath: image)[.size] as? NSNumber)?.intValue ?? 0
        try OutputFiles.publish(image, as: output, replace: force)
        return Report(output: output, size: size, sha256: digest, prefix: prefix, modules: modules,
                      moduleDirectory: moduleDirectory, grubVersion: version)
    }

    /// A POSIX ustar archive of regular files (mode 0644, owner 0, mtime 0), as GRUB's `tar` module reads it.
    static func ustar(_ files: [(name: String, data: [UInt8])]) -> [UInt8] {
        files.flatMap { file in
            TarEntryHeader.entry(name: file.name, kind: .file, mode: 0o644, uid: 0, gid: 0, size: UInt64(file.data.count), mtime: 0)
                + file.data + TarEntryHeader.padding(for: UInt64(file.data.count))
        } + TarEntryHeader.end
    }
}
