import Foundation
import Testing
@testable import SEVImageKit

/// What every process started from `pid` (children, grandchildren) showed in /proc while it ran.
final class ChildSampler: @unchecked Sendable {
    struct Sample: Hashable { var pid: Int32; var name: String; var cmdline: Data; var environ: Data }
    private let lock = NSLock()
    private var samples = Set<Sample>()
    private var running = true
    private let root: Int32
    private let done = DispatchSemaphore(value: 0)

    init(root: Int32) {
        self.root = root
        Thread { [self] in
            while lock.withLock({ running }) {
                poll()
                usleep(2_000)
            }
            done.signal()
        }.start()
    }

    /// Stops sampling and returns what was seen.
    func stop() -> [Sample] {
        lock.withLock { running = false }
        done.wait()
        return lock.withLock { Array(samples) }
    }

    private func poll() {
        var parents: [Int32: Int32] = [:]
        for name in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(name), let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { continue }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            if fields.count > 1, let ppid = Int32(fields[1]) { parents[pid] = ppid }
        }
        for pid in parents.keys where pid != root {
            var ancestor = parents[pid]
            var depth = 0
            while let current = ancestor, current != root, current > 1, depth < 16 { ancestor = parents[current]; depth += 1 }
            guard ancestor == root else { continue }
            let cmdline = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") ?? Data()
            let environ = FileManager.default.contents(atPath: "/proc/\(pid)/environ") ?? Data()
            let name = String(decoding: cmdline.prefix { $0 != 0 }, as: UTF8.self)
            guard !cmdline.isEmpty else { continue }
            _ = lock.withLock { samples.insert(Sample(pid: pid, name: (name as NSString).lastPathComponent, cmdline: cmdline, environ: environ)) }
        }
    }
}

/// Secret hygiene (issue 7), each claim of the README's security section with its test: secret files are
/// created exclusively with mode 0600; files others can write are refused; no secret in any child's argv
/// or environment, in stdout, stderr, the manifest or any file but the passphrase file; the raw volume key
/// nowhere; secret buffers locked and wiped; the process not dumpable.
@Suite(.serialized, .enabled(if: canCheckImages, "needs the image tools (e2fsprogs, dosfstools, mtools, grub, qemu-utils, cryptsetup, fdisk)"))
struct HygieneTests {
    static func contains(_ haystack: Data, _ needle: Data) -> Bool { haystack.range(of: needle) != nil }

    /// Every file under `directory` (recursively) that holds `needle`.
    static func filesHolding(_ needle: Data, under directory: String) -> [String] {
        var found: [String] = []
        let enumerator = FileManager.default.enumerator(atPath: directory)
        while let relative = enumerator?.nextObject() as? String {
            let path = directory + "/" + relative
            var info = stat()
            guard lstat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { continue }
            guard let handle = FileHandle(forReadingAtPath: path) else { continue }
            defer { try? handle.close() }
            // Chunks overlap by the needle's length so that a match across a boundary is found.
            var carry = Data()
            while let chunk = try? handle.read(upToCount: 8 << 20), !chunk.isEmpty {
                let window = carry + chunk
                if contains(window, needle) { found.append(relative); break }
                carry = window.suffix(needle.count)
            }
        }
        return found
    }

