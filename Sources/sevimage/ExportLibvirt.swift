import ArgumentParser
import Foundation
import SEVImageKit

/// `sevimage export libvirt IMAGE`: a libvirt domain XML that boots the image the way its manifest expects.
struct ExportLibvirt: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "libvirt",
        abstract: "Write a libvirt domain XML that boots the image as an SEV guest (or, with --standard, on plain OVMF).",
        discussion: """
            The SEV domain boots the manifest's AmdSev firmware as a read-only, stateless pflash loader (no NVRAM; \
            its size and SHA-256 must be the manifest's), with <launchSecurity type='sev'>: the policy (default 0x7, \
            SEV-ES, when the manifest has SEV-ES digests, else 0x3), cbitpos and reducedPhysBits (the host's values: \
            `virsh domcapabilities` under <sev>, or CPUID 0x8000001F EBX bits 5:0 and 11:6). The vCPU \
            count and CPU model are those of the manifest's launch digest for that mode; the QCOW2 disk and a virtio \
            RNG get iommu='on'. --dh-cert and --session put the launch session (sevctl session) in the domain; \
            --qmp-socket adds a QMP socket for `sevimage launch`. Start it paused (`virsh create --paused`), then \
            run `sevimage launch --qmp unix:SOCKET ...`. --standard writes the laptop domain instead: Debian's OVMF \
            with a variables template, no launch security; type the passphrase on `virsh console`.

            Example: sevimage export libvirt vm.qcow2 --qmp-socket /var/lib/libvirt/qemu/vm.qmp --output vm.xml
            """
    )

    @Argument(help: ArgumentHelp("The image (its manifest, IMAGE.manifest.json, says what the guest expects).", valueName: "image.qcow2"))
    var image: String

    @Option(help: ArgumentHelp("The manifest (default: IMAGE.manifest.json beside the image).", valueName: "file"))
    var manifest: String?

    @Option(help: ArgumentHelp("The domain's name (default: the image's file name without its extension).", valueName: "name"))
    var name: String?

    @Option(help: ArgumentHelp("Guest memory, a whole number of MiB (K, M, G, T suffixes).", valueName: "size"))
    var memory = "2G"

    @Option(help: ArgumentHelp("vCPUs (default: the count of the manifest's digest; SEV-ES needs one it has a digest for).", valueName: "n"))
    var vcpus: Int?

    @Option(help: ArgumentHelp("SEV: the manifest's firmware (default: its name beside the manifest). --standard: OVMF code (default /usr/share/OVMF/OVMF_CODE_4M.fd).", valueName: "file"))
    var ovmf: String?

    @Option(help: ArgumentHelp("--standard: the variables template (default /usr/share/OVMF/OVMF_VARS_4M.fd).", valueName: "file"))
    var nvramTemplate: String?

    @Flag(help: "Write the standard domain: Debian's OVMF, the passphrase typed at GRUB's prompt, no SEV.")
    var standard = false

    @Option(help: ArgumentHelp("SEV guest policy, decimal or 0x hex (default 0x7 with SEV-ES digests in the manifest, else 0x3).", valueName: "policy"))
    var policy: String?

    @Option(help: ArgumentHelp("The host's C-bit position, default 51 (virsh domcapabilities; CPUID 0x8000001F EBX[5:0]).", valueName: "n"))
    var cbitpos: UInt32?

    @Option(help: ArgumentHelp("The host's physical address bit reduction, default 1 (virsh domcapabilities; CPUID 0x8000001F EBX[11:6]).", valueName: "n"))
    var reducedPhysBits: UInt32?

    @Option(help: ArgumentHelp("The guest owner's DH certificate, base64 (sevctl session's NAME_godh.b64).", valueName: "file"))
    var dhCert: String?

    @Option(help: ArgumentHelp("The launch session blob, base64 (sevctl session's NAME_session.b64).", valueName: "file"))
    var session: String?

    @Option(help: ArgumentHelp("An absolute path where QEMU opens a QMP socket for sevimage launch.", valueName: "path"))
    var qmpSocket: String?

    @Flag(help: "Accept a policy that allows debugging (NODBG clear); sevimage launch then needs --allow-debug too.")
    var allowDebug = false

    @Flag(help: "Accept a policy that allows key sharing (NOKS clear); sevimage launch then needs --allow-key-sharing too.")
    var allowKeySharing = false

    @Option(help: ArgumentHelp("Write to this file instead of stdout (created atomically; must not exist).", valueName: "file"))
    var output: String?

    @Flag(help: "Replace an existing output file.")
    var force = false

    @Flag(help: "With --output: print a JSON summary on stdout.")
    var json = false

    func validate() throws {
        if let output { try checkOutputFileName(output) }
        if json && output == nil {
            throw GeneralError.invalidArgument("--json needs --output: without it the domain XML itself is stdout")
        }
        if force && output == nil { throw GeneralError.invalidArgument("--force needs --output") }
        if standard {
            let sevOnly: [(String, Bool)] = [
                ("--policy", policy != nil), ("--cbitpos", cbitpos != nil), ("--reduced-phys-bits", reducedPhysBits != nil),
                ("--dh-cert", dhCert != nil), ("--session", session != nil), ("--qmp-socket", qmpSocket != nil),
                ("--allow-debug", allowDebug), ("--allow-key-sharing", allowKeySharing),
            ]
            if let flag = sevOnly.first(where: \.1) {
                throw GeneralError.invalidArgument("\(flag.0) belongs to the SEV domain; --standard writes one without launch security")
            }
        } else if nvramTemplate != nil {
            throw GeneralError.invalidArgument("--nvram-template belongs to the --standard domain; the SEV domain's firmware has no NVRAM")
        }
    }

    func run() throws {
        var request = LibvirtDomainExport.Request(image: image)
        request.manifest = manifest
        request.variant = standard ? .standard : .sev
        request.name = name
        request.memoryBytes = try parseSize(memory)
        request.vcpus = vcpus
        request.firmware = ovmf
        request.variablesTemplate = nvramTemplate
        request.policy = try policy.map { UInt32(try Firmware.integer($0, option: "--policy", max: UInt64(UInt32.max))) }
        if let cbitpos { request.cbitpos = cbitpos }
        if let reducedPhysBits { request.reducedPhysBits = reducedPhysBits }
        request.dhCertFile = dhCert
        request.sessionFile = session
        request.qmpSocket = qmpSocket
        request.allowDebug = allowDebug
        request.allowKeySharing = allowKeySharing
        let domain = try LibvirtDomainExport.make(request)
        let data = Data(domain.xml.utf8)
        guard let output else {
            FileHandle.standardOutput.write(data)
            return
        }
        let inputs = [domain.manifest, image, domain.firmware] + [dhCert, session, nvramTemplate].compactMap { $0 }
        try OutputFiles.writeWhole(data, to: output, replace: force, inputs: inputs)
        if json {
            struct Summary: Encodable {
                var output: String
                var domain: LibvirtDomainExport.Domain
            }
            try printJSON(Summary(output: output, domain: domain))
        } else {
            let what = domain.mode.map { "\($0), policy \(domain.policy ?? ""), \(domain.vcpus) vCPU\(domain.vcpus == 1 ? "" : "s") \(domain.cpuModel ?? "")" }
                ?? "standard boot, \(domain.vcpus) vCPU\(domain.vcpus == 1 ? "" : "s")"
            Console.write("sevimage: wrote \(output) (domain \(domain.name): \(what), firmware \(domain.firmware))\n")
        }
    }
}
