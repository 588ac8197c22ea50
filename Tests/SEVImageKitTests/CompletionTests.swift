import Foundation
import Testing
@testable import SEVImageKit

/// Shell completions come from the argument parser and know every subcommand and option.
@Suite struct CompletionTests {
    @Test(arguments: ["bash", "zsh", "fish"])
    func completionScriptNamesTheCommands(shell: String) throws {
        let result = try sevimage(["--generate-completion-script", shell])
        #expect(result.status == 0 && result.stderr.isEmpty)
        for word in ["inspect", "verify", "link", "create", "--passphrase-file", "--no-initramfs-unlock"] {
            // fish lists options without their dashes.
            #expect(result.stdout.contains(String(word.drop { $0 == "-" })), "\(shell) completions miss \(word)")
        }
        if shell == "bash" {
            let scratch = try Scratch()
            try result.stdoutData.write(to: URL(fileURLWithPath: scratch.file("sevimage.bash")))
            #expect(try runProgram("bash", ["-n", scratch.file("sevimage.bash")]).status == 0)
        }
    }

    @Test func installScriptIsValidShell() throws {
        let script = repositoryRoot.appendingPathComponent("scripts/install-sevimage.sh").path
        #expect(try runProgram("sh", ["-n", script]).status == 0)
    }
}
