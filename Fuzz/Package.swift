// swift-tools-version:6.0
// libFuzzer targets for sevimage's parsers. Not part of the main package: build and run them with ./run.sh.
import Foundation
import PackageDescription

/// SwiftPM names a path dependency after its directory.
let mainPackage = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().lastPathComponent.lowercased()

let fuzzTargets = ["FuzzOVMFTable", "FuzzManifest", "FuzzProfile", "FuzzSecretTable", "FuzzQCOW2", "FuzzQMP", "FuzzGPT", "FuzzKeysImage"]

let package = Package(
    name: "sevimage-fuzz",
    platforms: [.macOS(.v13)],
    dependencies: [.package(path: "..")],
    targets: fuzzTargets.map { name in
        // libFuzzer brings main(): the target only defines LLVMFuzzerTestOneInput.
        .executableTarget(
            name: name,
            dependencies: [.product(name: "SEVImageKit", package: mainPackage)],
            path: "Sources/\(name)",
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]
        )
    },
    swiftLanguageModes: [.v6]
)
