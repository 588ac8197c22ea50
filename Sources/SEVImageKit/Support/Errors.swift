/// How a failure ends the process. The numbers are part of the command-line contract (README, "Exit codes").
public enum ExitStatus: Int32, Sendable, CaseIterable {
    /// Everything asked for was done.
    case success = 0
    /// The operation failed: an I/O error, an external tool or a library call failed.
    case failure = 1
    /// The arguments or an input file (root tree, profile, passphrase file, image, firmware) are not usable.
    case invalidInput = 2
    /// The output exists (and `--force` was not given) or another sevimage process holds the image.
    case conflict = 3
    /// A check failed: `verify` found a mismatch, or `launch` saw a measurement it must not trust.
    case verificationFailed = 4
    /// The passphrase does not open any keyslot.
    case wrongPassphrase = 5
    /// Interrupted by a signal; everything half-done was removed.
    case interrupted = 130
}

/// An error that the command line shows as one line and turns into an exit status.
///
/// Every module's error enum conforms; `description` is the line the user reads: lowercase,
/// specific, and saying what to do where that is not obvious.
public protocol SEVImageError: Error, CustomStringConvertible, Sendable {
    var exitStatus: ExitStatus { get }
}

/// Errors that belong to no single module: bad arguments and environment problems.
public enum GeneralError: SEVImageError {
    case invalidArgument(String)
    case missingTool(String, package: String)
    case toolFailed(String, status: Int32, stderr: String)
    case io(String, path: String, errno: Int32)
    case outputExists(String)
    case locked(String)
    case interrupted
    /// `command` needs `needed` bytes free in a directory that has `available`; `why` says for what.
    case notEnoughSpace(String, command: String, needed: UInt64, available: UInt64, why: String)

    public var exitStatus: ExitStatus {
        switch self {
        case .invalidArgument: .invalidInput
        case .missingTool, .toolFailed, .io, .notEnoughSpace: .failure
        case .outputExists, .locked: .conflict
        case .interrupted: .interrupted
        }
    }

    public var description: String {
        switch self {
        case .invalidArgument(let message):
            return message
        case .missingTool(let tool, let package):
            return "\(tool) is not installed; install the Debian package \(package)"
        case .toolFailed(let tool, let status, let stderr):
            let detail = stderr.split(separator: "\n").last.map { ": " + $0.trimmingCharacters(in: .whitespaces) } ?? ""
            return "\(tool) failed with status \(status)\(detail)"
        case .io(let operation, let path, let errno):
            return "cannot \(operation) \(path): \(errnoDescription(errno))"
        case .outputExists(let path):
            return "\(path) exists; pass --force to replace it"
        case .locked(let path):
            return "\(path) is in use by another sevimage process"
        case .interrupted:
            return "interrupted; partial outputs were removed"
        case .notEnoughSpace(let directory, let command, let needed, let available, let why):
            return "\(command) needs \(readableSize(needed)) free in \(directory) (\(why)) but it has \(readableSize(available)); nothing was changed"
        }
    }
}

import Foundation

/// `strerror` text for an errno value, in lowercase as the rest of our messages.
public func errnoDescription(_ code: Int32) -> String {
    String(cString: strerror(code)).lowercased()
}

extension GeneralError {
    /// A Foundation file error (`Data.write`, `FileManager`: NSCocoaErrorDomain, or NSPOSIXErrorDomain) as the one
    /// line every other I/O failure gets, "cannot write PATH: no space left on device", with exit status 1; nil for
    /// any other error. Without it the raw `Error Domain=NSCocoaErrorDomain Code=640 ...` reached the user.
    public init?(foundation error: Error) {
        guard !(error is any SEVImageError) else { return nil }
        let error = error as NSError
        guard error.domain == NSCocoaErrorDomain || error.domain == NSPOSIXErrorDomain else { return nil }
        let underlying = error.userInfo[NSUnderlyingErrorKey] as? NSError
        // A copy or move that could not write names its destination apart from its source.
        let destination = (512..<768).contains(error.code) ? error.userInfo["NSDestinationFilePath"] as? String : nil
        let path = destination ?? error.userInfo[NSFilePathErrorKey] as? String
            ?? (error.userInfo[NSURLErrorKey] as? URL)?.path
            ?? underlying?.userInfo[NSFilePathErrorKey] as? String ?? "a file"
        var code: Int32
        if error.domain == NSPOSIXErrorDomain {
            code = Int32(truncatingIfNeeded: error.code)
        } else if let underlying, underlying.domain == NSPOSIXErrorDomain {
            code = Int32(truncatingIfNeeded: underlying.code)
        } else {
            switch CocoaError.Code(rawValue: error.code) {
            case .fileWriteOutOfSpace: code = ENOSPC
            case .fileWriteVolumeReadOnly: code = EROFS
            case .fileReadNoPermission, .fileWriteNoPermission: code = EACCES
            case .fileNoSuchFile, .fileReadNoSuchFile: code = ENOENT
            case .fileWriteFileExists: code = EEXIST
            case .fileReadTooLarge: code = EFBIG
            default: code = EIO
            }
        }
        let operation: String
        switch error.code {
        case 256..<512: operation = "read"  // NSFileReadErrorMinimum ... NSFileReadErrorMaximum
        case 512..<768: operation = "write"
        default: operation = error.code == CocoaError.fileNoSuchFile.rawValue ? "find" : "use"
        }
        self = .io(operation, path: path, errno: code)
    }
}
