import Foundation
import Testing
@testable import SEVImageKit

/// An image and its manifest for the export tests: a small QCOW2 that `qemu-img convert` made from random bytes,
/// a manifest whose digest is the Python oracle's, linked to a synthetic AmdSev-style firmware.
struct ExportFixture {
    let scratch: Scratch
    let ovmf: String
    let image: String
    let manifest: String

    init(modes: [String] = ["sev", "sev-es", "sev-snp"], vcpus: [Int] = [1, 4], vcpuType: String = "EPYC-Milan",
         imageBytes: Int = 3_000_000) throws {
        scratch = try Scratch()
        ovmf = scratch.file("OVMF.fd")
        image = scratch.file("vm.qcow2")
        manifest = Manifest.defaultPath(forImage: image)
        try SyntheticOVMF().write(to: ovmf)
        let raw = scratch.file("raw")
        try Data(try randomBytes(imageBytes)).write(to: URL(fileURLWithPath: raw))
        try runChecked("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", raw, image])
        unlink(raw)
        let link = try FirmwareLink.make(ovmfPath: ovmf, modes: modes, vcpus: vcpus, vcpuType: vcpuType, allowNoSecretArea: false)
        var written = secretTestManifest(firmware: link)
        written.image.file = "vm.qcow2"
        written.image.blockSHA256 = try oracleImageDigest(image)
        try written.encoded().write(to: URL(fileURLWithPath: manifest))
    }

    /// The manifest as a JSON dictionary, to change a field the way a hand edit (or an attacker) would.
    func editManifest(_ change: (inout [String: Any]) -> Void) throws {
        var object = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: manifest))) as? [String: Any])
        change(&object)
        try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: manifest))
    }

    func launchDigests(_ change: (inout [[String: Any]]) -> Void) throws {
        try editManifest { object in
            var firmware = object["firmware"] as? [String: Any] ?? [:]
            var digests = firmware["launchDigests"] as? [[String: Any]] ?? []
            change(&digests)
            firmware["launchDigests"] = digests
            object["firmware"] = firmware
        }
    }
}

/// The first word of `sha256sum`/`sha384sum` (coreutils): digests computed without sevimage.
func coreutilsDigest(_ tool: String, _ path: String) throws -> String {
    String(try runChecked(tool, [path]).stdout.prefix { $0 != " " })
}

func jsonObject(_ data: Data) throws -> [String: Any] {
    try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
}

@Suite("export reference-values", .serialized) struct ExportReferenceValuesTests {
    /// Trustee's RVPS, as `Tests/Oracles/rvps_message.py` reads a message the way its sources do, registers
    /// exactly the SNP launch digests PyPI's sev-snp-measure computes from the firmware file, one per vCPU count,
    /// under the name its default policy looks up, in both digest spellings.
    @Test(.enabled(if: hasSevSnpMeasure, "the expected digests come from PyPI's sev-snp-measure"))
    func rvpsMessageRegistersTheSNPDigestsSevSnpMeasureComputes() throws {
        let fixture = try ExportFixture()
        for encoding in ["hex", "base64"] {
            let output = fixture.scratch.file("rvps-\(encoding).json")
            let run = try sevimage(["export", "reference-values", fixture.image, "--digest-encoding", encoding, "--output", output])
            #expect(run.status == 0 && run.stdout.isEmpty, "\(run)")
            let oracle = try runChecked(python3, [repositoryRoot.path + "/Tests/Oracles/rvps_message.py", output, "--ovmf", fixture.ovmf,
                                                  "--vcpus", "1,4", "--vcpu-type", "EPYC-Milan", "--encoding", encoding])
            let answer = try jsonObject(oracle.stdoutData)
            let registered = try #require(answer["referenceValues"] as? [String: [String]])
            let expected = try #require(answer["expected"] as? [String: [String]])
            #expect(registered == expected, "\(encoding)")
            #expect(registered["snp_launch_measurement"]?.count == 2)
        }
        // Without --output the message is stdout, the same bytes.
        let stdout = try sevimage(["export", "reference-values", fixture.image])
        #expect(stdout.status == 0 && stdout.stderr.isEmpty, "\(stdout)")
        #expect(stdout.stdoutData == (try Data(contentsOf: URL(fileURLWithPath: fixture.scratch.file("rvps-hex.json")))))
    }

