import Foundation
import Testing
@testable import SEVImageKit

/// The pipeline-stage image (`scripts/build-stage-image.sh`), built once per run into `.cache/stage-image` from the
/// release binary. `scripts/test.sh` builds the binary before the tests (the tests cannot run `swift build` while
/// `swift test` holds `.build`) and starts the image build in the background; the script's lock and `--reuse`
/// make the tests wait for that build and reuse it.
enum StageImage {
    static let layout = repositoryRoot.path + "/.cache/stage-image"
    static let releaseBinary = ProcessInfo.processInfo.environment["SEVIMAGE_STAGE_BINARY"] ?? repositoryRoot.path + "/.build/release/sevimage"
    static let canBuild = getuid() == 0 && ["mmdebstrap", "umoci", "skopeo", "chroot", "unshare"].allSatisfy(hasTool)
        && FileManager.default.isExecutableFile(atPath: releaseBinary)
    static let reason: Comment = "needs root, mmdebstrap, umoci and skopeo (scripts/install-deps.sh --test) and the release binary (scripts/build-release.sh; scripts/test.sh builds it)"
    /// The user the image runs as, which deploy/ must run as too.
    static let user: UInt32 = 65532

    /// `oci:DIR:TAG`.
    static let reference: Result<String, any Error> = Result {
        let result = try runProgram(repositoryRoot.path + "/scripts/build-stage-image.sh",
                                    ["--binary", releaseBinary, "--output", layout, "--reuse"])
        guard result.status == 0 else { throw GeneralError.toolFailed("build-stage-image.sh", status: result.status, stderr: result.stderr) }
        return result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The image's tree as umoci unpacks it (as root: owners and modes as in the layers), once per run.
    static let rootfs: Result<String, any Error> = Result {
        let image = try StageImage.reference.get()
        let bundle = repositoryRoot.path + "/.cache/stage-image-bundle"
        try? FileManager.default.removeItem(atPath: bundle)
        try runChecked("umoci", ["unpack", "--image", String(image.dropFirst("oci:".count)), bundle])
        return bundle + "/rootfs"
    }

    /// Runs a shell command inside the unpacked tree (`chroot` as root, with /proc mounted in a private mount
    /// namespace: the static binary reads its arguments from /proc/self/cmdline): for looking, not for the
    /// restricted runs.
    static func inTree(_ rootfs: String, _ script: String, _ arguments: [String] = []) throws -> RunResult {
        let enter = #"root=$1; script=$2; shift 2; mount -t proc proc "$root/proc" && exec chroot "$root" /bin/sh -c "$script" sh "$@""#
        return try runProgram("unshare", ["--mount", "--propagation", "private", "/bin/sh", "-c", enter, "sh", rootfs, script] + arguments)
    }
}

/// A root tree as a pipeline hands it over (a zstd tarball: owners, modes and the 0600 key survive without the
/// reader being root), the passphrases as Secret volumes lay them out, and the directories a pod mounts.
final class StageFixture {
    let scratch: Scratch
    let input: String
    let images: String
    let secrets: String
    let work: String
    var passphrase: String { secrets + "/passphrase/passphrase" }
    var newPassphrase: String { secrets + "/new-passphrase/passphrase" }
    var image: String { images + "/vm.qcow2" }

    /// `owner`: the host uid and gid that owns the writable directories and the Secret files (a Secret volume
    /// is root:fsGroup 0440; under rootless podman, the host id the image's user maps to, 0400).
    init(owner: (uid: UInt32, gid: UInt32)?, secretMode: mode_t) throws {
        scratch = try Scratch()
        input = scratch.file("input")
        images = scratch.file("images")
        secrets = scratch.file("secrets")
        work = scratch.file("work")
        let tree = scratch.file("tree")
        try makeRichTree(at: tree, owners: true)
        for directory in [input, images, work, secrets + "/passphrase", secrets + "/new-passphrase"] {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            chmod(directory, 0o755)
        }
        chmod(secrets, 0o755)
        try runChecked("tar", ["--zstd", "--create", "--file", input + "/rootfs.tar.zst", "--numeric-owner", "-C", tree, "."])
        chmod(input + "/rootfs.tar.zst", 0o644)
        for (path, text) in [(passphrase, "stage first passphrase 0123456789"), (newPassphrase, "stage second passphrase 9876543210")] {
            try Data(text.utf8).write(to: URL(fileURLWithPath: path))
            chmod(path, secretMode)
        }
        if let owner {
            for path in [images, work] { chown(path, owner.uid, owner.gid) }
            chown(passphrase, secretMode & 0o040 != 0 ? 0 : owner.uid, owner.gid)
            chown(newPassphrase, secretMode & 0o040 != 0 ? 0 : owner.uid, owner.gid)
        }
    }

