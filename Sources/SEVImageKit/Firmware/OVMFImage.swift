import Foundation

/// An OVMF flash image (`OVMF.fd`) as QEMU maps it: the whole file, ending at 4 GiB, with its GUIDed table.
public struct OVMFImage: Sendable {
    /// Larger files are refused before they are read (QEMU's biggest OVMF builds are 4 MiB).
    public static let maximumSize = 64 << 20

    /// The path as the user gave it, for messages.
    public let path: String
    public let bytes: [UInt8]
    public let table: OVMFTable

    /// Parses an image already in memory; `path` only names it in errors.
    public init(bytes: [UInt8], path: String) throws {
        guard bytes.count <= OVMFImage.maximumSize else { throw FirmwareError.tooLarge(path: path, size: bytes.count) }
        guard bytes.count >= 50 else { throw FirmwareError.tooSmall(path: path, size: bytes.count) }
        guard bytes.count % 4096 == 0 else { throw FirmwareError.notWholePages(path: path, size: bytes.count) }
        table = try OVMFTable.parse(bytes, path: path)
        self.bytes = bytes
        self.path = path
    }

    /// Reads and parses `path`.
    public static func load(path: String) throws -> OVMFImage {
        var info = stat()
        guard stat(path, &info) == 0 else {
            // A path that names no file is the caller's mistake (exit 2), as for every other input file.
            let code = errno
            if code == ENOENT || code == ENOTDIR || code == EACCES {
                throw GeneralError.invalidArgument("cannot read the firmware \(path): \(errnoDescription(code))")
            }
            throw GeneralError.io("read", path: path, errno: code)
        }
        guard (info.st_mode & S_IFMT) == S_IFREG else {
            throw GeneralError.invalidArgument("\(path) is not a regular file")
        }
        guard info.st_size <= maximumSize else { throw FirmwareError.tooLarge(path: path, size: Int(info.st_size)) }
        guard let handle = FileHandle(forReadingAtPath: path) else { throw GeneralError.io("open", path: path, errno: errno) }
        defer { try? handle.close() }
        let data: Data
        do {
            data = try handle.readToEnd() ?? Data()
        } catch {
            throw GeneralError.io("read", path: path, errno: EIO)
        }
        return try OVMFImage(bytes: [UInt8](data), path: path)
    }

    public var size: Int { bytes.count }
    /// Where QEMU maps the first byte: the image ends at 4 GiB.
    public var gpa: UInt64 { (1 << 32) - UInt64(bytes.count) }
    public var sha256: [UInt8] { Crypto.sha256(bytes) }
    public var sha384: [UInt8] { Crypto.sha384(bytes) }

    /// The SEV secret area when it is usable (non-zero base and size), nil otherwise.
    public var secretArea: OVMFTable.Area? {
        guard let area = table.secretArea, area.isUsable else { return nil }
        return area
    }

    public var verdict: Verdict { Verdict(table: table) }

    /// What the table says this build can do.
    public struct Verdict: Sendable, Equatable, Codable {
        /// An AmdSev-style build: a secret area with non-zero base and size.
        public var encryptedBoot: Bool
        /// How many bytes of secret table fit (the area rounded down to the table's 16-byte padding).
        public var secretTableCapacity: Int
        /// A SEV-ES reset block with a non-zero address: APs can start under SEV-ES and SEV-SNP.
        public var sevES: Bool
        /// SEV metadata present (and SEV-ES possible): the build can launch under SEV-SNP.
        public var sevSNP: Bool
        /// A usable hash table for measured direct kernel boot (not used by sevimage's boot path).
        public var measuredDirectBoot: Bool
        /// One sentence for people.
        public var summary: String

        init(table: OVMFTable) {
            let area = table.secretArea.flatMap { $0.isUsable ? $0 : nil }
            encryptedBoot = area != nil
            secretTableCapacity = area.map { Int($0.size) / 16 * 16 } ?? 0
            sevES = (table.resetAddress ?? 0) != 0
            sevSNP = sevES && table.metadata != nil
            measuredDirectBoot = table.hashTable?.isUsable ?? false
            if let area {
                summary = "usable for encrypted boot: secret area at \(hex32(area.base)), \(area.size) bytes, holds a secret table of up to \(secretTableCapacity) bytes"
            } else if table.secretArea != nil {
                summary = "not an AmdSev build: the secret block has base \(hex32(table.secretArea?.base ?? 0)) and size \(table.secretArea?.size ?? 0), so only the standard (password) boot path works"
            } else {
                summary = "not an AmdSev build: no SEV secret block, so only the standard (password) boot path works"
            }
        }
    }

    /// Checks that a padded secret table of `size` bytes fits the secret area.
    public func checkSecretTableFits(size: Int) throws {
        guard let area = secretArea else { throw FirmwareError.noSecretArea(path: path) }
        let capacity = Int(area.size) / 16 * 16
        guard size <= capacity else { throw FirmwareError.secretTableTooLarge(size: size, capacity: capacity) }
    }
}