    @Test func generatedPassphraseFileIsNewAndPrivateWhateverTheUmask() throws {
        let scratch = try Scratch()
        try makeRichTree(at: scratch.file("tree"), owners: false)
        let result = try runProgram("/bin/sh", ["-c", "umask 000; exec \"$0\" \"$@\"", sevimageBinary, "create", "--rootfs", scratch.file("tree"),
                                                 "--output", scratch.file("vm.qcow2"), "--size", "128M", "--quiet"])
        #expect(result.status == 0, "\(result)")
        var info = stat()
        #expect(lstat(scratch.file("vm.passphrase"), &info) == 0)
        #expect(info.st_mode & S_IFMT == S_IFREG && info.st_mode & 0o777 == 0o600, "mode \(String(info.st_mode, radix: 8))")
        #expect(info.st_nlink == 1, "the passphrase keeps a second name")
        let text = try String(contentsOfFile: scratch.file("vm.passphrase"), encoding: .utf8)
        #expect(text.count == 43 && text.allSatisfy { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }, "\(text.count) characters")

        // A symlink planted where the passphrase goes is never followed, even with --force.
        let victim = scratch.file("victim")
        try Data("keep".utf8).write(to: URL(fileURLWithPath: victim))
        let other = scratch.file("other.passphrase")
        symlink(victim, other)
        let planted = try sevimage(["create", "--rootfs", scratch.file("tree"), "--output", scratch.file("other.qcow2"), "--size", "128M", "--quiet", "--force"])
        #expect(planted.status == ExitStatus.invalidInput.rawValue && planted.stderr.contains("other.passphrase is a symbolic link"), "\(planted)")
        #expect(try String(contentsOfFile: victim, encoding: .utf8) == "keep")
    }

    @Test func secretTableIsWrittenExclusivelyWithMode0600() throws {
        let scratch = try Scratch()
        try writePassphraseFile(scratch.file("p"), "table secret")
        let table = scratch.file("table.bin")
        let first = try runProgram("/bin/sh", ["-c", "umask 000; exec \"$0\" \"$@\"", sevimageBinary, "secret", "table",
                                                "--passphrase-file", scratch.file("p"), "--output", table])
        #expect(first.status == 0, "\(first)")
        var info = stat()
        #expect(lstat(table, &info) == 0 && info.st_mode & 0o777 == 0o600, "mode \(String(info.st_mode, radix: 8))")
        let again = try sevimage(["secret", "table", "--passphrase-file", scratch.file("p"), "--output", table])
        #expect(again.status == ExitStatus.conflict.rawValue, "\(again)")
        // Secret inputs that others can write are refused: the passphrase and the transport keys.
        chmod(scratch.file("p"), 0o622)
        let writable = try sevimage(["secret", "table", "--passphrase-file", scratch.file("p"), "--output", scratch.file("t2.bin")])
        #expect(writable.status == ExitStatus.invalidInput.rawValue && writable.stderr.contains("writable by other users"), "\(writable)")
        chmod(scratch.file("p"), 0o600)
        let tk = scratch.file("tk.bin")
        _ = FileManager.default.createFile(atPath: tk, contents: Data(repeating: 7, count: 32), attributes: [.posixPermissions: 0o602])
        let package = try sevimage(["secret", "package", "--passphrase-file", scratch.file("p"), "--tk-file", tk,
                                    "--launch-measure", Data(count: 48).base64EncodedString()])
        #expect(package.status == ExitStatus.invalidInput.rawValue && package.stderr.contains("writable by other users"), "\(package)")
        #expect(!FileManager.default.fileExists(atPath: scratch.file("t2.bin")))
    }

    /// Samples /proc every 2 ms during a `create`: no child (mke2fs, debugfs, mkfs.vfat, mtools, grub-mkstandalone,
    /// qemu-img where used) ever had the passphrase in its argv or environment. Then no output, no stream and no file
    /// but IMAGE.passphrase holds it, and the raw volume key is in no file at all.
    @Test func createLeaksNoSecret() throws {
        let scratch = try Scratch()
        try makeRichTree(at: scratch.file("tree"), owners: false)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: sevimageBinary)
        process.arguments = ["create", "--rootfs", scratch.file("tree"), "--output", scratch.file("vm.qcow2"), "--size", "128M", "--json"]
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let sampler = ChildSampler(root: process.processIdentifier)
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let samples = sampler.stop()
        #expect(process.terminationStatus == 0, "\(String(decoding: stderr, as: UTF8.self))")
        let passphrase = try Data(contentsOf: URL(fileURLWithPath: scratch.file("vm.passphrase")))
        #expect(passphrase.count == 43)
        let names = Set(samples.map(\.name))
        // Short-lived tools may come and go between two samples on a loaded machine: at least one is seen.
        #expect(!names.isEmpty, "sampled no child at all")
        for sample in samples {
            #expect(!Self.contains(sample.cmdline, passphrase) && !Self.contains(sample.environ, passphrase), "\(sample.name) saw the passphrase")
        }
        #expect(!Self.contains(stdout, passphrase) && !Self.contains(stderr, passphrase))
        #expect(try JSONSerialization.jsonObject(with: stdout) is [String: Any], "stdout is one JSON object")
        #expect(Self.filesHolding(passphrase, under: scratch.path) == ["vm.passphrase"])