    /// Names, sizes, modes and mtimes under the read-only inputs: a run must leave them as they were.
    func readOnlySnapshot() -> [String] {
        var lines: [String] = []
        for root in [input, secrets] {
            let enumerator = FileManager.default.enumerator(atPath: root)
            while let name = enumerator?.nextObject() as? String {
                var info = stat()
                lstat(root + "/" + name, &info)
                lines.append("\(root)/\(name) \(info.st_size) \(info.st_mode) \(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec)")
            }
        }
        return lines.sorted()
    }

    /// The image opens with `opens` and not with `refuses` (cryptsetup on the raw view qemu-img makes), passes
    /// `qemu-img check` and the host's `sevimage verify`, and its decrypted root (Python's AES-XTS with the key
    /// cryptsetup recovers) passes `e2fsck -fn` and holds the tree's files with their owners.
    func expectImageHolds(opens: String, refuses: String?, _ label: String) throws {
        try runChecked("qemu-img", ["check", "-f", "qcow2", image])
        let verify = try sevimage(["verify", image, "--passphrase-file", opens, "--json"])
        #expect(verify.status == 0, "\(label): host verify: \(verify)")
        let opened = try OpenedImage(image: image)
        #expect(try runProgram("cryptsetup", ["open", "--test-passphrase", "--key-file", opens, opened.luksPartition]).status == 0, "\(label)")
        if let refuses {
            #expect(try runProgram("cryptsetup", ["open", "--test-passphrase", "--key-file", refuses, opened.luksPartition]).status != 0, "\(label)")
        }
        let plain = try opened.decryptRoot(passphraseFile: opens)
        try runChecked("e2fsck", ["-fn", plain])
        #expect(try runChecked("debugfs", ["-R", "cat /etc/hostname", plain]).stdout == "demo\n", "\(label)")
        let stat = try runChecked("debugfs", ["-R", "stat \"/home/user/a file with spaces\"", plain]).stdout
        #expect(stat.contains("User:  1000") && stat.contains("Group:   100"), "\(label): \(stat)")
    }
}

/// The deploy/ definitions' `sevimage` commands, scripts and environments (PyYAML reads them).
struct DeployCommand {
    var script: String
    var environment: [String]