    /// The JSON document lists every launch digest of the manifest with its configuration, each equal to what
    /// sev-snp-measure computes for it, and the firmware's and manifest's hashes equal coreutils'.
    @Test(.enabled(if: hasSevSnpMeasure, "the expected digests come from PyPI's sev-snp-measure"))
    func jsonDocumentHasEveryDigestWithItsConfiguration() throws {
        let fixture = try ExportFixture()
        let run = try sevimage(["export", "reference-values", fixture.image, "--format", "json"])
        #expect(run.status == 0, "\(run)")
        let document = try jsonObject(run.stdoutData)
        #expect(document["format"] as? String == "sevimage-reference-values" && document["formatVersion"] as? Int == 1)
        #expect(document["manifestSHA256"] as? String == (try coreutilsDigest("sha256sum", fixture.manifest)))
        let image = try #require(document["image"] as? [String: Any])
        #expect(image["blockSHA256"] as? String == (try oracleImageDigest(fixture.image)))
        let firmware = try #require(document["firmware"] as? [String: Any])
        #expect(firmware["sha256"] as? String == (try coreutilsDigest("sha256sum", fixture.ovmf)))
        #expect(firmware["sha384"] as? String == (try coreutilsDigest("sha384sum", fixture.ovmf)))
        let digests = try #require(document["launchDigests"] as? [[String: Any]])
        // sev once; sev-es and sev-snp for 1 and 4 vCPUs.
        #expect(digests.map { "\($0["mode"] ?? "")/\($0["vcpus"] ?? "-")" } == ["sev/-", "sev-es/1", "sev-es/4", "sev-snp/1", "sev-snp/4"])
        let answers = try firmwareOracle(digests.map { entry in
            ["kind": "digest", "ovmf": fixture.ovmf, "mode": entry["mode"] ?? "", "vcpus": entry["vcpus"] ?? 1, "vcpuType": "EPYC-Milan"]
        })
        for (entry, answer) in zip(digests, answers) {
            #expect(entry["digest"] as? String == answer["digest"] as? String, "\(entry)")
            let mode = entry["mode"] as? String
            #expect(entry["algorithm"] as? String == (mode == "sev-snp" ? "sha384" : "sha256"))
            #expect(entry["guestFeatures"] as? Int == (mode == "sev" ? nil : mode == "sev-snp" ? 1 : 0))
            #expect((entry["vcpuType"] as? String) == (mode == "sev" ? nil : "EPYC-Milan"))
        }
    }

    struct Refusal: CustomStringConvertible, Sendable {
        var description: String
        var arguments: [String] = []
        var status: Int32 = 2
        var phrase: String
        var edit: @Sendable (ExportFixture) throws -> Void = { _ in }
    }

