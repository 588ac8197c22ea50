import Foundation

/// `export libvirt`: a libvirt domain XML that boots an image the way its manifest expects.
///
/// ```
/// SEV (default)                                       standard (--standard)
/// <domain type='kvm'>                                 <domain type='kvm'>
///   <memoryBacking><locked/>                            (no locked memory)
///   <vcpu>N</vcpu>  <cpu custom: the digest's model>    <vcpu>N</vcpu>  <cpu mode='host-model'/>
///   <os> q35, <loader readonly pflash stateless>        <os> q35, <loader readonly pflash> Debian's OVMF code
///        the manifest's OVMF.fd, no NVRAM                    <nvram template=...> its variables template
///   <devices> qcow2 disk on virtio, iommu='on';         <devices> qcow2 disk on virtio, serial console
///             serial console, virtio rng iommu='on'
///   <launchSecurity type='sev'> cbitpos,                (no launchSecurity: GRUB on the ESP asks for the
///     reducedPhysBits, policy [dhCert, session]          passphrase on the serial console)
///   <metadata> what the domain was made from
/// ```
///
/// The SEV domain's firmware must be the file the manifest's launch digests were computed from (size and
/// SHA-256 checked), its policy one that `sevimage launch` accepts, and the manifest must hold a launch digest
/// for the policy's mode (SEV or SEV-ES, bit 2) and, for SEV-ES, for the vCPU count: otherwise the launch
/// measurement could never match and the guest would never get its disk secret.
public enum LibvirtDomainExport {
    /// The namespace of the `<metadata>` element (libvirt keeps any namespaced element there).
    public static let metadataNamespace = "urn:sevimage:libvirt-domain:1"
    static let qemuNamespace = "http://libvirt.org/schemas/domain/qemu/1.0"

    public enum Variant: String, Sendable, Codable, CaseIterable {
        /// An AMD SEV or SEV-ES guest on the manifest's AmdSev firmware: the secret is injected at launch.
        case sev
        /// Plain OVMF: the passphrase is typed at GRUB's prompt (the image author's laptop).
        case standard
    }

    /// What the user asked for; nil fields take the manifest's or the documented defaults.
    public struct Request: Sendable {
        public var image: String
        public var manifest: String?
        public var variant: Variant = .sev
        public var name: String?
        public var memoryBytes: UInt64 = 2 << 30
        public var vcpus: Int?
        /// SEV: the manifest's firmware file (default: its name beside the manifest); standard: the OVMF code.
        public var firmware: String?
        /// standard only: the variables template libvirt copies for the domain.
        public var variablesTemplate: String?
        /// SEV only: the guest policy (default 0x7 when the manifest has SEV-ES digests, else 0x3).
        public var policy: UInt32?
        public var cbitpos: UInt32 = 51
        public var reducedPhysBits: UInt32 = 1
        /// SEV only: files holding the base64 guest owner's DH certificate and launch session blob.
        public var dhCertFile: String?
        public var sessionFile: String?
        /// SEV only: a QMP socket QEMU opens besides libvirt's monitor, for `sevimage launch`.
        public var qmpSocket: String?
        public var allowDebug = false
        public var allowKeySharing = false

        public init(image: String) { self.image = image }
    }

    /// The domain and what it was made of, for `--json` and the summary line.
    public struct Domain: Sendable, Encodable {
        public var xml: String
        public var name: String
        public var variant: Variant
        /// `sev` or `sev-es` (nil for the standard variant).
        public var mode: String?
        /// Hex, as in the XML (nil for the standard variant).
        public var policy: String?
        public var vcpus: Int
        public var cpuModel: String?
        public var memoryMiB: UInt64
        public var firmware: String
        public var image: String
        public var manifest: String
        /// The launch digest the guest's measurement must come from (nil for the standard variant).
        public var launchDigest: String?

        enum CodingKeys: String, CodingKey {
            case name, variant, mode, policy, vcpus, cpuModel, memoryMiB, firmware, image, manifest, launchDigest
        }
    }

    public static let minimumMemory: UInt64 = 128 << 20
    public static let maximumMemory: UInt64 = 16 << 40
    /// A libvirt domain name becomes part of file names (`/var/log/libvirt/qemu/NAME.log`, `NAME_VARS.fd`).
    public static let maximumNameBytes = 200

