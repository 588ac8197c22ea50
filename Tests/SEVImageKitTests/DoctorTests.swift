import Foundation
import Testing
@testable import SEVImageKit

/// `sevimage doctor`: its list is every program the library can start, read from the sources (so a new
/// `ExternalTool` constant left off `RuntimeRequirements.programs` fails here), and its selections.
@Suite("doctor") struct DoctorTests {
    /// The names in `static let x = ExternalTool("name", ...)` across Sources/, and any other `ExternalTool(` call.
    static func declaredTools() throws -> (constants: Set<String>, strayCalls: [String]) {
        var constants: Set<String> = []
        var stray: [String] = []
        let sources = repositoryRoot.path + "/Sources"
        let enumerator = FileManager.default.enumerator(atPath: sources)
        let constant = try Regex(#"static let \w+ = ExternalTool\("([^"]+)""#)
        while let file = enumerator?.nextObject() as? String {
            guard file.hasSuffix(".swift") else { continue }
            let text = try String(contentsOfFile: sources + "/" + file, encoding: .utf8)
            for line in text.split(separator: "\n") where line.contains("ExternalTool(") {
                if let match = line.firstMatch(of: constant), let name = match.output[1].substring {
                    constants.insert(String(name))
                } else if !line.contains("init(") && !line.trimmingCharacters(in: .whitespaces).hasPrefix("///") {
                    stray.append("\(file): \(line.trimmingCharacters(in: .whitespaces))")
                }
            }
        }
        return (constants, stray)
    }

    @Test func doctorListsEveryProgramTheSourcesDeclare() throws {
        let declared = try Self.declaredTools()
        #expect(declared.strayCalls.isEmpty, "ExternalTool made outside the constants: \(declared.strayCalls)")
        #expect(declared.constants.count >= 14 && declared.constants.contains("mke2fs"), "\(declared.constants)")
        let result = try sevimage(["doctor", "--json"])
        let report = try jsonObject(result.stdoutData)
        let listed = (report["entries"] as? [[String: Any]] ?? []).filter { $0["kind"] as? String == "program" }.compactMap { $0["name"] as? String }
        #expect(Set(listed) == declared.constants, "doctor lists \(listed.sorted()), the sources declare \(declared.constants.sorted())")
        #expect(listed.count == Set(listed).count)
    }

    @Test func pipelineLeavesOutBootAndCommandSelects() throws {
        let pipeline = try sevimage(["doctor", "--pipeline", "--packages"])
        #expect(pipeline.status == 0)
        let packages = Set(pipeline.stdout.split(separator: "\n").map(String.init))
        #expect(packages.isSuperset(of: ["e2fsprogs", "dosfstools", "mtools", "grub-common", "grub-efi-amd64-bin"]), "\(packages)")
        #expect(packages.isDisjoint(with: ["qemu-system-x86", "ovmf"]), "\(packages)")
        let boot = try sevimage(["doctor", "--command", "boot", "--packages"])
        #expect(Set(boot.stdout.split(separator: "\n").map(String.init)) == ["qemu-system-x86", "ovmf"], "\(boot)")
        let inspect = try sevimage(["doctor", "--command", "inspect"])
        #expect(inspect.status == 0 && inspect.stdout.isEmpty && inspect.stderr.contains("starts no program"), "\(inspect)")
        let bogus = try sevimage(["doctor", "--command", "bogus"])
        #expect(bogus.status == 2 && bogus.stderr.contains("unknown command 'bogus'"), "\(bogus)")
    }

    /// The README's first command installs `scripts/install-deps.sh`'s runtime list: it holds every package doctor
    /// names, so a fresh machine runs every command (a tarball in lzop or lz4 too).
    @Test func installDepsInstallsWhatDoctorNames() throws {
        let script = try String(contentsOf: repositoryRoot.appendingPathComponent("scripts/install-deps.sh"), encoding: .utf8)
        let list = try #require(script.firstMatch(of: /runtime="([^"]*)"/)?.output.1, "no runtime= list in install-deps.sh")
        let installed = Set(list.split(whereSeparator: \.isWhitespace).map(String.init))
        let result = try sevimage(["doctor", "--packages"])
        #expect(result.status == 0, "\(result)")
        let named = Set(result.stdout.split(separator: "\n").map(String.init))
        #expect(named.count >= 10 && named.isSubset(of: installed), "install-deps.sh misses \(named.subtracting(installed).sorted())")
    }
}
