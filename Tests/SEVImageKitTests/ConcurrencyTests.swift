import Foundation
import Testing
@testable import SEVImageKit

/// Two processes on one output or one image (issue 7): one wins, the other fails at once with exit status 3
/// (`conflict`) and one line, and nothing is corrupted. The locks are advisory `flock`s (Support/Locking.swift
/// for `create`, Keys/ImageLock.swift for the key operations).
@Suite(.serialized, .enabled(if: canCheckImages, "needs the image tools (e2fsprogs, dosfstools, mtools, grub, qemu-utils, cryptsetup, fdisk)"))
struct ConcurrencyTests {
    /// Starts `sevimage` without waiting; stdout and stderr go to files in `scratch`.
    final class Running {
        let process = Process()
        let stderrPath: String

        init(_ arguments: [String], scratch: Scratch, label: String) throws {
            stderrPath = scratch.file("\(label).stderr")
            _ = FileManager.default.createFile(atPath: stderrPath, contents: nil)
            process.executableURL = URL(fileURLWithPath: sevimageBinary)
            process.arguments = arguments
            process.standardOutput = FileHandle.nullDevice
            process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: stderrPath))
            try process.run()
        }

        func wait() throws -> (status: Int32, stderr: String) {
            process.waitUntilExit()
            return (process.terminationStatus, try String(contentsOfFile: stderrPath, encoding: .utf8))
        }
    }

    static func workDirectoryExists(_ directory: String) -> Bool {
        entries(of: directory).contains { $0.hasPrefix(".sevimage-") }
    }

    /// The second `create` starts while the first holds the output: it fails with 3 at once, with or without
    /// --force, and the first finishes a whole image that nothing else touched.
    @Test(arguments: [false, true])
    func secondCreateOfTheSameOutputFailsClearly(force: Bool) throws {
        let scratch = try Scratch()
        try makeRichTree(at: scratch.file("tree"), owners: false)
        let out = scratch.file("out")
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: false)
        let arguments = ["create", "--rootfs", scratch.file("tree"), "--output", out + "/vm.qcow2", "--size", "128M", "--quiet"]
            + (force ? ["--force"] : [])
        if force {
            // --force on an existing image: the first run replaces it, the second must not interleave.
            try #require(try sevimage(arguments).status == 0)
        }
        let first = try Running(arguments, scratch: scratch, label: "first")
        let deadline = Date().addingTimeInterval(30)
        while !Self.workDirectoryExists(out) && Date() < deadline { usleep(5_000) }
        let second = try sevimage(arguments)
        let winner = try first.wait()
        #expect(winner.status == 0, "\(winner.stderr)")
        #expect(second.status == ExitStatus.conflict.rawValue, "\(second)")
        #expect(second.stderr == "sevimage: error: \(out)/vm.qcow2 is in use by another sevimage process\n", "\(second.stderr)")
        try ReliabilityInterruptTests.expectComplete(out + "/vm.qcow2", "winner")
        #expect(entries(of: out) == ["vm.blockdigests", "vm.manifest.json", "vm.passphrase", "vm.qcow2"])
    }

    /// Many racing `create`s without --force: exactly one image, every loser exits 3.
    @Test func racingCreatesProduceOneImage() throws {
        let scratch = try Scratch()
        try makeRichTree(at: scratch.file("tree"), owners: false)
        let arguments = ["create", "--rootfs", scratch.file("tree"), "--output", scratch.file("vm.qcow2"), "--size", "128M", "--quiet"]
        let runs = try (0..<4).map { try Running(arguments, scratch: scratch, label: "run\($0)") }
        let results = try runs.map { try $0.wait() }
        #expect(results.filter { $0.status == 0 }.count == 1, "\(results)")
        for result in results where result.status != 0 {
            #expect(result.status == ExitStatus.conflict.rawValue, "\(result)")
            #expect(result.stderr.hasSuffix("is in use by another sevimage process\n") || result.stderr.hasSuffix("exists; pass --force to replace it\n"),
                    "\(result.stderr)")
        }
        try ReliabilityInterruptTests.expectComplete(scratch.file("vm.qcow2"), "race")
        #expect(entries(of: scratch.path).filter { !$0.hasSuffix(".stderr") } == ["tree", "vm.blockdigests", "vm.manifest.json", "vm.passphrase", "vm.qcow2"])
    }

    /// `create --force` refuses to replace an image that a key operation holds (its flock on the image).
    @Test func createDoesNotReplaceAnImageInUse() throws {
        let scratch = try Scratch()
        try makeRichTree(at: scratch.file("tree"), owners: false)
        let arguments = ["create", "--rootfs", scratch.file("tree"), "--output", scratch.file("vm.qcow2"), "--size", "128M", "--quiet", "--force"]
        try #require(try sevimage(arguments).status == 0)
        let before = try Crypto.hashFile(scratch.file("vm.qcow2"))
        let holder = open(scratch.file("vm.qcow2"), O_RDONLY)
        #expect(flock(holder, LOCK_EX) == 0)
        let refused = try sevimage(arguments)
        close(holder)
        #expect(refused.status == ExitStatus.conflict.rawValue && refused.stderr.hasSuffix("is in use by another sevimage process\n"), "\(refused)")
        #expect(try Crypto.hashFile(scratch.file("vm.qcow2")) == before)
        #expect(entries(of: scratch.path) == ["tree", "vm.blockdigests", "vm.manifest.json", "vm.passphrase", "vm.qcow2"])
    }

    /// Two `rotate`s started together on one image: each exits 0 (they ran one after the other) or 3
    /// (in use), never anything else; afterwards exactly one keyslot, opened by IMAGE.passphrase, and the data as before.
    @Test func racingRotatesNeverCorrupt() throws {
        let fixture = try KeysFixture()
        let data = try fixture.dataDigest()
        var conflicts = 0
        for round in 0..<3 {
            let runs = try (0..<2).map {
                try Running(["rotate", fixture.image, "--passphrase-file", fixture.passphraseFile, "--quiet"], scratch: fixture.scratch, label: "rotate\(round)-\($0)")
            }
            let results = try runs.map { try $0.wait() }
            for result in results {
                #expect(result.status == 0 || result.status == ExitStatus.conflict.rawValue, "round \(round): \(result)")
                if result.status == ExitStatus.conflict.rawValue {
                    conflicts += 1
                    #expect(result.stderr.hasSuffix("is in use by another sevimage process\n"), "\(result.stderr)")
                }
            }
            #expect(results.contains { $0.status == 0 }, "round \(round): \(results)")
            #expect(try fixture.opens(fixture.passphraseFile), "round \(round)")
            #expect(try fixture.readManifest().luks.keyslots.count == 1, "round \(round)")
            #expect(fixture.leftovers().isEmpty, "round \(round): \(fixture.leftovers())")
        }
        #expect(try fixture.dataDigest() == data)
        try runChecked("qemu-img", ["check", "-q", fixture.image])
        // Overlap is likely but not certain with two processes; the lock itself is proven in RotateTests.
        _ = conflicts
    }
}
