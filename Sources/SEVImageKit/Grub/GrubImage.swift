import Foundation

/// The GRUB that unlocks the root: built from Debian's `grub-efi-amd64-bin` with its config in a memdisk.
///
/// The ESP carries one (`EFI/BOOT/BOOTX64.EFI`, the standard boot path: a person types the passphrase).
/// Its embedded config unlocks the LUKS root by UUID, finds the ext4 inside by UUID, and loads
/// `/boot/grub/grub.cfg` from it. Whatever fails, it says so in one line that starts with `sevimage:`
/// and powers off: it never falls through to GRUB's shell or boots half a system.
public enum GrubImage {
    /// Modules built into the image: partition table, filesystems, LUKS2 with PBKDF2-SHA256 and AES, kernel loading.
    public static let modules = [
        "part_gpt", "fat", "ext2", "cryptodisk", "luks2", "gcry_rijndael", "gcry_sha256", "gcry_sha512", "pbkdf2",
        "search", "search_fs_uuid", "linux", "normal", "configfile", "echo", "test", "halt", "sleep", "all_video",
    ]

    /// The line GRUB prints before powering off when the root does not unlock.
    public static let unlockFailure = "sevimage: cannot unlock the root partition (wrong passphrase?); powering off"
    /// The line GRUB prints before powering off when the unlocked root has no usable grub.cfg.
    public static let configFailure = "sevimage: the unlocked root has no bootable /boot/grub/grub.cfg; powering off"

    /// The embedded config of the ESP's GRUB.
    public static func embeddedConfig(luksUUID: String, rootFilesystemUUID: String) -> String {
        let compact = luksUUID.replacingOccurrences(of: "-", with: "")
        return """
        # sevimage: unlock the LUKS2 root, then hand over to the grub.cfg inside it.
        set pager=0
        echo "Unlocking the encrypted root partition."
        if cryptomount -u \(compact); then
          if search --no-floppy --fs-uuid --set=root \(rootFilesystemUUID); then
            set prefix=($root)/boot/grub
            if [ -f ($root)/boot/grub/grub.cfg ]; then
              configfile ($root)/boot/grub/grub.cfg
            fi
          fi
          echo "\(configFailure)"
        else
          echo "\(unlockFailure)"
        fi
        sleep 1
        halt

        """
    }

    /// Builds the ESP's `BOOTX64.EFI` with `grub-mkstandalone`, whose own temporary directory goes into `scratch`
    /// (beside the output): under `$TMPDIR` or `/tmp` it failed on a read-only root filesystem without `$TMPDIR`.
    /// With `timestamp` (reproducible builds) the image is assembled like grub-mkstandalone does it, but from
    /// a memdisk tar whose entries all carry that time (grub-mkstandalone 2.06 stamps them with the current time).
    public static func buildStandalone(output: String, config: String, scratch: String, timestamp: Int64? = nil) throws {
        let configPath = scratch + "/grub-embedded.cfg"
        try Data(config.utf8).write(to: URL(fileURLWithPath: configPath))
        defer { unlink(configPath) }
        if let timestamp {
            try buildReproducible(output: output, configPath: configPath, scratch: scratch, timestamp: timestamp)
            return
        }
        try ExternalTool.grubMkstandalone.run([
            "-O", "x86_64-efi", "-o", output,
            "--modules=" + modules.joined(separator: " "),
            "--install-modules=" + modules.joined(separator: " "),
            "--locales=", "--themes=", "--fonts=",
            "boot/grub/grub.cfg=" + configPath,
        ], environment: ["TMPDIR": scratch])
    }
}

extension GrubImage {
    static let moduleDirectory = RuntimeFile.grubModules.candidates[0]

    /// grub-mkstandalone's memdisk (the config, the modules and their dependencies, the .lst files), as a
    /// tar with sorted entries, root ownership and one time, embedded by grub-mkimage with the same prefix.
    static func buildReproducible(output: String, configPath: String, scratch: String, timestamp: Int64) throws {
        let fm = FileManager.default
        let staging = scratch + "/grub-memdisk"
        let moduleTarget = staging + "/boot/grub/x86_64-efi"
        try? fm.removeItem(atPath: staging)
        defer { try? fm.removeItem(atPath: staging) }
        try fm.createDirectory(atPath: moduleTarget, withIntermediateDirectories: true)
        try fm.copyItem(atPath: configPath, toPath: staging + "/boot/grub/grub.cfg")
        var dependencies: [String: [String]] = [:]
        let moddep = (try? String(contentsOfFile: moduleDirectory + "/moddep.lst", encoding: .utf8)) ?? ""
        for line in moddep.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            guard let name = parts.first else { continue }
            dependencies[String(name)] = parts.count > 1 ? parts[1].split(separator: " ").map(String.init) : []
        }
        var closure = Set<String>(), pending = modules
        while let module = pending.popLast() {
            guard closure.insert(module).inserted else { continue }
            pending += dependencies[module] ?? []
        }
        let support = ((try? fm.contentsOfDirectory(atPath: moduleDirectory)) ?? []).filter { $0.hasSuffix(".lst") || $0 == "modinfo.sh" }
        for name in closure.map({ $0 + ".mod" }) + support {
            try fm.copyItem(atPath: moduleDirectory + "/" + name, toPath: moduleTarget + "/" + name)
        }
        let memdisk = scratch + "/grub-memdisk.tar"
        defer { unlink(memdisk) }
        try ExternalTool.tar.run([
            "--create", "--file", memdisk, "--format=ustar", "--sort=name", "--mtime=@\(timestamp)",
            "--owner=0", "--group=0", "--numeric-owner", "--mode=u=rwX,go=rX", "-C", staging, "boot",
        ])
        try ExternalTool.grubMkimage.run(["-O", "x86_64-efi", "-o", output, "-p", "(memdisk)/boot/grub", "-m", memdisk,
                                          "memdisk", "tar"] + modules)
    }
}