    public static func make(_ request: Request) throws -> Domain {
        let manifestPath = request.manifest ?? Manifest.defaultPath(forImage: request.image)
        let values = try ManifestValues.load(manifestPath: manifestPath)
        _ = try DiskImageReader(path: request.image, requireQCOW2: true)
        let image = try checkedPath(PathName.resolved(request.image), what: "the image path")
        let name = try checkedName(request.name ?? PathName.stem(PathName.name(of: request.image)))
        guard request.memoryBytes % (1 << 20) == 0, (minimumMemory...maximumMemory).contains(request.memoryBytes) else {
            throw ExportError.badDomain("--memory \(formatSize(request.memoryBytes)) is not a whole number of MiB from 128M to 16T")
        }
        if let vcpus = request.vcpus, !(1...SEVLaunchDigest.maximumVCPUs).contains(vcpus) {
            throw ExportError.badDomain("--vcpus \(vcpus) is not from 1 to \(SEVLaunchDigest.maximumVCPUs)")
        }
        var domain = Domain(xml: "", name: name, variant: request.variant, mode: nil, policy: nil, vcpus: 1, cpuModel: nil,
                            memoryMiB: request.memoryBytes >> 20, firmware: "", image: image, manifest: manifestPath, launchDigest: nil)
        let root: MarkupElement
        switch request.variant {
        case .sev: root = try sevDomain(request, values: values, into: &domain)
        case .standard: root = try standardDomain(request, values: values, into: &domain)
        }
        domain.xml = try root.rendered()
        return domain
    }

    // MARK: The two variants

