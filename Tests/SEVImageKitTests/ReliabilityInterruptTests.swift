import Foundation
import Testing
@testable import SEVImageKit

/// Interrupted `create` runs (issue 7): SIGKILL and SIGTERM at every checkpoint (FaultInjection), a timed
/// SIGINT, and the next run reaping what a SIGKILL left. The output path always holds nothing or a whole image.
@Suite(.serialized, .enabled(if: canCheckImages, "needs the image tools (e2fsprogs, dosfstools, mtools, grub, qemu-utils, cryptsetup, fdisk)"))
struct ReliabilityInterruptTests {
    /// Checkpoints of one `create` with a generated passphrase: 7 steps in ImageBuilder, 2 per publish
    /// (passphrase, block digests, manifest, image).
    static let checkpointCount = 15

    /// What a directory holds besides the test's tree: outputs and anything a run may leave.
    static func outputs(_ directory: String) -> [String] {
        entries(of: directory).filter { $0 != "tree" }
    }

    /// The image at `image` is whole: QCOW2 consistent, its manifest's SHA-256, and its passphrase opens it.
    static func expectComplete(_ image: String, _ label: String) throws {
        let stem = (image as NSString).deletingPathExtension
        try runChecked("qemu-img", ["check", "-q", image])
        let manifest = try Manifest.decode(Data(contentsOf: URL(fileURLWithPath: stem + ".manifest.json")), path: "manifest")
        #expect(manifest.image.blockSHA256 == hex(try ImageDigest.of(file: image)), "\(label)")
        // The block digests beside it are the ones the manifest's digest covers, and the oracle's.
        let sidecar = try Data(contentsOf: URL(fileURLWithPath: stem + ".blockdigests"))
        #expect(hex(Crypto.sha256(sidecar)) == manifest.image.blockSHA256, "\(label)")
        #expect(sameBytes(try oracleBlockDigests(image), sidecar), "\(label)")
        let opened = try OpenedImage(image: image)
        #expect(try runProgram("cryptsetup", ["open", "--test-passphrase", "--key-file", stem + ".passphrase", opened.luksPartition]).status == 0, "\(label)")
    }

    static func create(_ scratch: Scratch, output: String = "vm.qcow2", force: Bool = false, environment: [String: String] = [:]) throws -> RunResult {
        try sevimage(["create", "--rootfs", scratch.file("tree"), "--output", scratch.file(output), "--size", "128M", "--quiet"]
                     + (force ? ["--force"] : []), environment: environment)
    }

    @Test func sigkillAtEveryCheckpointLeavesNothingOrAWholeImageAndTheNextRunCleansUp() throws {
        let scratch = try Scratch()
        try makeRichTree(at: scratch.file("tree"), owners: false)
        var step = 1
        while true {
            let run = try Self.create(scratch, environment: ["SEVIMAGE_FAULT_AFTER": String(step)])
            if run.status == 0 { break }
            #expect(run.status == SIGKILL, "step \(step): \(run)")  // Process reports the signal itself
            let left = Self.outputs(scratch.path)
            let complete = left.contains("vm.qcow2")
            if complete { try Self.expectComplete(scratch.file("vm.qcow2"), "step \(step)") }
            // SIGKILL runs no handler: the work directory (and maybe the lock file, a half-published set) stay.
            #expect(left.contains { $0.hasPrefix(".sevimage-") }, "step \(step): \(left)")
            // The next create into the same directory reaps it and rolls back what was half published.
            let next = try Self.create(scratch, output: "other.qcow2")
            #expect(next.status == 0, "step \(step): \(next)")
            let expected = ["other.blockdigests", "other.manifest.json", "other.passphrase", "other.qcow2"]
                + (complete ? ["vm.blockdigests", "vm.manifest.json", "vm.passphrase", "vm.qcow2"] : [])
            #expect(Self.outputs(scratch.path) == expected.sorted(), "step \(step)")
            for name in Self.outputs(scratch.path) { try FileManager.default.removeItem(atPath: scratch.file(name)) }
            step += 1
            if step > 40 { break }
        }
        #expect(step == Self.checkpointCount + 1, "create passed \(step - 1) checkpoints")
        try Self.expectComplete(scratch.file("vm.qcow2"), "uninterrupted")
        #expect(Self.outputs(scratch.path) == ["vm.blockdigests", "vm.manifest.json", "vm.passphrase", "vm.qcow2"])
    }