    static let refusals: [Refusal] = [
        Refusal(description: "a manifest without firmware", phrase: "has no launch digests: link the image to its firmware first",
                edit: { try $0.editManifest { $0["firmware"] = nil } }),
        Refusal(description: "no launch digests", arguments: ["--format", "json"], phrase: "has no launch digests",
                edit: { try $0.launchDigests { $0 = [] } }),
        Refusal(description: "rvps without an SEV-SNP digest", phrase: "has no sev-snp launch digest, which --format rvps needs",
                edit: { try $0.launchDigests { $0 = $0.filter { $0["mode"] as? String != "sev-snp" } } }),
        Refusal(description: "a short SNP digest", phrase: "firmware.launchDigests[3] (sev-snp) is not 96 hex digits",
                edit: { try $0.launchDigests { $0[3]["digest"] = String(repeating: "a", count: 64) } }),
        Refusal(description: "a digest that is not hex", arguments: ["--format", "json"], phrase: "firmware.launchDigests[0] (sev) is not 64 hex digits",
                edit: { try $0.launchDigests { $0[0]["digest"] = String(repeating: "g", count: 64) } }),
        Refusal(description: "an unknown mode", phrase: "has the unknown mode 'sev-tdx'",
                edit: { try $0.launchDigests { $0[1]["mode"] = "sev-tdx" } }),
        Refusal(description: "an unknown vCPU type", phrase: "names no vCPU type QEMU knows ('Pentium')",
                edit: { try $0.launchDigests { $0[3]["vcpuType"] = "Pentium" } }),
        Refusal(description: "an SNP digest without a vCPU count", phrase: "needs a vCPU count from 1 to 4096",
                edit: { try $0.launchDigests { $0[3]["vcpus"] = nil } }),
        Refusal(description: "a configuration listed twice", phrase: "the sev-snp launch digest for 4 vCPUs of type EPYC-Milan is listed twice",
                edit: { try $0.launchDigests { $0.append($0[4]) } }),
        Refusal(description: "a missing manifest", arguments: ["--manifest", "/nonexistent/m.json"], phrase: "cannot read the manifest /nonexistent/m.json"),
        Refusal(description: "not a manifest", phrase: "is not a sevimage manifest",
                edit: { try Data("{\"schemaVersion\": 1}".utf8).write(to: URL(fileURLWithPath: $0.manifest)) }),
        Refusal(description: "--json without --output", arguments: ["--json"], phrase: "--json needs --output"),
        Refusal(description: "an existing output", arguments: ["--output", "EXISTING"], status: 3, phrase: "exists; pass --force to replace it"),
        Refusal(description: "the manifest as the output", arguments: ["--output", "MANIFEST", "--force"], phrase: "an input of this command"),
    ]

    /// Each bad manifest or command line gets one line on stderr and its exit status, and writes nothing.
    @Test(arguments: refusals)
    func refusesWithOneLine(_ refusal: Refusal) throws {
        let fixture = try ExportFixture(vcpus: [1, 4])
        try refusal.edit(fixture)
        let existing = fixture.scratch.file("existing.json")
        try Data("keep me\n".utf8).write(to: URL(fileURLWithPath: existing))
        let before = entries(of: fixture.scratch.path)
        let manifestBytes = try Data(contentsOf: URL(fileURLWithPath: fixture.manifest))
        let arguments = refusal.arguments.map { $0 == "EXISTING" ? existing : $0 == "MANIFEST" ? fixture.manifest : $0 }
        let run = try sevimage(["export", "reference-values", fixture.image] + arguments)
        #expect(run.status == refusal.status, "\(run)")
        #expect(run.stderr.contains(refusal.phrase), "\(run)")
        #expect(run.stderr.split(separator: "\n").count == 1, "\(run)")
        // stdout: nothing, or with --json the error object and nothing else.
        let error = arguments.contains("--json") ? try jsonObject(run.stdoutData)["error"] as? [String: Any] : nil
        #expect(arguments.contains("--json") ? error?["exitStatus"] as? Int == Int(refusal.status) : run.stdout.isEmpty, "\(run)")
        #expect(entries(of: fixture.scratch.path) == before)
        #expect(try String(contentsOfFile: existing, encoding: .utf8) == "keep me\n")
        #expect(try Data(contentsOf: URL(fileURLWithPath: fixture.manifest)) == manifestBytes)
    }

    /// `--force` replaces an output; `--json` then reports what was written; a manifest with only SEV digests
    /// still exports as sevimage's JSON.
    @Test func forceReplacesAndJSONReports() throws {
        let fixture = try ExportFixture(modes: ["sev", "sev-es"])
        let output = fixture.scratch.file("values.json")
        try Data("old\n".utf8).write(to: URL(fileURLWithPath: output))
        let run = try sevimage(["export", "reference-values", fixture.image, "--format", "json", "--output", output, "--force", "--json"])
        #expect(run.status == 0, "\(run)")
        let summary = try jsonObject(run.stdoutData)
        #expect(summary["output"] as? String == output && summary["format"] as? String == "json" && summary["launchDigests"] as? Int == 3)
        let written = try jsonObject(Data(contentsOf: URL(fileURLWithPath: output)))
        #expect((written["launchDigests"] as? [Any])?.count == 3)
        #expect(!entries(of: fixture.scratch.path).contains { $0.hasPrefix(".sevimage-export") })
    }
}