    private static func sevDomain(_ request: Request, values: ManifestValues, into domain: inout Domain) throws -> MarkupElement {
        guard let firmware = values.firmware else { throw ExportError.noLaunchDigests(manifest: values.manifestPath) }
        guard let area = firmware.secretArea, area.gpa != 0, area.size != 0 else {
            throw ExportError.badDomain("\(values.manifestPath): the firmware \(firmware.file) has no SEV secret area, so no disk secret can be injected; link the image to an AmdSev OVMF, or write the --standard domain")
        }
        let hasSEVES = !values.digests(.sevES).isEmpty
        let policy = request.policy ?? (hasSEVES ? 0x7 : 0x3)
        try checkPolicy(policy, request: request)
        let mode: LaunchMode = policy & GuestLaunch.Policy.encryptedState != 0 ? .sevES : .sev
        let digest = try launchDigest(values, mode: mode, vcpus: request.vcpus, policy: policy)
        let vcpus = digest.vcpus ?? request.vcpus ?? values.digests.lazy.compactMap(\.vcpus).first ?? 1
        let cpuModel = libvirtModel(qemuType: digest.vcpuType ?? values.digests.lazy.compactMap(\.vcpuType).first ?? "EPYC")

        let firmwarePath = try checkedPath(PathName.resolved(request.firmware
            ?? (PathName.directory(of: values.manifestPath) + "/" + firmware.file)), what: "the firmware path")
        try checkFirmware(firmwarePath, against: firmware, manifest: values.manifestPath, given: request.firmware != nil)
        guard (32...63).contains(request.cbitpos) else {
            throw ExportError.badDomain("--cbitpos \(request.cbitpos) is not a physical address bit from 32 to 63 (the host's: virsh domcapabilities, <sev><cbitpos>; CPUID 0x8000001F EBX bits 5:0)")
        }
        guard (1...63).contains(request.reducedPhysBits) else {
            throw ExportError.badDomain("--reduced-phys-bits \(request.reducedPhysBits) is not from 1 to 63 (the host's: virsh domcapabilities, <sev><reducedPhysBits>; CPUID 0x8000001F EBX bits 11:6)")
        }
        guard (request.dhCertFile == nil) == (request.sessionFile == nil) else {
            throw ExportError.badDomain("--dh-cert and --session go together: both come from one launch session (sevctl session)")
        }
        let policyText = "0x" + String(format: "%04x", policy)

        var security = [
            MarkupElement("cbitpos", text: String(request.cbitpos)),
            MarkupElement("reducedPhysBits", text: String(request.reducedPhysBits)),
            MarkupElement("policy", text: policyText),
        ]
        if let dhCert = request.dhCertFile, let session = request.sessionFile {
            security.append(MarkupElement("dhCert", text: try base64File(dhCert, what: "DH certificate")))
            security.append(MarkupElement("session", text: try base64File(session, what: "launch session")))
        }
        var rootAttributes: KeyValuePairs<String, String> = ["type": "kvm"]
        var extra: [MarkupElement] = []
        if let socket = request.qmpSocket {
            guard socket.hasPrefix("/") else {
                throw ExportError.badDomain("--qmp-socket \(socket) is not an absolute path (QEMU does not run in this directory)")
            }
            let path = try checkedPath(socket, what: "--qmp-socket")
            // QEMU's option syntax: a comma in a value is written twice.
            let value = "unix:" + path.replacingOccurrences(of: ",", with: ",,") + ",server=on,wait=off"
            rootAttributes = ["type": "kvm", "xmlns:qemu": qemuNamespace]
            extra.append(MarkupElement("qemu:commandline", children: [
                MarkupElement("qemu:arg", ["value": "-qmp"]), MarkupElement("qemu:arg", ["value": value]),
            ]))
        }

        domain.mode = mode.rawValue
        domain.policy = policyText
        domain.vcpus = vcpus
        domain.cpuModel = cpuModel
        domain.firmware = firmwarePath
        domain.launchDigest = digest.digest
        let metadata = MarkupElement("metadata", children: [
            MarkupElement("sevimage:launch", [
                "xmlns:sevimage": metadataNamespace, "mode": mode.rawValue, "policy": policyText, "vcpus": String(vcpus),
                "vcpu-type": digest.vcpuType ?? "", "launch-digest": digest.digest, "firmware-sha256": firmware.sha256,
                "secret-gpa": "0x" + String(area.gpa, radix: 16), "manifest-sha256": values.manifestSHA256,
                "image-digest": values.imageDigest?.hex ?? "",
            ]),
        ])
        return MarkupElement("domain", rootAttributes, children: [
            MarkupElement("name", text: domain.name),
            metadata,
            MarkupElement("memory", ["unit": "MiB"], text: String(domain.memoryMiB)),
            // SEV pins guest memory; locked memory spares guessing a cgroup limit (libvirt's SEV guide).
            MarkupElement("memoryBacking", children: [MarkupElement("locked")]),
            MarkupElement("vcpu", ["placement": "static"], text: String(vcpus)),
            MarkupElement("os", children: [
                MarkupElement("type", ["arch": "x86_64", "machine": "q35"], text: "hvm"),
                // One read-only file, code and variables together, no NVRAM: nothing outside the measurement.
                MarkupElement("loader", ["readonly": "yes", "type": "pflash", "stateless": "yes"], text: firmwarePath),
                MarkupElement("boot", ["dev": "hd"]),
            ]),
            MarkupElement("features", children: [MarkupElement("acpi"), MarkupElement("apic")]),
            MarkupElement("cpu", ["mode": "custom", "match": "exact", "check": "none"], children: [
                MarkupElement("model", ["fallback": "forbid"], text: cpuModel),
            ]),
            MarkupElement("clock", ["offset": "utc"]),
            MarkupElement("on_poweroff", text: "destroy"),
            // An SEV guest cannot be reset into a new measured launch: a reboot ends it; launch it again.
            MarkupElement("on_reboot", text: "destroy"),
            MarkupElement("on_crash", text: "destroy"),
            devices(image: domain.image, iommu: true),
            MarkupElement("launchSecurity", ["type": "sev"], children: security),
        ] + extra)
    }