    @Test func sigtermAtEveryCheckpointRemovesEverythingUnfinishedBeforeExit() throws {
        let scratch = try Scratch()
        try makeRichTree(at: scratch.file("tree"), owners: false)
        for step in 1...Self.checkpointCount {
            let run = try Self.create(scratch, environment: ["SEVIMAGE_FAULT_AFTER": String(step), "SEVIMAGE_FAULT_SIGNAL": "TERM"])
            #expect(run.status == 128 + SIGTERM, "step \(step): \(run)")
            #expect(run.stderr == "sevimage: error: interrupted by signal 15; partial outputs were removed\n", "step \(step): \(run.stderr)")
            // Before the image is in place everything goes; once it is (the last checkpoint), the whole set stays.
            if Self.outputs(scratch.path).contains("vm.qcow2") {
                #expect(step == Self.checkpointCount, "step \(step)")
                #expect(Self.outputs(scratch.path) == ["vm.blockdigests", "vm.manifest.json", "vm.passphrase", "vm.qcow2"], "step \(step)")
                try Self.expectComplete(scratch.file("vm.qcow2"), "step \(step)")
                for name in Self.outputs(scratch.path) { unlink(scratch.file(name)) }
            }
            #expect(Self.outputs(scratch.path).isEmpty, "step \(step): \(Self.outputs(scratch.path))")
        }
    }

    /// `--force` replaces a whole set (image, manifest, passphrase). Killed between the publishes, the old
    /// set comes back: at once with SIGTERM, and from the next run with SIGKILL. Never an old image beside
    /// a new passphrase that does not open it.
    @Test(arguments: ["KILL", "TERM"])
    func forcedReplacementKilledMidPublishRestoresTheOldSet(_ signal: String) throws {
        let scratch = try Scratch()
        try makeRichTree(at: scratch.file("tree"), owners: false)
        try #require(try Self.create(scratch).status == 0)
        let names = ["vm.blockdigests", "vm.manifest.json", "vm.passphrase", "vm.qcow2"]
        func contents() throws -> [Data] { try names.map { try Data(contentsOf: URL(fileURLWithPath: scratch.file($0))) } }
        let original = try contents()
        for point in ["published vm.passphrase", "published vm.blockdigests", "published vm.manifest.json", "before publishing vm.qcow2"] {
            let run = try Self.create(scratch, force: true, environment: ["SEVIMAGE_FAULT": "\(point):\(signal)"])
            #expect(run.status == (signal == "KILL" ? SIGKILL : 128 + SIGTERM), "\(point): \(run)")
            if signal == "KILL" {
                let next = try Self.create(scratch, output: "other.qcow2")
                #expect(next.status == 0, "\(point): \(next)")
                for name in ["other.blockdigests", "other.manifest.json", "other.passphrase", "other.qcow2"] { unlink(scratch.file(name)) }
            }
            #expect(try contents() == original, "\(point): the old set did not come back")
            #expect(Self.outputs(scratch.path) == names, "\(point): \(Self.outputs(scratch.path))")
        }
        try Self.expectComplete(scratch.file("vm.qcow2"), "restored")
    }

