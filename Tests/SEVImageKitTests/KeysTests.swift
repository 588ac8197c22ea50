import Foundation
import Testing
@testable import SEVImageKit

/// `sevimage keys list|add|remove`, checked with cryptsetup's luksDump and --test-passphrase.
@Suite(.enabled(if: canCheckImages, "needs the image tools, cryptsetup-bin and qemu-utils"))
struct KeysTests {
    @Test func addListRemoveARecoveryPassphrase() throws {
        let fixture = try KeysFixture()
        let list = try sevimage(["keys", "list", fixture.image, "--json"])
        try #require(list.status == 0, "\(list)")
        let listing = try JSONDecoder().decode(KeyslotListing.self, from: list.stdoutData)
        #expect(listing.keyslots == [KeyslotEntry(slot: 0, pbkdf: "pbkdf2", hash: "sha256", iterations: 1000, priority: "normal", role: "generated")])

        // A recovery passphrase with the profile's costly default (1,000,000 iterations).
        let recovery = fixture.scratch.file("recovery.txt")
        try writePassphraseFile(recovery, "correct horse battery staple\n")
        let added = try sevimage(["keys", "add", fixture.image, "--passphrase-file", fixture.passphraseFile,
                                  "--new-passphrase-file", recovery, "--json"])
        try #require(added.status == 0, "\(added)")
        let change = try JSONDecoder().decode(KeyslotChange.self, from: added.stdoutData)
        #expect(change.added == 1)
        #expect(change.keyslots.last == KeyslotEntry(slot: 1, pbkdf: "pbkdf2", hash: "sha256", iterations: 1_000_000, priority: "normal", role: "recovery"))
        let opened = try OpenedImage(image: fixture.image)
        let dump = try runChecked("cryptsetup", ["luksDump", opened.luksPartition]).stdout
        #expect(dump.contains("Iterations: 1000000"))
        // cryptsetup's --key-file takes every byte; sevimage drops one trailing newline, as a person's file has one.
        let recoveryExact = fixture.scratch.file("recovery-exact.txt")
        try writePassphraseFile(recoveryExact, "correct horse battery staple")
        #expect(try fixture.opening([recoveryExact, fixture.passphraseFile]).values.allSatisfy { $0 })
        let manifest = try fixture.readManifest()
        #expect(manifest.luks.keyslots.map(\.role) == ["generated", "recovery"])
        #expect(manifest.image.blockSHA256 == hex(try ImageDigest.of(file: fixture.image)))
        #expect(change.hashedBytes == LUKSLayout.headerSize)
        try expectDigestsHold(image: fixture.image, "keys add")
        #expect(!(try String(contentsOfFile: fixture.manifest, encoding: .utf8)).contains("battery"))

        // The human listing goes to stderr.
        let human = try sevimage(["keys", "list", fixture.image])
        #expect(human.status == 0 && human.stdout.isEmpty)
        #expect(human.stderr.contains("   1  pbkdf2  sha256     1000000  normal    recovery"), "\(human.stderr)")

        // Explicit iterations, then the refusals of remove.
        let person = fixture.scratch.file("person.txt")
        try writePassphraseFile(person, "another person")
        #expect(try sevimage(["keys", "add", fixture.image, "--passphrase-file", recovery, "--new-passphrase-file", person,
                              "--iterations", "2000", "--quiet"]).status == 0)
        let slots = try JSONDecoder().decode(KeyslotListing.self, from: sevimage(["keys", "list", fixture.image, "--json"]).stdoutData)
        #expect(slots.keyslots.map(\.iterations) == [1000, 1_000_000, 2000])
        let own = try sevimage(["keys", "remove", fixture.image, "--slot", "2", "--passphrase-file", person])
        #expect(own.status == ExitStatus.invalidInput.rawValue && own.stderr.contains("the one to remove"), "\(own)")
        let missing = try sevimage(["keys", "remove", fixture.image, "--slot", "7", "--passphrase-file", person])
        #expect(missing.status == ExitStatus.invalidInput.rawValue && missing.stderr.contains("no active keyslot 7"), "\(missing)")
        let wrong = fixture.scratch.file("wrong.txt")
        try writePassphraseFile(wrong, "nobody's")
        #expect(try sevimage(["keys", "remove", fixture.image, "--slot", "2", "--passphrase-file", wrong]).status == ExitStatus.wrongPassphrase.rawValue)

        // Remove the two added slots; the last one cannot go.
        #expect(try sevimage(["keys", "remove", fixture.image, "--slot", "2", "--passphrase-file", recovery, "--quiet"]).status == 0)
        #expect(try sevimage(["keys", "remove", fixture.image, "--slot", "1", "--passphrase-file", fixture.passphraseFile, "--quiet"]).status == 0)
        try expectDigestsHold(image: fixture.image, "keys remove")
        let opens = try fixture.opening([recoveryExact, person, fixture.passphraseFile])
        #expect(opens == [recoveryExact: false, person: false, fixture.passphraseFile: true])
        let before = try Crypto.hashFile(fixture.image)
        let last = try sevimage(["keys", "remove", fixture.image, "--slot", "0", "--passphrase-file", fixture.passphraseFile])
        #expect(last.status == ExitStatus.invalidInput.rawValue, "\(last)")
        #expect(last.stderr == "sevimage: error: keyslot 0 is the last keyslot of \(fixture.image); removing it would lock the data away for good\n")
        #expect(try Crypto.hashFile(fixture.image) == before)
        #expect(try fixture.readManifest().luks.keyslots.map(\.slot) == [0])
        #expect(try fixture.readManifest().rotations.map(\.kind) == ["keys-add", "keys-add", "keys-remove", "keys-remove"])
        try runChecked("qemu-img", ["check", fixture.image])
        #expect(fixture.leftovers().isEmpty, "\(fixture.leftovers())")
    }

    /// SIGKILL after every durable step of keys add, then of keys remove, and the operation finished by the next
    /// key operation: the manifest's digest and the block digests are the oracle's over the whole file, and verify
    /// passes.
    @Test func killedAfterEveryStepTheDigestsStillHold() throws {
        let fixture = try KeysFixture()
        let recovery = fixture.scratch.file("recovery.txt")
        try writePassphraseFile(recovery, "a recovery passphrase")
        let add = ["keys", "add", fixture.image, "--passphrase-file", fixture.passphraseFile, "--new-passphrase-file", recovery, "--iterations", "1000", "--quiet"]
        let remove = ["keys", "remove", fixture.image, "--slot", "1", "--passphrase-file", fixture.passphraseFile, "--quiet"]
        let journal = fixture.image + ".sevimage-journal"
        for (operation, arguments) in [("add", add), ("remove", remove)] {
            var step = 1
            while step < 30 {
                let run = try sevimage(arguments, environment: ["SEVIMAGE_TEST_CRASH_AFTER": String(step)])
                if run.status == 0 { break }
                #expect(run.status == SIGKILL, "\(operation) step \(step): \(run)")
                // Whatever the kill left (a journal, a keyslot without its manifest), the next operations finish it.
                let pending = ImagePaths.exists(journal)
                let slotThere = try fixture.opens(recovery)
                let next: [[String]] = operation == "add"
                    ? (pending || slotThere ? [remove, add] : [add])
                    : (pending ? [add] : slotThere ? [remove, add] : [add])
                for arguments in next {
                    let rerun = try sevimage(arguments)
                    #expect(rerun.status == 0, "\(operation) step \(step): \(rerun)")
                }
                try expectDigestsHold(image: fixture.image, "\(operation) step \(step)")
                if operation == "add" { #expect(try sevimage(remove).status == 0) }  // the next step starts without slot 1
                step += 1
            }
            #expect(step > 3, "\(operation) has more durable steps than that")
            try expectDigestsHold(image: fixture.image, "\(operation) uninterrupted")
        }
        #expect(fixture.leftovers().isEmpty, "\(fixture.leftovers())")
    }

    /// A journal left by a killed run is applied by the next key operation before anything else.
    @Test func pendingJournalIsFinishedFirst() throws {
        let fixture = try KeysFixture()
        let recovery = fixture.scratch.file("recovery.txt")
        try writePassphraseFile(recovery, "a recovery passphrase")
        // Killed right after the journal is durable (step 1 of keys add), before the header is written.
        let killed = try sevimage(["keys", "add", fixture.image, "--passphrase-file", fixture.passphraseFile, "--new-passphrase-file", recovery,
                                   "--iterations", "1000"], environment: ["SEVIMAGE_TEST_CRASH_AFTER": "1"])
        #expect(killed.status == SIGKILL)
        #expect(FileManager.default.fileExists(atPath: fixture.image + ".sevimage-journal"))
        #expect(try !fixture.opens(recovery))
        let listed = try sevimage(["keys", "list", fixture.image, "--json"])
        #expect(listed.status == 0)
        let next = try sevimage(["keys", "remove", fixture.image, "--slot", "1", "--passphrase-file", fixture.passphraseFile, "--quiet"])
        // The journal added slot 1 first; then it was removed.
        #expect(next.status == 0, "\(next)")
        #expect(!FileManager.default.fileExists(atPath: fixture.image + ".sevimage-journal"))
        #expect(try fixture.opens(fixture.passphraseFile) && !fixture.opens(recovery))
        #expect(fixture.leftovers().isEmpty, "\(fixture.leftovers())")
    }
}