    /// The container of the Job named `job` in deploy/kubernetes/sevimage-jobs.yaml.
    static func job(_ job: String) throws -> DeployCommand {
        let program = """
            import json, sys, yaml
            for document in yaml.safe_load_all(open(sys.argv[1])):
                if document["metadata"]["name"] == sys.argv[2]:
                    container = document["spec"]["template"]["spec"]["containers"][0]
                    print(json.dumps({"script": container["args"][0], "env": [e["name"] + "=" + e["value"] for e in container["env"]]}))
            """
        let result = try runChecked(python3, ["-c", program, repositoryRoot.path + "/deploy/kubernetes/sevimage-jobs.yaml", job])
        let object = try jsonObject(result.stdoutData)
        return DeployCommand(script: object["script"] as? String ?? "", environment: object["env"] as? [String] ?? [])
    }
}

@Suite("stage image", .serialized) struct StageImageTests {
    /// The image's config names a numeric non-root user (Kubernetes' runAsNonRoot can only check a number), the
    /// entrypoint, /work as the working directory and TMPDIR; deploy/ runs as the same user; the layout is two
    /// layers and small (65 MiB compressed when written: Debian 12's essential set and the runtime packages, and
    /// the 58 MiB static binary).
    @Test(.enabled(if: StageImage.canBuild, StageImage.reason))
    func configNamesTheNonRootUserAndTheEntrypoint() throws {
        let reference = try StageImage.reference.get()
        let config = try jsonObject(try runChecked("skopeo", ["inspect", "--config", reference]).stdoutData)
        let inner = try #require(config["config"] as? [String: Any])
        let user = try #require(inner["User"] as? String)
        let ids = user.split(separator: ":").map { UInt32($0) }
        #expect(ids.count == 2 && ids.allSatisfy { $0 == StageImage.user }, "User \(user)")
        #expect(inner["Entrypoint"] as? [String] == ["/usr/local/bin/sevimage"])
        #expect(inner["WorkingDir"] as? String == "/work")
        let environment = inner["Env"] as? [String] ?? []
        #expect(environment.contains("TMPDIR=/work") && environment.contains("HOME=/home/sevimage"), "\(environment)")
        let manifest = try jsonObject(try runChecked("skopeo", ["inspect", "--raw", reference]).stdoutData)
        let layers = manifest["layers"] as? [[String: Any]] ?? []
        let bytes = layers.compactMap { $0["size"] as? Int }.reduce(0, +)
        #expect(layers.count == 2 && bytes > 20 << 20 && bytes < 100 << 20, "\(layers.count) layers, \(bytes >> 20) MiB")
        // deploy/'s Jobs and Tasks run as the image's user.
        let users = try runChecked("/bin/sh", ["-c", "grep -rh 'runAsUser:' '\(repositoryRoot.path)/deploy' | sort -u"]).stdout
        let declared = Set(users.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) })
        #expect(declared == ["runAsUser: \(StageImage.user)"], "\(users)")
    }

    /// Reproducible: a second build from the same binary, commit (SOURCE_DATE_EPOCH's default) and mirror state,
    /// into another directory, gives the same manifest digest and so the same layers and config (35-40 s here
    /// with the packages in apt's cache; a mirror that changed between the two builds would differ).
    @Test(.enabled(if: StageImage.canBuild, StageImage.reason))
    func aSecondBuildGivesTheSameDigest() throws {
        let reference = try StageImage.reference.get()
        let scratch = try Scratch()
        let again = try runProgram(repositoryRoot.path + "/scripts/build-stage-image.sh",
                                   ["--binary", StageImage.releaseBinary, "--output", scratch.file("again")])
        #expect(again.status == 0, "\(again)")
        let tag = String(reference.split(separator: ":").last ?? "")
        #expect(again.stdout == "oci:\(scratch.file("again")):\(tag)\n", "\(again.stdout)")
        func digest(_ layout: String) throws -> String? {
            let index = try jsonObject(Data(contentsOf: URL(fileURLWithPath: layout + "/index.json")))
            return (index["manifests"] as? [[String: Any]])?.first?["digest"] as? String
        }
        let first = try digest(StageImage.layout), second = try digest(scratch.file("again"))
        #expect(first != nil && first == second, "\(String(describing: first)) and \(String(describing: second))")
    }

    /// The tree holds every program and file `sevimage doctor --pipeline --json` lists (the list the code launches
    /// programs from, so the image cannot drift from it), the image's own sevimage finds them all, the boot-only
    /// ones (QEMU, OVMF) are left out, and there is no compiler, apt, package list, manual page or documentation
    /// beyond the copyright files.
    @Test(.enabled(if: StageImage.canBuild, StageImage.reason))
    func treeHoldsEveryProgramDoctorListsAndNothingElse() throws {
        let rootfs = try StageImage.rootfs.get()
        let doctor = try jsonObject(try sevimage(["doctor", "--pipeline", "--json"]).stdoutData)
        let entries = try #require(doctor["entries"] as? [[String: Any]])
        #expect(entries.count >= 15, "\(entries.count) entries")
        for entry in entries {
            let name = entry["name"] as? String ?? "?"
            if entry["kind"] as? String == "program" {
                let found = try StageImage.inTree(rootfs, "command -v \"$1\"", [name])
                #expect(found.status == 0, "\(name) is not in the image's PATH")
            } else {
                let candidates = entry["searched"] as? [String] ?? []
                let found = try candidates.contains { try StageImage.inTree(rootfs, "test -e \"$1\"", [$0]).status == 0 }
                #expect(found, "\(name) (\(candidates)) is not in the image")
            }
        }
        // The image's own binary, in its own tree, finds everything (optional libeatmydata included).
        let own = try StageImage.inTree(rootfs, "exec /usr/local/bin/sevimage doctor --pipeline --json")
        #expect(own.status == 0, "\(own)")
        let ownReport = try jsonObject(own.stdoutData)
        let ownEntries = ownReport["entries"] as? [[String: Any]] ?? []
        #expect(ownReport["passed"] as? Bool == true)
        #expect(ownEntries.allSatisfy { $0["path"] is String }, "\(ownEntries.filter { !($0["path"] is String) })")
        #expect(Set(ownEntries.compactMap { $0["name"] as? String }) == Set(entries.compactMap { $0["name"] as? String }))
        // Boot's programs and files are not in it.
        let boot = try jsonObject(try sevimage(["doctor", "--command", "boot", "--json"]).stdoutData)["entries"] as? [[String: Any]] ?? []
        #expect(!boot.isEmpty)
        for entry in boot {
            let name = entry["name"] as? String ?? "?"
            let paths = entry["kind"] as? String == "program" ? ["/usr/bin/\(name)", "/usr/sbin/\(name)"] : entry["searched"] as? [String] ?? []
            #expect(try paths.allSatisfy { try StageImage.inTree(rootfs, "test ! -e \"$1\"", [$0]).status == 0 }, "\(name) is in the image")
        }
        for program in ["cc", "gcc", "clang", "swift", "apt", "apt-get", "make"] {
            #expect(try StageImage.inTree(rootfs, "! command -v \"$1\"", [program]).status == 0, "\(program) is in the image")
        }
        func files(under directory: String) -> [String] {
            var found: [String] = []
            let enumerator = FileManager.default.enumerator(atPath: rootfs + "/" + directory)
            while let name = enumerator?.nextObject() as? String {
                var info = stat()
                if lstat(rootfs + "/" + directory + "/" + name, &info) == 0, (info.st_mode & S_IFMT) != S_IFDIR { found.append(name) }
            }
            return found
        }
        func isLock(_ name: String) -> Bool { name == "lock" || name.hasSuffix("/lock") }
        #expect(files(under: "var/lib/apt/lists").allSatisfy(isLock), "\(files(under: "var/lib/apt/lists"))")
        #expect(files(under: "usr/share/man").isEmpty && files(under: "usr/share/locale").isEmpty && files(under: "usr/share/info").isEmpty)
        let docs = files(under: "usr/share/doc")
        // Only copyright files, and the directory symlinks some packages ship instead of their own directory.
        #expect(!docs.isEmpty && docs.allSatisfy { $0.hasSuffix("/copyright") || !$0.contains("/") }, "\(docs.filter { !$0.hasSuffix("/copyright") })")
        #expect(files(under: "var/cache/apt").allSatisfy(isLock), "\(files(under: "var/cache/apt"))")
    }

    /// The Jobs' commands as written in deploy/kubernetes run in the image's tree with a pod's restrictions
    /// (Tests/Support/run-in-stage-tree.sh: user 65532, no capabilities, no-new-privs, the tree read-only, HOME
    /// read-only, the working directory read-only, /work and /images the only writable places): create (with
    /// TMPDIR unset: /tmp is read-only too), verify inside, rotate; the JSON is the termination message; outside,
    /// the image is checked with independent tools, /work is left empty and the inputs are unchanged.
    @Test(.enabled(if: StageImage.canBuild && canCreateImages, StageImage.reason))
    func jobsRunInTheImageTreeWithAPodsRestrictions() throws {
        let rootfs = try StageImage.rootfs.get()
        let fixture = try StageFixture(owner: (StageImage.user, StageImage.user), secretMode: 0o440)
        let before = fixture.readOnlySnapshot()
        // The script adds its mount points to the tree on its first run: make them before the tree's snapshot.
        try runChecked(repositoryRoot.path + "/Tests/Support/run-in-stage-tree.sh",
                       [rootfs, fixture.input, fixture.images, fixture.secrets, fixture.work, "/", "--", "/bin/true"])
        let treeBefore = try runChecked("/bin/sh", ["-c", "cd '\(rootfs)' && find . -xdev -printf '%p %s %m %T@\\n' | sort | sha256sum"]).stdout
        func run(_ command: DeployCommand, dropping: String? = nil) throws -> RunResult {
            let environment = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
                + command.environment.filter { dropping == nil || !$0.hasPrefix(dropping! + "=") }
            return try runProgram(repositoryRoot.path + "/Tests/Support/run-in-stage-tree.sh",
                                  [rootfs, fixture.input, fixture.images, fixture.secrets, fixture.work, "/home/sevimage"]
                                  + environment + ["--", "/bin/sh", "-c", command.script])
        }

        // The Job's 8G would make the independent checks below decrypt 8 GiB; 256M holds the tree as well.
        var createJob = try DeployCommand.job("sevimage-create")
        #expect(createJob.script.contains("--size 8G "))
        createJob.script = createJob.script.replacingOccurrences(of: "--size 8G ", with: "--size 256M ")
        let create = try run(createJob, dropping: "TMPDIR")
        #expect(create.status == 0, "create: \(create)")
        let created = try jsonObject(create.stdoutData)
        #expect(created["image"] as? String == "/images/vm.qcow2" && created["manifest"] as? String == "/images/vm.manifest.json", "\(created)")
        // Nothing on stderr but progress: no warning about the Secret's 0440 (its group is the stage's own).
        #expect(!create.stderr.contains("warning"), "\(create.stderr)")
        #expect(entries(of: fixture.images) == ["vm.blockdigests", "vm.manifest.json", "vm.qcow2"], "\(entries(of: fixture.images))")
        #expect(entries(of: fixture.work).isEmpty, "left in /work: \(entries(of: fixture.work))")
        try fixture.expectImageHolds(opens: fixture.passphrase, refuses: fixture.newPassphrase, "after create")

        let verifyInside = DeployCommand(script: "exec /usr/local/bin/sevimage verify /images/vm.qcow2 --passphrase-file /secrets/passphrase/passphrase --json",
                                         environment: ["HOME=/home/sevimage"])
        let verified = try run(verifyInside)
        let verifiedReport = try jsonObject(verified.stdoutData)
        #expect(verified.status == 0 && verifiedReport["passed"] as? Bool == true, "verify: \(verified)")

        let rotate = try run(try DeployCommand.job("sevimage-rotate"))
        #expect(rotate.status == 0, "rotate: \(rotate)")
        let rotated = try jsonObject(rotate.stdoutData)
        #expect(rotated["volumeKeyKept"] as? Bool == true, "\(rotated)")
        // The Job removes rotate's copy of the new passphrase: the Secret holds it.
        #expect(entries(of: fixture.images) == ["vm.blockdigests", "vm.manifest.json", "vm.qcow2"], "\(entries(of: fixture.images))")
        #expect(entries(of: fixture.work).isEmpty, "left in /work: \(entries(of: fixture.work))")
        try fixture.expectImageHolds(opens: fixture.newPassphrase, refuses: fixture.passphrase, "after rotate")

        #expect(fixture.readOnlySnapshot() == before)
        let treeAfter = try runChecked("/bin/sh", ["-c", "cd '\(rootfs)' && find . -xdev -printf '%p %s %m %T@\\n' | sort | sha256sum"]).stdout
        #expect(treeAfter == treeBefore)
    }

    /// The rootless podman account: `sevimage-rootless` (scripts/install-deps.sh --test creates it) with its
    /// subordinate uid and gid ranges.
    static let rootless: (uid: UInt32, gid: UInt32, home: String, subuid: UInt32, subgid: UInt32)? = {
        guard getuid() == 0, hasTool("podman"), hasTool("newuidmap"), let entry = getpwnam("sevimage-rootless") else { return nil }
        func range(_ file: String) -> UInt32? {
            let text = (try? String(contentsOfFile: file, encoding: .utf8)) ?? ""
            for line in text.split(separator: "\n") {
                let fields = line.split(separator: ":")
                if fields.count == 3, fields[0] == "sevimage-rootless" || fields[0] == "\(entry.pointee.pw_uid)",
                   let start = UInt32(fields[1]), let count = UInt32(fields[2]), count > StageImage.user {
                    return start
                }
            }
            return nil
        }
        guard let subuid = range("/etc/subuid"), let subgid = range("/etc/subgid") else { return nil }
        return (entry.pointee.pw_uid, entry.pointee.pw_gid, String(cString: entry.pointee.pw_dir), subuid, subgid)
    }()

    /// The image itself under rootless podman, from the OCI layout: `--read-only` (without podman's tmpfs on /tmp,
    /// /run and /var/tmp), `--cap-drop=ALL`, no-new-privileges, no network, /work a tmpfs, the tarball and the
    /// passphrases read-only volumes. create (reproducible: SOURCE_DATE_EPOCH, so tar and grub-mkimage) and rotate
    /// run inside; the image is checked outside with independent tools.
    @Test(.enabled(if: StageImage.canBuild && canCreateImages && rootless != nil,
                   "needs root to set up, podman and uidmap, and the user sevimage-rootless with subordinate ids (scripts/install-deps.sh --test)"))
    func createAndRotateInRootlessPodman() throws {
        let account = try #require(Self.rootless)
        let reference = try StageImage.reference.get()
        // Inside, uid 65532 is host uid subuid + 65531 (container uid 0 is the account itself, 1.. the range).
        let mapped = (uid: account.subuid + StageImage.user - 1, gid: account.subgid + StageImage.user - 1)
        let fixture = try StageFixture(owner: mapped, secretMode: 0o400)
        let before = fixture.readOnlySnapshot()
        let runtime = "/tmp/sevimage-rootless-run-\(account.uid)"
        mkdir(runtime, 0o700)
        chown(runtime, account.uid, account.gid)
        func podman(_ arguments: [String]) throws -> RunResult {
            try runProgram("/usr/bin/setpriv", ["--reuid=\(account.uid)", "--regid=\(account.gid)", "--init-groups", "--",
                                                "/usr/bin/env", "-i", "HOME=\(account.home)", "XDG_RUNTIME_DIR=\(runtime)",
                                                "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "podman"] + arguments,
                           currentDirectory: account.home)
        }
        let restrictions = ["run", "--rm", "--network=none", "--read-only", "--read-only-tmpfs=false", "--cap-drop=ALL",
                            "--security-opt", "no-new-privileges", "--tmpfs", "/work:rw,mode=1777,size=64m",
                            "-v", "\(fixture.input):/input:ro", "-v", "\(fixture.images):/images",
                            "-v", "\(fixture.secrets)/passphrase:/secrets/passphrase:ro",
                            "-v", "\(fixture.secrets)/new-passphrase:/secrets/new-passphrase:ro"]
        // Into the account's storage from the OCI layout under a name: podman run oci:PATH names the image after
        // PATH, and refuses the dot in .cache.
        let name = "localhost/sevimage-stage:test"
        let copied = try runProgram("/usr/bin/setpriv", ["--reuid=\(account.uid)", "--regid=\(account.gid)", "--init-groups", "--",
                                                         "/usr/bin/env", "-i", "HOME=\(account.home)", "XDG_RUNTIME_DIR=\(runtime)",
                                                         "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "skopeo", "copy", "--quiet",
                                                         reference, "containers-storage:" + name], currentDirectory: account.home)
        try #require(copied.status == 0, "skopeo copy: \(copied)")
        defer { _ = try? podman(["rmi", "--force", name]) }  // each commit's build is another 160 MB otherwise
        let probe = try podman(restrictions + [name, "doctor", "--pipeline", "--json"])
        #expect(probe.status == 0, "podman: \(probe)")
        #expect((try? jsonObject(probe.stdoutData))?["passed"] as? Bool == true, "podman: \(probe)")
        let whoami = try podman(restrictions + ["--entrypoint", "/usr/bin/id", name, "-u"])
        #expect(whoami.stdout == "\(StageImage.user)\n", "\(whoami)")

        let create = try podman(restrictions + ["--env", "SOURCE_DATE_EPOCH=1700000000", name,
                                                "create", "--rootfs", "/input/rootfs.tar.zst", "--output", "/images/vm.qcow2", "--size", "256M",
                                                "--seed", "stage", "--passphrase-file", "/secrets/passphrase/passphrase", "--json"])
        #expect(create.status == 0, "create: \(create)")
        let created = try jsonObject(create.stdoutData)
        #expect(created["image"] as? String == "/images/vm.qcow2")
        try fixture.expectImageHolds(opens: fixture.passphrase, refuses: fixture.newPassphrase, "podman create")

        let rotate = try podman(restrictions + [name, "rotate", "/images/vm.qcow2", "--passphrase-file", "/secrets/passphrase/passphrase",
                                                "--new-passphrase-file", "/secrets/new-passphrase/passphrase", "--json"])
        #expect(rotate.status == 0, "rotate: \(rotate)")
        let rotated = try jsonObject(rotate.stdoutData)
        #expect(rotated["volumeKeyKept"] as? Bool == true)
        try fixture.expectImageHolds(opens: fixture.newPassphrase, refuses: fixture.passphrase, "podman rotate")
        #expect(entries(of: fixture.images) == ["vm.blockdigests", "vm.manifest.json", "vm.passphrase", "vm.qcow2"], "\(entries(of: fixture.images))")
        #expect(fixture.readOnlySnapshot() == before)
    }

    /// deploy/'s Jobs and Tasks have every field that makes the stage unprivileged (Tests/Support/check-deploy.py,
    /// field by field), and the checker fails on a copy with one of them changed.
    @Test(.enabled(if: (try? runProgram(python3, ["-c", "import yaml"]).status) == 0, "needs PyYAML (python3-yaml)"))
    func deployDefinitionsHaveThePodRestrictions() throws {
        let checker = repositoryRoot.path + "/Tests/Support/check-deploy.py"
        let result = try runProgram(python3, [checker, repositoryRoot.path + "/deploy"])
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout == "checked: job/sevimage-create create, job/sevimage-rotate rotate, task/sevimage-create create, task/sevimage-rotate rotate\n",
                "\(result.stdout)")
        let scratch = try Scratch()
        let mutations: [(file: String, from: String, to: String, failure: String)] = [
            ("kubernetes/sevimage-jobs.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "readOnlyRootFilesystem is not true"),
            ("kubernetes/sevimage-jobs.yaml", "/secrets/new-passphrase/passphrase", "/images/new.passphrase", "is not on a read-only Secret volume"),
            ("tekton/sevimage-tasks.yaml", "drop: [\"ALL\"]", "drop: [\"NET_RAW\"]", "not [ALL]"),
            ("tekton/sevimage-tasks.yaml", "--json >\"$RESULT\"", ">\"$RESULT\"", "no --json"),
            ("tekton/sevimage-tasks.yaml", "value: /work", "value: /tmp", "is not an emptyDir"),
        ]
        for (index, mutation) in mutations.enumerated() {
            let copy = scratch.file("deploy\(index)")
            try runChecked("cp", ["-r", repositoryRoot.path + "/deploy", copy])
            let path = copy + "/" + mutation.file
            let text = try String(contentsOfFile: path, encoding: .utf8)
            #expect(text.contains(mutation.from), "\(mutation.from)")
            try text.replacingOccurrences(of: mutation.from, with: mutation.to).write(toFile: path, atomically: true, encoding: .utf8)
            let mutated = try runProgram(python3, [checker, copy])
            #expect(mutated.status == 1 && mutated.stdout.contains(mutation.failure), "\(mutation.to): \(mutated)")
        }
    }

    /// The Jobs pass Kubernetes' own schemas, strictly (no unknown field), as PyPI's kubernetes-validate bundles
    /// them. Tekton's Tasks have no schema there; check-deploy.py checks their fields.
    @Test(.enabled(if: hasTool("kubernetes-validate"), "needs PyPI's kubernetes-validate (scripts/install-deps.sh --test)"))
    func jobsPassKubernetesSchemas() throws {
        let result = try runProgram("kubernetes-validate", ["--strict", repositoryRoot.path + "/deploy/kubernetes/sevimage-jobs.yaml"])
        #expect(result.status == 0, "\(result)")
        for job in ["sevimage-create", "sevimage-rotate"] {
            #expect(result.stdout.contains("passed for resource job/\(job)"), "\(result)")
        }
    }
}
