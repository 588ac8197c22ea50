import Foundation
import Testing
@testable import SEVImageKit

/// The repository's root (tests read `profiles/`, `scripts/` and `Tests/Oracles/` from it).
let repositoryRoot: URL = {
    var url = URL(fileURLWithPath: #filePath)
    while url.path != "/" {
        url.deleteLastPathComponent()
        if FileManager.default.fileExists(atPath: url.appendingPathComponent("Package.swift").path) { return url }
    }
    fatalError("Package.swift not found above \(#filePath)")
}()

/// The `sevimage` binary built beside the test bundle.
let sevimageBinary: String = {
    let bundleDirectory = Bundle.main.bundleURL.deletingLastPathComponent()
    for candidate in [bundleDirectory, URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()] {
        let path = candidate.appendingPathComponent("sevimage").path
        if FileManager.default.isExecutableFile(atPath: path) { return path }
    }
    return repositoryRoot.appendingPathComponent(".build/debug/sevimage").path
}()

/// What a finished process left behind.
struct RunResult: CustomStringConvertible {
    var status: Int32
    var stdout: String
    var stderr: String
    var stdoutData: Data
    var description: String { "status \(status)\nstdout: \(stdout)\nstderr: \(stderr)" }
}

/// Runs a program to completion, capturing stdout and stderr. `user` runs it through `setpriv` as that uid.
@discardableResult
func runProgram(_ executable: String, _ arguments: [String], input: Data? = nil, environment: [String: String] = [:],
                user: UInt32? = nil, currentDirectory: String? = nil) throws -> RunResult {
    let process = Process()
    var arguments = arguments
    var executable = executable
    if let user {
        arguments = ["--reuid=\(user)", "--regid=\(user)", "--clear-groups", "--", executable] + arguments
        executable = "/usr/bin/setpriv"
    }
    if !executable.hasPrefix("/") {
        executable = try ExternalTool(executable, package: "?").resolve()
    }
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    var env = ProcessInfo.processInfo.environment
    for (key, value) in environment { env[key] = value }
    process.environment = env
    if let currentDirectory { process.currentDirectoryURL = URL(fileURLWithPath: currentDirectory) }
    let out = Pipe(), err = Pipe(), inPipe = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = input == nil ? FileHandle.nullDevice : inPipe
    try process.run()
    if let input {
        inPipe.fileHandleForWriting.write(input)
        try inPipe.fileHandleForWriting.close()
    }
    let errBox = Box()
    let group = DispatchGroup()
    group.enter()
    DispatchQueue.global().async { errBox.data = err.fileHandleForReading.readDataToEndOfFile(); group.leave() }
    let stdout = out.fileHandleForReading.readDataToEndOfFile()
    group.wait()
    process.waitUntilExit()
    return RunResult(status: process.terminationStatus, stdout: String(decoding: stdout, as: UTF8.self),
                     stderr: String(decoding: errBox.data, as: UTF8.self), stdoutData: stdout)
}

private final class Box: @unchecked Sendable { var data = Data() }

/// Runs the `sevimage` command line; with `user`, as that unprivileged user.
@discardableResult
func sevimage(_ arguments: [String], input: Data? = nil, environment: [String: String] = [:], user: UInt32? = nil) throws -> RunResult {
    try runProgram(user == nil ? sevimageBinary : unprivilegedBinary, arguments, input: input, environment: environment, user: user)
}

/// A copy of the binary that any user can run: the checkout may sit in a directory only root can enter
/// (CI clones into one), so an unprivileged run cannot use `.build/` directly.
let unprivilegedBinary: String = {
    let directory = "/tmp/sevimage-test-bin-\(getpid())"
    let copy = directory + "/sevimage"
    try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    chmod(directory, 0o755)
    try? FileManager.default.removeItem(atPath: copy)
    try? FileManager.default.copyItem(atPath: sevimageBinary, toPath: copy)
    chmod(copy, 0o755)
    return FileManager.default.isExecutableFile(atPath: copy) ? copy : sevimageBinary
}()

/// A scratch directory removed when the test ends.
final class Scratch: Sendable {
    let path: String
    init() throws {
        var template = Array("/tmp/sevimage-test-XXXXXX".utf8CString)
        guard let p = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw GeneralError.io("create", path: "/tmp", errno: errno)
        }
        path = String(cString: p)
        chmod(path, 0o777)
    }
    func file(_ name: String) -> String { path + "/" + name }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// Whether an external program is installed (tests that need it say so with `.enabled(if:)`).
func hasTool(_ name: String) -> Bool {
    (try? ExternalTool(name, package: "?").resolve()) != nil
}

/// The Python interpreter that has the test oracles' packages (`cryptography`, `sev-snp-measure`).
let python3: String = ProcessInfo.processInfo.environment["SEVIMAGE_PYTHON"] ?? "python3"

/// Byte equality for `#expect`: a failed `#expect(a == b)` on two large `Data` makes Swift Testing compute
/// their difference, which takes minutes for megabytes that differ throughout (a hung run, not a failure).
func sameBytes(_ a: Data, _ b: Data) -> Bool { a == b }

/// The image digest of files (`image.blockSHA256`) as `Tests/Oracles/image_digest.py` computes it with
/// Python's hashlib, independently of `ImageDigest`.
func oracleImageDigests(_ paths: [String]) throws -> [String] {
    let result = try runProgram(python3, [repositoryRoot.path + "/Tests/Oracles/image_digest.py"] + paths)
    guard result.status == 0 else { throw GeneralError.invalidArgument("image_digest.py: \(result.stderr)") }
    return result.stdout.split(separator: "\n").map(String.init)
}

func oracleImageDigest(_ path: String) throws -> String { try oracleImageDigests([path])[0] }

/// The block digests of a file, back to back, as `Tests/Oracles/image_digest.py --blocks` computes them: what
/// `IMAGE.blockdigests` must hold byte for byte.
func oracleBlockDigests(_ path: String) throws -> Data {
    let result = try runProgram(python3, [repositoryRoot.path + "/Tests/Oracles/image_digest.py", "--blocks", path])
    guard result.status == 0 else { throw GeneralError.invalidArgument("image_digest.py --blocks: \(result.stderr)") }
    return result.stdoutData
}

/// After a key operation: `verify` passes, and the manifest's digest and the sidecar beside the image are the
/// independent oracle's over the whole file (the sidecar's SHA-256 is the manifest's digest).
func expectDigestsHold(image: String, _ label: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let manifestPath = Manifest.defaultPath(forImage: image)
    let manifest = try Manifest.decode(Data(contentsOf: URL(fileURLWithPath: manifestPath)), path: manifestPath)
    let oracle = try oracleImageDigest(image)
    #expect(manifest.image.blockSHA256 == oracle, "\(label): the manifest's digest is not the oracle's", sourceLocation: sourceLocation)
    let sidecar = try Data(contentsOf: URL(fileURLWithPath: ImagePaths(image: image).blockDigests))
    #expect(sameBytes(sidecar, try oracleBlockDigests(image)), "\(label): the block digests are not the oracle's", sourceLocation: sourceLocation)
    #expect(hex(Crypto.sha256(sidecar)) == oracle, "\(label)", sourceLocation: sourceLocation)
    let verify = try sevimage(["verify", image])
    #expect(verify.status == 0 && verify.stderr.contains("pass  block digests"), "\(label): \(verify)", sourceLocation: sourceLocation)
}