    private static func standardDomain(_ request: Request, values: ManifestValues, into domain: inout Domain) throws -> MarkupElement {
        let code = try checkedPath(PathName.resolved(request.firmware ?? BootOptions.debianFirmwareCode), what: "the firmware path")
        let variables = try checkedPath(PathName.resolved(request.variablesTemplate ?? BootOptions.debianFirmwareVariables),
                                        what: "the variables template path")
        for (path, role) in [(code, "firmware code"), (variables, "variables template")] where !isRegularFile(path) {
            throw ExportError.badDomain("the OVMF \(role) \(path) is not a file (install Debian's ovmf, or give it with \(role == "firmware code" ? "--ovmf" : "--nvram-template"))")
        }
        domain.vcpus = request.vcpus ?? values.digests.lazy.compactMap(\.vcpus).first ?? 1
        domain.firmware = code
        return MarkupElement("domain", ["type": "kvm"], children: [
            MarkupElement("name", text: domain.name),
            MarkupElement("memory", ["unit": "MiB"], text: String(domain.memoryMiB)),
            MarkupElement("vcpu", ["placement": "static"], text: String(domain.vcpus)),
            MarkupElement("os", children: [
                MarkupElement("type", ["arch": "x86_64", "machine": "q35"], text: "hvm"),
                MarkupElement("loader", ["readonly": "yes", "type": "pflash"], text: code),
                MarkupElement("nvram", ["template": variables]),
                MarkupElement("boot", ["dev": "hd"]),
            ]),
            MarkupElement("features", children: [MarkupElement("acpi"), MarkupElement("apic")]),
            MarkupElement("cpu", ["mode": "host-model"]),
            MarkupElement("clock", ["offset": "utc"]),
            MarkupElement("on_poweroff", text: "destroy"),
            MarkupElement("on_reboot", text: "restart"),
            MarkupElement("on_crash", text: "destroy"),
            devices(image: domain.image, iommu: false),
        ])
    }

    /// The disk, the serial console and a virtio RNG; with `iommu`, every virtio device gets `iommu='on'`
    /// (an SEV guest's devices can only DMA through bounce buffers in shared memory). No balloon, no USB.
    private static func devices(image: String, iommu: Bool) -> MarkupElement {
        let diskDriver: MarkupElement = iommu
            ? MarkupElement("driver", ["name": "qemu", "type": "qcow2", "iommu": "on"])
            : MarkupElement("driver", ["name": "qemu", "type": "qcow2"])
        var rng = [MarkupElement("backend", ["model": "random"], text: "/dev/urandom")]
        if iommu { rng.append(MarkupElement("driver", ["iommu": "on"])) }
        return MarkupElement("devices", children: [
            MarkupElement("disk", ["type": "file", "device": "disk"], children: [
                diskDriver,
                MarkupElement("source", ["file": image]),
                MarkupElement("target", ["dev": "vda", "bus": "virtio"]),
            ]),
            MarkupElement("controller", ["type": "usb", "model": "none"]),
            MarkupElement("serial", ["type": "pty"], children: [MarkupElement("target", ["port": "0"])]),
            MarkupElement("console", ["type": "pty"], children: [MarkupElement("target", ["type": "serial", "port": "0"])]),
            MarkupElement("memballoon", ["model": "none"]),
            MarkupElement("rng", ["model": "virtio"], children: rng),
        ])
    }

    // MARK: Checks

    /// The policy `sevimage launch` would accept for this guest, and one for SEV or SEV-ES (not SEV-SNP).
    static func checkPolicy(_ policy: UInt32, request: Request) throws {
        let hex = "0x" + String(policy, radix: 16)
        if policy & GuestLaunch.Policy.noDebug == 0 && !request.allowDebug {
            throw ExportError.badDomain("policy \(hex) allows debugging (NODBG, bit 0, clear): the host could read the guest, and sevimage launch refuses it; set bit 0 or pass --allow-debug")
        }
        if policy & GuestLaunch.Policy.noKeySharing == 0 && !request.allowKeySharing {
            throw ExportError.badDomain("policy \(hex) allows key sharing (NOKS, bit 1, clear), which sevimage launch refuses; set bit 1 or pass --allow-key-sharing")
        }
    }

    /// The manifest's digest for `mode` (and for SEV-ES, `vcpus`, default the first count it lists).
    static func launchDigest(_ values: ManifestValues, mode: LaunchMode, vcpus: Int?, policy: UInt32) throws -> ManifestValues.Digest {
        let candidates = values.digests(mode)
        let hex = "0x" + String(policy, radix: 16)
        guard !candidates.isEmpty else {
            let other = mode == .sev ? "set bit 2 (e.g. --policy 0x7) for SEV-ES" : "clear bit 2 (e.g. --policy 0x3) for plain SEV"
            let listed = Set(values.digests.map(\.mode)).sorted().joined(separator: ", ")
            throw ExportError.badDomain("\(values.manifestPath) has no \(mode.rawValue) launch digest, which policy \(hex) launches (it has: \(listed.isEmpty ? "none" : listed)); \(other), or link the image with a profile measuring \(mode.rawValue)")
        }
        guard mode == .sevES else { return candidates[0] }
        guard let vcpus else { return candidates[0] }
        guard let match = candidates.first(where: { $0.vcpus == vcpus }) else {
            let counts = candidates.compactMap(\.vcpus).map(String.init).joined(separator: ", ")
            throw ExportError.badDomain("\(values.manifestPath) has no sev-es launch digest for \(vcpus) vCPUs (only for \(counts)); an SEV-ES measurement covers every vCPU, so give one of those with --vcpus")
        }
        return match
    }