@Suite("export containerdisk", .serialized) struct ExportContainerDiskTests {
    static let tools = hasTool("skopeo") && hasTool("umoci") && hasTool("qemu-img")

    /// The layout is what skopeo and umoci read: skopeo sees the tag, the annotations (each the manifest's
    /// value, the digests recomputed independently), amd64/linux and the one layer; every blob is named by its
    /// SHA-256; umoci unpacks a disk identical byte for byte; Python's tarfile sees it owned 107:107, 0440.
    /// Two exports give the same digests; another SOURCE_DATE_EPOCH gives another time and other digests.
    @Test(.enabled(if: tools, "needs skopeo, umoci and qemu-img (scripts/install-deps.sh --test)"))
    func skopeoAndUmociReadTheLayoutAndTheDiskIsTheImage() throws {
        let fixture = try ExportFixture(modes: ["sev", "sev-snp"], vcpus: [2], vcpuType: "EPYC-v4")
        let out = fixture.scratch.file("out")
        let run = try sevimage(["export", "containerdisk", fixture.image, "--output", out, "--tag", "v1", "--json"])
        #expect(run.status == 0, "\(run)")
        let result = try jsonObject(run.stdoutData)

        let raw = try runChecked("skopeo", ["inspect", "--raw", "oci:\(out):v1"])
        let manifest = try jsonObject(raw.stdoutData)
        let firmwareSection = try #require(try jsonObject(Data(contentsOf: URL(fileURLWithPath: fixture.manifest)))["firmware"] as? [String: Any])
        let launch = try #require(firmwareSection["launchDigests"] as? [[String: Any]])
        let expected: [String: String] = [
            "org.opencontainers.image.created": "2026-01-01T00:00:00Z",
            "org.opencontainers.image.title": "vm.qcow2",
            "org.opencontainers.image.description": "sevimage encrypted disk (QCOW2, LUKS2 root) for a KubeVirt containerDisk",
            "dev.sevimage.disk.path": "/disk/vm.qcow2",
            "dev.sevimage.image.block-sha256": try oracleImageDigest(fixture.image),
            "dev.sevimage.manifest.sha256": try coreutilsDigest("sha256sum", fixture.manifest),
            "dev.sevimage.firmware.file": "OVMF.fd",
            "dev.sevimage.firmware.sha256": try coreutilsDigest("sha256sum", fixture.ovmf),
            "dev.sevimage.firmware.sha384": try coreutilsDigest("sha384sum", fixture.ovmf),
            "dev.sevimage.launch-digest.sev": try #require(launch.first { $0["mode"] as? String == "sev" }?["digest"] as? String),
            "dev.sevimage.launch-digest.sev-snp.2-vcpus.EPYC-v4": try #require(launch.first { $0["mode"] as? String == "sev-snp" }?["digest"] as? String),
        ]
        #expect(manifest["annotations"] as? [String: String] == expected)
        #expect(manifest["mediaType"] as? String == "application/vnd.oci.image.manifest.v1+json")
        let layers = try #require(manifest["layers"] as? [[String: Any]])
        #expect(layers.count == 1 && layers[0]["mediaType"] as? String == "application/vnd.oci.image.layer.v1.tar")
        let layerDigest = try #require(layers[0]["digest"] as? String)
        #expect(result["layerDigest"] as? String == layerDigest)
        let layerBlob = out + "/blobs/sha256/" + layerDigest.dropFirst("sha256:".count)

        let inspect = try jsonObject(try runChecked("skopeo", ["inspect", "oci:\(out):v1"]).stdoutData)
        #expect(inspect["Architecture"] as? String == "amd64" && inspect["Os"] as? String == "linux")
        #expect(inspect["Layers"] as? [String] == [layerDigest])
        #expect(inspect["Digest"] as? String == result["manifestDigest"] as? String)
        #expect(inspect["Labels"] as? [String: String] == expected)

        let blobs = entries(of: out + "/blobs/sha256")
        #expect(blobs.count == 3)
        for blob in blobs { #expect(try coreutilsDigest("sha256sum", out + "/blobs/sha256/" + blob) == blob) }
        #expect(entries(of: out) == ["blobs", "index.json", "oci-layout"])

        let bundle = fixture.scratch.file("bundle")
        try runChecked("umoci", ["unpack", "--rootless", "--image", "\(out):v1", bundle])
        try runChecked("cmp", [fixture.image, bundle + "/rootfs/disk/vm.qcow2"])
        #expect(entries(of: bundle + "/rootfs/disk") == ["vm.qcow2"])

        let listing = try runChecked(python3, [repositoryRoot.path + "/Tests/Oracles/tar_listing.py", layerBlob])
        let members = try #require(try JSONSerialization.jsonObject(with: listing.stdoutData) as? [[String: Any]])
        let size = try #require(try FileManager.default.attributesOfItem(atPath: fixture.image)[.size] as? Int)
        #expect(members.count == 2)
        for (member, want) in zip(members, [("disk", "dir", 0o555), ("disk/vm.qcow2", "file", 0o440)]) {
            #expect(member["name"] as? String == want.0 && member["type"] as? String == want.1 && member["mode"] as? Int == want.2, "\(member)")
            #expect(member["uid"] as? Int == 107 && member["gid"] as? Int == 107 && member["mtime"] as? Int == 1_767_225_600, "\(member)")
        }
        #expect(members.last?["size"] as? Int == size)
        #expect(members.last?["sha256"] as? String == (try coreutilsDigest("sha256sum", fixture.image)))

        // Reproducible: again, into an existing empty directory, the same digests.
        let again = fixture.scratch.file("again")
        #expect(mkdir(again, 0o700) == 0)
        let second = try sevimage(["export", "containerdisk", fixture.image, "--output", again, "--tag", "v1", "--json"])
        #expect(second.status == 0, "\(second)")
        #expect(try jsonObject(second.stdoutData)["manifestDigest"] as? String == result["manifestDigest"] as? String)
        let epoch = try sevimage(["export", "containerdisk", fixture.image, "--output", fixture.scratch.file("epoch"), "--json"],
                                 environment: ["SOURCE_DATE_EPOCH": "1700000000"])
        #expect(epoch.status == 0, "\(epoch)")
        let epochResult = try jsonObject(epoch.stdoutData)
        #expect(epochResult["created"] as? String == "2023-11-14T22:13:20Z")
        #expect(epochResult["manifestDigest"] as? String != result["manifestDigest"] as? String)
        #expect(!entries(of: fixture.scratch.path).contains { $0.hasPrefix(".sevimage-export") })
    }

    /// An image `create` made and linked to a firmware goes through both exports: the RVPS message holds the
    /// SNP digest sev-snp-measure computes, and the disk umoci unpacks passes `sevimage verify` against the
    /// image's own manifest.
    @Test(.enabled(if: tools && hasSevSnpMeasure, "needs skopeo, umoci, qemu-img and sev-snp-measure"))
    func aCreatedImageRoundTripsThroughTheContainer() throws {
        let scratch = try Scratch()
        let tree = scratch.file("tree"), ovmf = scratch.file("OVMF.fd"), image = scratch.file("vm.qcow2")
        try makeRichTree(at: tree, owners: false)
        try SyntheticOVMF().write(to: ovmf)
        let created = try sevimage(["create", "--rootfs", tree, "--output", image, "--size", "128M", "--ovmf", ovmf, "--profile", "sev-snp", "--quiet"])
        #expect(created.status == 0, "\(created)")
        let values = scratch.file("values.json")
        let exported = try sevimage(["export", "reference-values", image, "--output", values])
        #expect(exported.status == 0, "\(exported)")
        let oracle = try runChecked(python3, [repositoryRoot.path + "/Tests/Oracles/rvps_message.py", values, "--ovmf", ovmf,
                                              "--vcpus", "1", "--vcpu-type", "EPYC-v4"])
        let answer = try jsonObject(oracle.stdoutData)
        #expect(answer["referenceValues"] as? [String: [String]] == answer["expected"] as? [String: [String]])

        let out = scratch.file("out")
        let run = try sevimage(["export", "containerdisk", image, "--output", out])
        #expect(run.status == 0, "\(run)")
        let bundle = scratch.file("bundle")
        try runChecked("umoci", ["unpack", "--rootless", "--image", out + ":latest", bundle])
        let verify = try sevimage(["verify", bundle + "/rootfs/disk/vm.qcow2", "--manifest", Manifest.defaultPath(forImage: image), "--ovmf", ovmf])
        #expect(verify.status == 0 && verify.stderr.contains("pass  image digest"), "\(verify)")
    }

    struct Refusal: CustomStringConvertible, Sendable {
        var description: String
        var arguments: [String] = []
        var status: Int32
        var phrase: String
        /// Prepares the fixture; returns the output directory's path.
        var prepare: @Sendable (ExportFixture) throws -> String
    }

    static let refusals: [Refusal] = [
        Refusal(description: "an output that holds a file", status: 3, phrase: "exists and is not an empty directory") { fixture in
            let out = fixture.scratch.file("out")
            mkdir(out, 0o755)
            try Data("keep".utf8).write(to: URL(fileURLWithPath: out + "/keep"))
            return out
        },
        Refusal(description: "an output that is a file", status: 3, phrase: "exists and is not an empty directory") { fixture in
            fixture.image
        },
        Refusal(description: "an image its manifest does not describe", status: 4, phrase: "is not the image its manifest describes (image digest") { fixture in
            let fd = open(fixture.image, O_WRONLY)
            _ = pwrite(fd, [UInt8(0x5A)], 1, 1 << 20)
            close(fd)
            return fixture.scratch.file("out")
        },
        Refusal(description: "a manifest without an image digest", status: 2, phrase: "records no digest of the image") { fixture in
            try fixture.editManifest { object in
                var image = object["image"] as? [String: Any] ?? [:]
                image["blockSHA256"] = nil
                object["image"] = image
            }
            return fixture.scratch.file("out")
        },
        Refusal(description: "not a QCOW2", status: 2, phrase: "not a QCOW2 file") { fixture in
            try Data(repeating: 7, count: 70_000).write(to: URL(fileURLWithPath: fixture.image))
            let digest = try oracleImageDigest(fixture.image)
            try fixture.editManifest { object in
                var image = object["image"] as? [String: Any] ?? [:]
                image["blockSHA256"] = digest
                object["image"] = image
            }
            return fixture.scratch.file("out")
        },
        Refusal(description: "a QCOW2 naming a backing file", status: 2, phrase: "it has a backing file") { fixture in
            unlink(fixture.image)
            try runChecked("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw", fixture.image])
            let digest = try oracleImageDigest(fixture.image)
            try fixture.editManifest { object in
                var image = object["image"] as? [String: Any] ?? [:]
                image["blockSHA256"] = digest
                object["image"] = image
            }
            return fixture.scratch.file("out")
        },
        Refusal(description: "a bad tag", arguments: ["--tag", "v1:latest"], status: 2, phrase: "is not an OCI tag") { $0.scratch.file("out") },
        Refusal(description: "a bad disk name", arguments: ["--disk-name", "a/b.qcow2"], status: 2, phrase: "cannot name the disk under /disk/") {
            $0.scratch.file("out")
        },
        Refusal(description: "a bad manifest digest", status: 2, phrase: "(sev-snp) is not 96 hex digits") { fixture in
            try fixture.launchDigests { $0[$0.count - 1]["digest"] = "00" }
            return fixture.scratch.file("out")
        },
    ]

