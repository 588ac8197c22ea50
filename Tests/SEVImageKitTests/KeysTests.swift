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