    /// The libvirt CPU model for a QEMU `-cpu` type: its unversioned name (`EPYC-v4` -> `EPYC`), which libvirt's
    /// CPU map knows. Versions of a model change features, never the family, model and stepping that the
    /// SEV-ES VMSA carries, so the launch digest is the same.
    public static func libvirtModel(qemuType: String) -> String {
        let name = (try? VCPUType.named(qemuType).name) ?? qemuType
        guard let dash = name.lastIndex(of: "-") else { return name }
        let suffix = name[name.index(after: dash)...]
        if suffix.count >= 2, suffix.first == "v", suffix.dropFirst().allSatisfy({ $0.isASCII && $0.isNumber }) {
            return String(name[..<dash])
        }
        return name
    }

    private static func checkFirmware(_ path: String, against firmware: FirmwareLink, manifest: String, given: Bool) throws {
        guard isRegularFile(path) else {
            let hint = given ? "" : " (the manifest names \(firmware.file), looked for beside it; give the file with --ovmf)"
            throw ExportError.badDomain("the firmware \(path) is not a file\(hint)")
        }
        var info = stat()
        guard stat(path, &info) == 0 else { throw GeneralError.io("stat", path: path, errno: errno) }
        guard UInt64(info.st_size) == firmware.size else {
            throw ExportError.firmwareMismatch(path: path, manifest: manifest, what: "size", expected: String(firmware.size), actual: String(info.st_size))
        }
        let sha256 = hex(try Crypto.hashFile(path))
        guard sha256 == firmware.sha256 else {
            throw ExportError.firmwareMismatch(path: path, manifest: manifest, what: "sha256", expected: firmware.sha256, actual: sha256)
        }
    }

    /// A libvirt domain name: 1 to 200 bytes, no `/` (libvirt refuses it), no control characters.
    static func checkedName(_ name: String) throws -> String {
        guard !name.isEmpty, !name.allSatisfy(\.isWhitespace) else { throw ExportError.badName("the domain name is empty: give one with --name") }
        guard name.utf8.count <= maximumNameBytes else {
            throw ExportError.badName("the domain name is \(name.utf8.count) bytes long; libvirt makes file names of it: at most \(maximumNameBytes)")
        }
        guard !name.contains("/") else { throw ExportError.badName("the domain name '\(name)' holds a '/', which libvirt refuses; give another with --name") }
        guard !name.unicodeScalars.contains(where: isControl) else {
            throw ExportError.badName("the domain name holds a control character; give another with --name")
        }
        return name
    }

    /// A path that goes into the XML: no control characters (QEMU and libvirt would see them as written).
    static func checkedPath(_ path: String, what: String) throws -> String {
        guard !path.unicodeScalars.contains(where: isControl) else {
            throw ExportError.badName("\(what) holds a control character (a newline?); rename the file")
        }
        return path
    }

    private static func isControl(_ scalar: Unicode.Scalar) -> Bool { scalar.value < 0x20 || scalar.value == 0x7F }

    /// A small file of base64 text (sevctl's `*_godh.b64`, `*_session.b64`), checked and trimmed.
    static func base64File(_ path: String, what: String) throws -> String {
        guard isRegularFile(path), let data = FileManager.default.contents(atPath: path) else {
            throw ExportError.badDomain("cannot read the \(what) file \(path)")
        }
        guard data.count <= 64 << 10 else { throw ExportError.badDomain("the \(what) file \(path) is \(data.count) bytes, not a base64 blob of a few KiB") }
        let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard !text.isEmpty, let decoded = Data(base64Encoded: text), !decoded.isEmpty else {
            throw ExportError.badDomain("the \(what) file \(path) does not hold base64 (as sevctl session writes it)")
        }
        return text
    }

    private static func isRegularFile(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFREG
    }
}
