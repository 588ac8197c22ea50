import ArgumentParser
import Foundation
import SEVImageKit

/// `sevimage launch`: attest a paused SEV guest over QMP and inject the disk secret only on a match.
struct LaunchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "launch",
        abstract: "Verify a paused SEV guest's launch measurement, then inject the disk secret and resume it.",
        discussion: """
        Start QEMU paused, with an SEV guest, the manifest's OVMF.fd, the launch session blob made for \
        your TK (sev-tool --generate_launch_blob, or sevctl session) and a QMP socket:

          qemu-system-x86_64 -machine q35,memory-encryption=sev0 \\
            -enable-kvm -cpu EPYC -m 4G \\
            -object sev-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,policy=0x3,\\
                dh-cert-file=godh.b64,session-file=session.b64 \\
            -drive if=pflash,format=raw,unit=0,file=OVMF.fd,readonly=on \\
            -drive if=virtio,format=qcow2,file=IMAGE.qcow2 \\
            -S -qmp unix:/run/sev-guest.qmp,server=on,wait=off

        (QEMU 6.0 and later also spell it confidential-guest-support=sev0. cbitpos comes from `cpuid` leaf 0x8000001f, EBX bits 5:0: 47 on EPYC 7xx1/7xx2, 51 on 7xx3; \
        policy 0x3 sets NODBG and NOKS, 0x7 also ES.) Then:

          sevimage launch --qmp unix:/run/sev-guest.qmp \\
            --manifest IMAGE.manifest.json \\
            --passphrase-file IMAGE.passphrase --tk-file tmp_tk.bin

        launch negotiates QMP, reads query-sev (state launch-secret, policy, API version, build) and \
        query-sev-launch-measure, and computes the measurement each launch digest of the manifest's \
        firmware (of the guest's mode: sev, or sev-es when policy bit 2 is set) gives with that policy, \
        API version, build and nonce under the TIK. Only on a match does it build the secret table, wrap \
        it (sev-inject-launch-secret at the manifest's secret area GPA) and resume the guest (cont). On \
        a mismatch it sends nothing and exits with status 4. A policy that allows debugging (NODBG clear) \
        or key sharing (NOKS clear) is refused unless --allow-debug or --allow-key-sharing is given.
        """
    )

    @Option(name: .customLong("qmp"), help: ArgumentHelp("QEMU's QMP socket.", valueName: "unix:PATH|HOST:PORT"))
    var qmp: String

    @Option(name: .customLong("manifest"), help: "The image's manifest, linked to the firmware (sevimage create --ovmf).")
    var manifest: String

    @OptionGroup var table: SecretTableOptions
    @OptionGroup var keys: TransportKeyOptions

    @Flag(name: .customLong("allow-debug"), help: "Accept a guest policy that allows debugging (NODBG clear).")
    var allowDebug = false

    @Flag(name: .customLong("allow-key-sharing"), help: "Accept a guest policy that allows key sharing (NOKS clear).")
    var allowKeySharing = false

    @Option(name: .customLong("timeout"), help: "Seconds to wait for each QMP reply.")
    var timeout: Double = 30

    @Flag(name: .customLong("json"), help: "Print the result as JSON on stdout.")
    var json = false

    func validate() throws {
        guard timeout > 0 else { throw ValidationError("--timeout must be positive") }
    }

    func run() throws {
        let address = try QMPAddress(qmp)
        let manifest = try loadManifest(self.manifest)
        _ = try GuestLaunch.secretArea(of: manifest)
        let passphrase = try table.passphrase()
        let extra = try table.extraEntries()
        let keys = try keys.keys()
        let client = try QMPClient(address: address, timeout: timeout)
        defer { client.close() }
        Console.step("connected to QEMU \(client.qemuVersion ?? "(unknown version)") at \(address)")
        let result = try GuestLaunch.run(client: client, manifest: manifest, passphrase: passphrase, extraEntries: extra, keys: keys,
                                         options: .init(allowDebug: allowDebug, allowKeySharing: allowKeySharing))
        if json {
            try printSecretJSON(result)
        } else {
            Console.write("""
            launch measurement \(result.measurement) matches \(result.mode) digest \(result.matchedDigest)
              (policy 0x\(String(result.policy, radix: 16)), API \(result.apiMajor).\(result.apiMinor), build \(result.build))
            injected a \(result.tableSize)-byte secret table at 0x\(String(result.gpa, radix: 16)) and resumed the guest

            """)
        }
    }
}
