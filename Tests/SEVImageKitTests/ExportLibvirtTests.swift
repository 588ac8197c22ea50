import Foundation
import Testing
@testable import SEVImageKit

/// `export libvirt`: the domain XML validates with libvirt's own schema (virt-xml-validate), and what a launch
/// depends on, read back by Python's XML parser (Tests/Oracles/libvirt_domain.py), is what the manifest says.
@Suite("export libvirt", .serialized) struct ExportLibvirtTests {
    static let tools = hasTool("virt-xml-validate") && hasTool("qemu-img")

    func domain(_ fixture: ExportFixture, _ arguments: [String]) throws -> [String: Any] {
        let output = fixture.scratch.file("domain-\(UUID().uuidString).xml")
        let run = try sevimage(["export", "libvirt", fixture.image, "--output", output] + arguments)
        #expect(run.status == 0, "\(run)")
        let validation = try runProgram("virt-xml-validate", [output, "domain"])
        #expect(validation.status == 0, "virt-xml-validate: \(validation)")
        return try jsonObject(Data(try runChecked(python3, [repositoryRoot.path + "/Tests/Oracles/libvirt_domain.py", output]).stdout.utf8))
    }

    /// The SEV domain: the manifest's firmware as a read-only stateless pflash loader, launchSecurity with the
    /// policy whose mode has a digest in the manifest, the host's cbitpos/reducedPhysBits, and the vCPU count and
    /// model of that digest; the QCOW2 disk with iommu on.
    @Test(.enabled(if: tools, "needs virt-xml-validate (libvirt-clients) and qemu-img"))
    func sevDomainValidatesAndCarriesTheManifestsValues() throws {
        let fixture = try ExportFixture(modes: ["sev", "sev-es"], vcpus: [4], vcpuType: "EPYC-Milan")
        let manifest = try jsonObject(Data(contentsOf: URL(fileURLWithPath: fixture.manifest)))
        let digests = try #require((manifest["firmware"] as? [String: Any])?["launchDigests"] as? [[String: Any]])
        let es = try #require(digests.first { $0["mode"] as? String == "sev-es" })

        let sevES = try domain(fixture, ["--cbitpos", "47", "--reduced-phys-bits", "5"])
        let security = try #require(sevES["launchSecurity"] as? [String: Any])
        #expect(security["type"] as? String == "sev")
        #expect(UInt32((security["policy"] as? String ?? "").dropFirst(2), radix: 16) == 0x7)
        #expect(security["cbitpos"] as? String == "47" && security["reducedPhysBits"] as? String == "5")
        #expect(sevES["vcpus"] as? Int == es["vcpus"] as? Int)
        #expect(sevES["cpuModel"] as? String == "EPYC-Milan")
        #expect(sevES["loader"] as? String == fixture.ovmf)
        #expect(sevES["loaderType"] as? String == "pflash" && sevES["readonly"] as? String == "yes" && sevES["stateless"] as? String == "yes")
        #expect(sevES["nvramTemplate"] is NSNull)
        let disks = try #require(sevES["disks"] as? [[String: Any]])
        #expect(disks.count == 1 && disks[0]["file"] as? String == fixture.image && disks[0]["driver"] as? String == "qcow2")
        #expect(disks[0]["iommu"] as? String == "on")
        #expect(sevES["serial"] as? Bool == true)

        let plain = try domain(fixture, ["--policy", "0x3"])
        #expect(UInt32(((plain["launchSecurity"] as? [String: Any])?["policy"] as? String ?? "").dropFirst(2), radix: 16) == 0x3)
    }

    /// The laptop's domain: Debian's OVMF with its variables template, no launch security, same disk.
    @Test(.enabled(if: tools && FileManager.default.fileExists(atPath: "/usr/share/OVMF/OVMF_CODE_4M.fd"), "needs virt-xml-validate and Debian's ovmf"))
    func standardDomainValidatesWithDebiansOVMF() throws {
        let fixture = try ExportFixture(modes: ["sev"])
        let standard = try domain(fixture, ["--standard", "--name", "a<b&'c\""])
        #expect(standard["launchSecurity"] is NSNull)
        #expect(standard["loader"] as? String == "/usr/share/OVMF/OVMF_CODE_4M.fd")
        #expect(standard["nvramTemplate"] as? String == "/usr/share/OVMF/OVMF_VARS_4M.fd")
        #expect(standard["name"] as? String == "a<b&'c\"")
        #expect((standard["disks"] as? [[String: Any]])?.first?["file"] as? String == fixture.image)
    }

    /// What cannot boot as asked is one line and nothing written: a policy whose mode the manifest has no digest
    /// for, one that allows debugging, a firmware file that is not the manifest's, SEV flags with --standard.
    @Test(.enabled(if: tools, "needs virt-xml-validate and qemu-img"))
    func refusesWithOneLineAndWritesNothing() throws {
        let fixture = try ExportFixture(modes: ["sev"])
        let other = fixture.scratch.file("other.fd")
        try Data(repeating: 0x5a, count: 4096).write(to: URL(fileURLWithPath: other))
        let cases: [([String], String)] = [
            (["--policy", "0x7"], "has no sev-es launch digest"),
            (["--policy", "0x2"], "allows debugging"),
            (["--ovmf", other], "is not the firmware"),
            (["--standard", "--policy", "0x3"], "--policy belongs to the SEV domain"),
        ]
        for (arguments, phrase) in cases {
            let output = fixture.scratch.file("refused.xml")
            let run = try sevimage(["export", "libvirt", fixture.image, "--output", output] + arguments)
            #expect(run.status != 0, "\(arguments)")
            #expect(run.stderr.contains(phrase), "\(arguments): \(run.stderr)")
            #expect(run.stderr.split(separator: "\n").count == 1, "\(arguments): \(run.stderr)")
            #expect(!FileManager.default.fileExists(atPath: output))
        }
    }
}
