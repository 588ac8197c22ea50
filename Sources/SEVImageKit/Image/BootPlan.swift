import Foundation

/// How the image boots from inside its root, decided before anything is written: the kernel and initrd of the
/// tree, whether that initramfs can unlock LUKS, the initramfs's keyslot and unlock archive, and the
/// `/boot/grub/grub.cfg` that GRUB loads once it has unlocked the root.
struct BootPlan {
    var kernel: String
    var initrd: String?
    var inspection: InitramfsInspection?
    /// The keyslot for the initramfs: the unlock archive's generated key, or the author's own key file.
    var initramfsKey: InitramfsKeyfile?
    /// True when the tree's own grub.cfg is booted as it is.
    var keepsTreeConfig: Bool
    /// Whether the tree brought a grub.cfg (replaced unless kept).
    var treeHasConfig: Bool
    var commandLine: String
    var timeout: Int
    /// Lines for the progress output: what was found and chosen.
    var notes: [String] = []

    static let configPath = "/boot/grub/grub.cfg"

    static func make(tree: String, request: CreateRequest, ext4UUID: String, luksUUID: String) throws -> BootPlan {
        let profile = request.profile
        let (kernel, initrd) = try GrubRootConfig.findKernel(inTree: tree)
        let treeHasConfig = TreePath.exists(configPath, in: tree)
        var plan = BootPlan(kernel: kernel, initrd: initrd, keepsTreeConfig: treeHasConfig && profile.grubConfig == .keep,
                            treeHasConfig: treeHasConfig,
                            commandLine: GrubRootConfig.commandLine(rootUUID: ext4UUID, luksUUID: luksUUID, profile: profile),
                            timeout: profile.grubTimeout)
        if let own = request.initramfsKeyfile {
            plan.initramfsKey = own
        } else if profile.initramfsUnlock {
            if let initrd {
                let inspection = try InitramfsInspection.inspect("boot/" + initrd, in: tree)
                if let package = inspection.missingPackage {
                    throw InitramfsError.cannotUnlock(path: inspection.path, kind: inspection.kind.rawValue, package: package)
                }
                plan.inspection = inspection
                plan.initramfsKey = try InitramfsKeyfile.generate()
                let what = inspection.kind == .other ? "an initramfs sevimage does not know (neither initramfs-tools nor dracut)"
                    : "an initramfs (\(inspection.kind.rawValue)) that unlocks LUKS"
                plan.notes.append("/boot/\(initrd) is \(what): adding a keyslot for it and \(InitramfsKeyfile.archivePath)")
            } else {
                plan.notes.append("no initrd beside /boot/\(kernel): no unlock archive (the kernel must open the root by itself)")
            }
        }
        if plan.keepsTreeConfig {
            plan.notes.append("keeping the tree's \(configPath) (grub_cfg = \"keep\")"
                + (plan.writesArchive ? ": its initrd line must also load \(InitramfsKeyfile.archivePath)" : ""))
        } else if treeHasConfig {
            plan.notes.append("replacing the tree's \(configPath) with sevimage's (grub_cfg = \"keep\" in a profile keeps it)")
        }
        return plan
    }

    var writesArchive: Bool { initramfsKey?.installsInRoot == true }

    /// The generated grub.cfg: the tree's initrd, then the unlock archive.
    var config: GrubRootConfig {
        let archive = writesArchive ? [String(InitramfsKeyfile.archivePath.dropFirst("/boot/".count))] : []
        return GrubRootConfig(kernel: kernel, initrds: (initrd.map { [$0] } ?? []) + archive, commandLine: commandLine, timeout: timeout)
    }

    /// What the manifest and `--json` say about the boot; `archiveBlock` is where the unlock archive went.
    func summary(archiveBlock: UInt64?) -> Manifest.Boot {
        Manifest.Boot(kernel: "/boot/" + kernel, initrd: initrd.map { "/boot/" + $0 }, initramfs: inspection?.kind.rawValue,
                      unlockArchive: writesArchive ? InitramfsKeyfile.archivePath : nil, unlockArchiveBlock: writesArchive ? archiveBlock : nil,
                      grubConfig: keepsTreeConfig ? "tree" : "generated", kernelCommandLine: keepsTreeConfig ? nil : commandLine)
    }

    /// debugfs commands that write the grub.cfg (unless the tree's is kept) and the unlock archive.
    func debugfsCommands(tree: String, scratch: TemporaryDirectory, luksUUID: String, mtime: Int64) throws -> [String] {
        var commands: [String] = []
        if !keepsTreeConfig {
            let local = scratch.file("grub.cfg")
            try Data(config.text.utf8).write(to: URL(fileURLWithPath: local))
            let target = RootTree.debugfsQuoted(Self.configPath)
            if treeHasConfig {
                commands.append("rm \(target)")
            } else if !TreePath.isDirectory("boot/grub", in: tree) {
                commands += ["mkdir \"/boot/grub\""] + Self.rootOwned("\"/boot/grub\"", mode: "040755")
            }
            commands += ["write \"\(local)\" \(target)"] + Self.rootOwned(target, mode: "0100644")
        }
        if let key = initramfsKey {
            commands += try key.debugfsCommands(tree: tree, scratch: scratch, luksUUID: luksUUID, mtime: mtime)
        }
        return commands
    }

    static func rootOwned(_ quoted: String, mode: String) -> [String] {
        ["set_inode_field \(quoted) mode \(mode)", "set_inode_field \(quoted) uid 0", "set_inode_field \(quoted) gid 0"]
    }
}