/// The `/boot/grub/grub.cfg` written into the root when the tree brings none.
public struct GrubRootConfig: Sendable {
    public var kernel: String
    /// The initrd files, in the order GRUB loads them (the tree's, then sevimage's unlock archive): all relative to `/boot`.
    public var initrds: [String]
    public var commandLine: String
    public var timeout: Int

    /// Boots the kernel from the unlocked volume; works whether GRUB's root is `(crypto0)` (the firmware's GRUB)
    /// or was found by UUID (the ESP's GRUB), since every path is relative to `$root`.
    public var text: String {
        var lines = [
            "# Written by sevimage: boots the newest kernel in /boot.",
            "set timeout=\(timeout)",
            "set default=0",
            "menuentry 'Linux \(kernel)' {",
            "  linux /boot/\(kernel) \(commandLine)",
        ]
        if !initrds.isEmpty { lines.append("  initrd " + initrds.map { "/boot/" + $0 }.joined(separator: " ")) }
        lines += ["}", ""]
        return lines.joined(separator: "\n")
    }

    /// The generated kernel command line: the root by its ext4 UUID, mounted read-write, and the LUKS volume
    /// that holds it (dracut and systemd open only what `rd.luks.uuid=` names), then the profile's words.
    public static func commandLine(rootUUID: String, luksUUID: String, profile: Profile) -> String {
        if profile.replaceKernelCommandLine {
            return profile.kernelCommandLine.replacingOccurrences(of: "@ROOT_UUID@", with: rootUUID)
                .replacingOccurrences(of: "@LUKS_UUID@", with: luksUUID)
        }
        return (["root=UUID=\(rootUUID)", "rd.luks.uuid=\(luksUUID)", "rw"] + (profile.kernelCommandLine.isEmpty ? [] : [profile.kernelCommandLine]))
            .joined(separator: " ")
    }

    /// Picks the newest `/boot/vmlinuz*` of a tree (version order) and its matching initrd. `/boot` is read
    /// inside the tree: a `boot` symlink that leads out of it leads nowhere.
    public static func findKernel(inTree tree: String) throws -> (kernel: String, initrd: String?) {
        let names = TreePath.contents(ofDirectory: "boot", in: tree)
        let kernels = names.filter { $0.hasPrefix("vmlinuz") && TreePath.isRegularFile("boot/" + $0, in: tree) }.sorted { versionLess($0, $1) }
        guard let kernel = kernels.last else { throw ImageBuildError.noKernel(tree) }
        let version = kernel.hasPrefix("vmlinuz-") ? String(kernel.dropFirst("vmlinuz-".count)) : ""
        let candidates = version.isEmpty
            ? ["initrd.img", "initrd", "initramfs.img"]
            : ["initrd.img-\(version)", "initrd-\(version).img", "initramfs-\(version).img", "initrd-\(version)"]
        return (kernel, candidates.first { names.contains($0) && TreePath.isRegularFile("boot/" + $0, in: tree) })
    }
}

/// Compares names the way version numbers sort: runs of digits numerically, the rest as text.
func versionLess(_ a: String, _ b: String) -> Bool {
    func parts(_ s: String) -> [(Bool, String)] {
        var result: [(Bool, String)] = []
        for c in s {
            let digit = c.isASCII && c.isNumber
            if let last = result.last, last.0 == digit { result[result.count - 1].1.append(c) } else { result.append((digit, String(c))) }
        }
        return result
    }
    let pa = parts(a), pb = parts(b)
    for (x, y) in zip(pa, pb) where x.1 != y.1 {
        if x.0 && y.0 {
            let nx = x.1.drop { $0 == "0" }, ny = y.1.drop { $0 == "0" }
            return nx.count != ny.count ? nx.count < ny.count : nx < ny
        }
        return x.1 < y.1
    }
    return pa.count < pb.count
}
