// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "sevimage",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "sevimage", targets: ["sevimage"]),
        .library(name: "SEVImageKit", targets: ["SEVImageKit"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        // Profiles are TOML 1.0, read by toml++ through TOMLKit.
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
    ],
    targets: [
        // One system-library target per C library: a module map and a one-line shim header.
        .systemLibrary(name: "CCryptsetup", pkgConfig: "libcryptsetup", providers: [.apt(["libcryptsetup-dev"])]),
        .systemLibrary(name: "CFdisk", pkgConfig: "fdisk", providers: [.apt(["libfdisk-dev"])]),
        .systemLibrary(name: "CBlkid", pkgConfig: "blkid", providers: [.apt(["libblkid-dev"])]),
        .systemLibrary(name: "COpenSSL", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        .target(
            name: "SEVImageKit",
            dependencies: [
                "CCryptsetup", "CFdisk", "CBlkid", "COpenSSL",
                .product(name: "TOMLKit", package: "TOMLKit"),
            ]
        ),
        .executableTarget(
            name: "sevimage",
            dependencies: [
                "SEVImageKit",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(
            name: "SEVImageKitTests",
            dependencies: ["SEVImageKit", "sevimage"],
            resources: [.copy("Fixtures")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