        // The volume key: recovered with cryptsetup, it appears in no file (the LUKS header holds it only
        // encrypted in the keyslot area).
        let opened = try OpenedImage(image: scratch.file("vm.qcow2"))
        let keyFile = opened.scratch.file("volume.key")
        try runChecked("cryptsetup", ["luksDump", "--dump-volume-key", "--batch-mode", "--key-file", scratch.file("vm.passphrase"),
                                      "--volume-key-file", keyFile, opened.luksPartition])
        let volumeKey = try Data(contentsOf: URL(fileURLWithPath: keyFile))
        unlink(keyFile)
        #expect(volumeKey.count == 64)
        #expect(Self.filesHolding(volumeKey.prefix(32), under: scratch.path).isEmpty)
        #expect(Self.filesHolding(volumeKey.prefix(32), under: opened.scratch.path).isEmpty, "not in the raw view either")
        #expect(Self.filesHolding(passphrase, under: opened.scratch.path).isEmpty)
    }

    /// The work directory at the last moment before the publishes (frozen there by SIGKILL): the passphrase
    /// is only in its 0600 temporary file, the volume key nowhere.
    @Test func workDirectoryHoldsNoStraySecret() throws {
        let scratch = try Scratch()
        try makeRichTree(at: scratch.file("tree"), owners: false)
        let run = try sevimage(["create", "--rootfs", scratch.file("tree"), "--output", scratch.file("vm.qcow2"), "--size", "128M", "--quiet"],
                               environment: ["SEVIMAGE_FAULT": "before publishing vm.passphrase"])
        #expect(run.status == SIGKILL, "\(run)")
        guard let work = entries(of: scratch.path).first(where: { $0.hasPrefix(".sevimage-") }) else {
            Issue.record("no work directory left")
            return
        }
        let directory = scratch.file(work)
        let passphrase = try Data(contentsOf: URL(fileURLWithPath: directory + "/passphrase"))
        var info = stat()
        #expect(lstat(directory + "/passphrase", &info) == 0 && info.st_mode & 0o777 == 0o600)
        #expect(Self.filesHolding(passphrase, under: directory) == ["passphrase"])
        let key = scratch.file("volume.key")
        try runChecked("cryptsetup", ["luksDump", "--dump-volume-key", "--batch-mode", "--key-file", directory + "/passphrase",
                                      "--volume-key-file", key, directory + "/luks.header"])
        let volumeKey = try Data(contentsOf: URL(fileURLWithPath: key))
        unlink(key)
        #expect(Self.filesHolding(volumeKey.prefix(32), under: directory).isEmpty)
    }

    /// `boot` types the passphrase into GRUB over the serial console: QEMU's argv and environment never hold it.
    @Test(.enabled(if: canBootImages, "needs qemu-system-x86_64 and OVMF"))
    func bootLeaksNoSecretToQEMU() throws {
        let scratch = try Scratch()
        let (image, passphraseFile) = try makeBootableImage(in: scratch)
        let passphrase = try Data(contentsOf: URL(fileURLWithPath: passphraseFile))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: sevimageBinary)
        process.arguments = ["boot", image, "--passphrase-file", passphraseFile, "--json", "--timeout", "600"]
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let sampler = ChildSampler(root: process.processIdentifier)
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let samples = sampler.stop()
        #expect(process.terminationStatus == 0, "\(String(decoding: stderr, as: UTF8.self))")
        #expect(samples.contains { $0.name.hasPrefix("qemu-system") }, "sampled \(Set(samples.map(\.name)))")
        for sample in samples {
            #expect(!Self.contains(sample.cmdline, passphrase) && !Self.contains(sample.environ, passphrase), "\(sample.name) saw the passphrase")
        }
        #expect(!Self.contains(stdout, passphrase) && !Self.contains(stderr, passphrase))
    }

    /// The command line makes itself non-dumpable at start (`PR_SET_DUMPABLE` 0, core limit 0): run as an
    /// unprivileged user, its /proc files belong to root, which is what the kernel does for such a process.
    @Test func processIsNotDumpable() throws {
        guard getuid() == 0 else { return }
        let scratch = try Scratch()
        try makeRichTree(at: scratch.file("tree"), owners: false)
        _ = try runChecked("chmod", ["-R", "a+rX", scratch.file("tree")])
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        process.arguments = ["--reuid=65534", "--regid=65534", "--clear-groups", "--", sevimageBinary, "create", "--rootfs", scratch.file("tree"),
                             "--output", scratch.file("vm.qcow2"), "--size", "128M", "--quiet"]
        try process.run()
        var owners: [uid_t] = [], limits = "", sawUser = false
        let deadline = Date().addingTimeInterval(30)
        while process.isRunning && Date() < deadline && limits.isEmpty {
            // setpriv execs sevimage in the same process: wait until the uid changed and the binary is ours.
            let status = (try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8)) ?? ""
            let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(process.processIdentifier)/exe")) ?? ""
            if status.contains("Uid:\t65534"), exe.hasSuffix("/sevimage") {
                sawUser = true
                usleep(50_000)  // past main()'s first line
                for file in ["environ", "mem", "status"] {
                    var info = stat()
                    if stat("/proc/\(process.processIdentifier)/\(file)", &info) == 0 { owners.append(info.st_uid) }
                }
                limits = (try? String(contentsOfFile: "/proc/\(process.processIdentifier)/limits", encoding: .utf8)) ?? ""
            } else {
                usleep(1_000)
            }
        }
        process.waitUntilExit()
        #expect(sawUser)
        #expect(owners.count == 3 && owners.allSatisfy { $0 == 0 }, "owners \(owners): the process is dumpable")
        let core = limits.split(separator: "\n").first { $0.hasPrefix("Max core file size") }.map(String.init) ?? ""
        #expect(core.split(separator: " ", omittingEmptySubsequences: true).dropFirst(4).prefix(2) == ["0", "0"], "\(core)")
        #expect(process.terminationStatus == 0)
    }

    /// `SecretBytes` keeps its buffer locked in RAM while it lives (VmLck grows) and zeroes it on release.
    @Test func secretBuffersAreLockedAndWiped() throws {
        func lockedKB() -> Int {
            let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
            let line = status.split(separator: "\n").first { $0.hasPrefix("VmLck:") } ?? ""
            return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? -1
        }
        let before = lockedKB()
        var secrets: [SecretBytes] = try (0..<16).map { _ in try SecretBytes(randomCount: 64 << 10) }
        let during = lockedKB()
        #expect(during - before >= 16 * 64, "VmLck \(before) kB -> \(during) kB")
        secrets.removeAll()
        #expect(lockedKB() <= before + 8, "VmLck after release: \(lockedKB()) kB")

        // Wiped on release: look at the freed buffer (test-only peeking; allocator bookkeeping may reuse its head).
        var address: UnsafeRawPointer?
        var count = 0
        do {
            let secret = SecretBytes([UInt8](repeating: 0xA5, count: 4096))
            secret.withUnsafeBytes { address = $0.baseAddress; count = $0.count }
            #expect(secret.withUnsafeBytes { $0.allSatisfy { $0 == 0xA5 } })
        }
        // The allocator may have reused the memory since; what must not be there is the secret itself.
        let leftover = UnsafeRawBufferPointer(start: address, count: count)
        let run = [UInt8](repeating: 0xA5, count: 16)
        #expect(!(0...(count - run.count)).contains { leftover[$0..<($0 + run.count)].elementsEqual(run) }, "the released buffer still holds secret bytes")
        #expect(String(describing: SecretBytes([1, 2, 3])) == "<secret, 3 bytes>")
    }
}