    /// A real, timed SIGINT in the middle of the work: exit 130, nothing left, children gone.
    @Test func timedSigintCleansUp() throws {
        let scratch = try Scratch()
        try makeRichTree(at: scratch.file("tree"), owners: false)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: sevimageBinary)
        process.arguments = ["create", "--rootfs", scratch.file("tree"), "--output", scratch.file("vm.qcow2"), "--size", "128M", "--quiet"]
        let err = Pipe()
        process.standardError = err
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        // Wait until the work directory holds the ext4 image being built, then interrupt.
        let deadline = Date().addingTimeInterval(30)
        var seen = false
        while Date() < deadline && !seen {
            seen = Self.outputs(scratch.path).contains { name in
                name.hasPrefix(".sevimage-") && FileManager.default.fileExists(atPath: scratch.file(name) + "/root.ext4")
            }
            if !seen { usleep(20_000) }
        }
        #expect(seen, "the run never got to the ext4 image")
        kill(process.processIdentifier, SIGINT)
        process.waitUntilExit()
        let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(process.terminationStatus == ExitStatus.interrupted.rawValue, "\(stderr)")
        #expect(stderr.hasSuffix("sevimage: error: interrupted by signal 2; partial outputs were removed\n"), "\(stderr)")
        #expect(Self.outputs(scratch.path).isEmpty, "\(Self.outputs(scratch.path))")
    }

    /// The reaper removes only what is dead: a work directory whose owner holds its lock stays, one whose
    /// owner died goes, and one without an owner file goes only when it is old.
    @Test func reaperRemovesOnlyDeadRunsDirectories() throws {
        let scratch = try Scratch()
        try makeRichTree(at: scratch.file("tree"), owners: false)
        func workDirectory(_ name: String, owner: Bool, hold: Bool) -> Int32 {
            let path = scratch.file(name)
            mkdir(path, 0o700)
            guard owner else { return -1 }
            let fd = WorkDirectory.claim(path, output: scratch.file("x.qcow2"))
            if !hold { close(fd); return -1 }
            return fd
        }
        let live = workDirectory(".sevimage-LiveOn", owner: true, hold: true)
        defer { close(live) }
        _ = workDirectory(".sevimage-Dead00", owner: true, hold: false)
        _ = workDirectory(".sevimage-Young0", owner: false, hold: false)
        _ = workDirectory(".sevimage-Old000", owner: false, hold: false)
        var old = [timespec(tv_sec: 1_000_000, tv_nsec: 0), timespec(tv_sec: 1_000_000, tv_nsec: 0)]
        utimensat(AT_FDCWD, scratch.file(".sevimage-Old000"), &old, 0)
        _ = workDirectory(".unrelated-Dead00", owner: true, hold: false)
        let run = try Self.create(scratch)
        #expect(run.status == 0, "\(run)")
        #expect(Self.outputs(scratch.path) == [".sevimage-LiveOn", ".sevimage-Young0", ".unrelated-Dead00", "vm.blockdigests", "vm.manifest.json", "vm.passphrase", "vm.qcow2"])
    }

    /// Not only create reaps: any command that makes a work directory (here `firmware grub`) first removes those
    /// of dead runs beside its output, whatever command left them (an export, a key operation), and keeps live ones.
    @Test func everyWorkDirectoryReapsDeadSiblings() throws {
        let scratch = try Scratch()
        var held: [Int32] = []
        defer { held.forEach { close($0) } }
        for (name, hold) in [(".sevimage-export-LiveOn", true), (".sevimage-export-Dead00", false), (".vm.qcow2.sevimage-keys-Dead00", false)] {
            let path = scratch.file(name)
            mkdir(path, 0o700)
            let fd = WorkDirectory.claim(path, output: scratch.file("out"))
            #expect(fd >= 0)
            if hold { held.append(fd) } else { close(fd) }
        }
        let run = try sevimage(["firmware", "grub", "--output", scratch.file("grub.efi")])
        #expect(run.status == 0, "\(run)")
        #expect(Self.outputs(scratch.path) == [".sevimage-export-LiveOn", "grub.efi"])
    }

    /// Issue 16: a rotate refused before its first change to the image (internal snapshots, a LUKS2 requirement
    /// libcryptsetup does not know) leaves nothing behind: no state file, no .new passphrase, no journal; the
    /// message says how to proceed, and keys still works (no "interrupted rotation pending").
    @Test(arguments: ["internal snapshot", "unknown LUKS2 requirement"])
    func refusedRotateLeavesNothingPending(_ kind: String) throws {
        let scratch = try Scratch()
        try makeRichTree(at: scratch.file("tree"), owners: false)
        let run = try Self.create(scratch)
        try #require(run.status == 0, "\(run)")
        let image = scratch.file("vm.qcow2")
        if kind == "internal snapshot" {
            try runChecked("qemu-img", ["snapshot", "-c", "before", image])
        } else {
            let manifest = try Manifest.decode(Data(contentsOf: URL(fileURLWithPath: scratch.file("vm.manifest.json"))), path: "manifest")
            try runChecked(python3, [repositoryRoot.path + "/Tests/Oracles/luks_metadata.py", image, String(manifest.partitions[1].firstLBA * 512), "requirement"])
        }
        let listing = Self.outputs(scratch.path)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: image))
        for attempt in 1...2 {
            let result = try sevimage(["rotate", image, "--passphrase-file", scratch.file("vm.passphrase"), "--quiet"])
            #expect(result.status == 2, "\(kind), run \(attempt): \(result)")
            #expect(result.stderr.split(separator: "\n").count == 1 && result.stderr.hasPrefix("sevimage: error: "), "\(result.stderr)")
            #expect(result.stderr.contains(kind == "internal snapshot" ? "qemu-img snapshot -d" : "nothing was changed"), "\(result.stderr)")
            #expect(Self.outputs(scratch.path) == listing, "\(kind), run \(attempt) left files")
            #expect(sameBytes(try Data(contentsOf: URL(fileURLWithPath: image)), bytes), "\(kind): the image changed")
        }
        let keys = try sevimage(["keys", "list", image])
        #expect(keys.status == 0 && !keys.stderr.contains("pending"), "\(keys)")
    }
}