    /// Each refusal is one line with its exit status, and leaves the directory as it found it.
    @Test(.enabled(if: hasTool("qemu-img"), "the fixture is made with qemu-img"), arguments: refusals)
    func refusesAndLeavesNothing(_ refusal: Refusal) throws {
        let fixture = try ExportFixture(modes: ["sev", "sev-snp"], vcpus: [1])
        let out = try refusal.prepare(fixture)
        let before = entries(of: fixture.scratch.path)
        let run = try sevimage(["export", "containerdisk", fixture.image, "--output", out, "--json"] + refusal.arguments)
        #expect(run.status == refusal.status, "\(run)")
        #expect(run.stderr.contains(refusal.phrase) && run.stderr.split(separator: "\n").count == 1, "\(run)")
        let error = try jsonObject(run.stdoutData)["error"] as? [String: Any]
        #expect(error?["exitStatus"] as? Int == Int(refusal.status), "\(run)")
        #expect(entries(of: fixture.scratch.path) == before)
    }

    /// The layer, written straight from a file whose size is no multiple of 512 or 64 KiB, is a tar Python's
    /// tarfile reads back: the headers' fields, the data's SHA-256, the padding and the end; its digest is the
    /// SHA-256 of its bytes. A wrong expected image digest throws before the archive is finished.
    @Test func layerIsATarPythonReads() throws {
        let scratch = try Scratch()
        let source = scratch.file("source"), layer = scratch.file("layer")
        try Data(try randomBytes(200_001)).write(to: URL(fileURLWithPath: source))
        let export = ContainerDiskExport(image: source, output: scratch.file("out"), diskName: "odd.qcow2")
        let expected = ManifestValues.ImageDigest(kind: .blockSHA256, hex: try oracleImageDigest(source))
        let written = try export.writeLayer(from: RawFile(path: source, writable: false), size: 200_001, to: layer, mtime: 1_700_000_000, expected: expected)
        #expect(hex(written.digest) == (try coreutilsDigest("sha256sum", layer)))
        #expect(written.size == 512 * 2 + 200_192 + 1024)
        let listing = try runChecked(python3, [repositoryRoot.path + "/Tests/Oracles/tar_listing.py", layer])
        let members = try #require(try JSONSerialization.jsonObject(with: listing.stdoutData) as? [[String: Any]])
        #expect(members.map { $0["name"] as? String } == ["disk", "disk/odd.qcow2"])
        #expect(members.last?["sha256"] as? String == (try coreutilsDigest("sha256sum", source)))
        #expect(members.allSatisfy { $0["mtime"] as? Int == 1_700_000_000 && $0["uid"] as? Int == 107 })

        // The manifest of sevimage 0.1 records the whole file's SHA-256: that is checked instead.
        let whole = ManifestValues.ImageDigest(kind: .sha256, hex: try coreutilsDigest("sha256sum", source))
        _ = try export.writeLayer(from: RawFile(path: source, writable: false), size: 200_001, to: scratch.file("layer2"), mtime: 0, expected: whole)
        let wrong = ManifestValues.ImageDigest(kind: .blockSHA256, hex: String(repeating: "0", count: 64))
        #expect(throws: ExportError.self) {
            try export.writeLayer(from: RawFile(path: source, writable: false), size: 200_001, to: scratch.file("layer3"), mtime: 0, expected: wrong)
        }
    }

    /// A disk of 8 GiB or more does not fit the ustar size field: a pax header carries the size, and Python's
    /// tarfile reads 9 GiB from it (the data itself is left out of this archive).
    @Test func sizesPast8GiBGoInAPaxHeader() throws {
        let scratch = try Scratch()
        let path = scratch.file("big.tar")
        let size: UInt64 = 9 << 30
        let header = TarEntryHeader.entry(name: "disk/big.qcow2", kind: .file, mode: 0o440, uid: 107, gid: 107, size: size, mtime: 42)
        #expect(header.count == 3 * 512)
        try Data(header + [UInt8](repeating: 0, count: 1 << 16)).write(to: URL(fileURLWithPath: path))
        let listing = try runChecked(python3, [repositoryRoot.path + "/Tests/Oracles/tar_listing.py", path, "--headers-only"])
        let member = try #require((try JSONSerialization.jsonObject(with: listing.stdoutData) as? [[String: Any]])?.first)
        #expect(member["name"] as? String == "disk/big.qcow2" && member["size"] as? Int == Int(size) && member["mode"] as? Int == 0o440)
        #expect(member["uid"] as? Int == 107 && member["mtime"] as? Int == 42)
        // The record's length counts its own digits, also where adding them adds a digit.
        #expect(TarEntryHeader.paxRecord(key: "size", value: "1234") == Array("13 size=1234\n".utf8))
        #expect(TarEntryHeader.paxRecord(key: "size", value: "12") == Array("11 size=12\n".utf8))
    }
}
