import Foundation

/// A profile file found by name or path: its text and how messages name it.
public struct ProfileSource: Sendable, Equatable {
    /// The name `profiles list` shows: the file name without `.toml`, or the path as given.
    public var name: String
    /// How error messages name it: `pipeline.toml` for a built-in, the path otherwise.
    public var displayName: String
    /// `built-in`, or the file's path.
    public var location: String
    /// Where a relative `extends` path is looked up; nil for built-ins.
    var directory: String?
    var text: [UInt8]

    public var isBuiltIn: Bool { directory == nil }

    /// The first comment line of the file, for `profiles list`.
    public var summary: String {
        for line in String(decoding: text, as: UTF8.self).split(separator: "\n") {
            let trimmed = line.drop { $0 == " " || $0 == "\t" }
            guard trimmed.hasPrefix("#") else { if trimmed.isEmpty { continue } else { break } }
            let comment = trimmed.dropFirst().drop { $0 == " " }
            if !comment.isEmpty { return String(comment) }
        }
        return ""
    }
}

/// A profile with the chain of files it was resolved from, leaf first.
public struct ResolvedProfile: Sendable {
    public var profile: Profile
    /// Display names, the requested profile first, then what it extends.
    public var chain: [String]
}

extension Profile {
    /// The environment variable naming a directory of extra profiles, searched before the built-in ones.
    public static let directoryVariable = "SEVIMAGE_PROFILE_DIR"
    /// `extends` chains longer than this are refused (a chain that long is a mistake).
    static let maximumChainLength = 16
    static let maximumFileSize = 1 << 20

    /// Loads and resolves a profile: a path (it contains `/` or ends in `.toml`) is read from disk; a bare name is
    /// looked up in `$SEVIMAGE_PROFILE_DIR`, then among the built-in profiles. `extends` chains are followed.
    public static func load(nameOrPath: String,
                            environment: [String: String] = ProcessInfo.processInfo.environment) throws(ProfileError) -> Profile {
        try resolve(nameOrPath: nameOrPath, environment: environment).profile
    }

    /// `load`, keeping the chain of files for `profiles show`.
    public static func resolve(nameOrPath: String,
                               environment: [String: String] = ProcessInfo.processInfo.environment) throws(ProfileError) -> ResolvedProfile {
        let first = try source(nameOrPath: nameOrPath, relativeTo: nil, environment: environment)
        return try resolve(first, environment: environment)
    }

    /// Resolves a profile from text (tests, `--profile -`).
    public static func resolve(text: String, displayName: String,
                               environment: [String: String] = ProcessInfo.processInfo.environment) throws(ProfileError) -> ResolvedProfile {
        let source = ProfileSource(name: displayName, displayName: displayName, location: displayName,
                                   directory: FileManager.default.currentDirectoryPath, text: Array(text.utf8))
        return try resolve(source, environment: environment)
    }

    static func resolve(_ first: ProfileSource, environment: [String: String]) throws(ProfileError) -> ResolvedProfile {
        var chain: [(source: ProfileSource, document: TOMLDocument)] = []
        var identities: [String] = []
        var next: ProfileSource? = first
        while let source = next {
            let identity = source.location == "built-in" ? "built-in:" + source.name : canonicalPath(source.location)
            if identities.contains(identity) {
                throw ProfileError.cycle(chain.map(\.source.displayName) + [source.displayName])
            }
            guard chain.count < maximumChainLength else {
                throw ProfileError.cycle(chain.map(\.source.displayName) + [source.displayName])
            }
            identities.append(identity)
            let document: TOMLDocument
            do {
                document = try TOMLReader.parse(source.text)
            } catch {
                throw ProfileError.syntax(file: source.displayName, line: error.line, column: error.column, message: error.message)
            }
            chain.append((source, document))
            next = nil
            for entry in document.entries where entry.table.isEmpty && entry.key == "extends" {
                guard case .string(let parent) = entry.value, !parent.isEmpty else {
                    throw ProfileError.wrongType(file: source.displayName, line: entry.line, key: "extends",
                                                 expected: "the name or path of another profile", found: entry.value.typeDescription)
                }
                next = try Profile.source(nameOrPath: parent, relativeTo: source, environment: environment)
            }
        }

        var profile = Profile()
        var origins: [String: ProfileValueOrigin] = [:]
        for (source, document) in chain.reversed() {
            try apply(document, from: source.displayName, to: &profile, origins: &origins)
        }
        if profile.diskSize < profile.espSize + minimumRootSize {
            let origin = origins["image.size"] ?? origins["esp.size"] ?? ProfileValueOrigin(file: first.displayName, line: 1, key: "image.size")
            throw ProfileError.invalidValue(file: origin.file, line: origin.line, key: origin.key,
                                            message: "leaves no room for the root: the disk (\(formatSize(profile.diskSize))) must be at least the ESP (\(formatSize(profile.espSize))) plus 64M")
        }
        profile.name = first.name
        return ResolvedProfile(profile: profile, chain: chain.map(\.source.displayName))
    }

    /// Sets every key of one file, checking names, types and ranges.
    ///
    /// Entries come one per key path, however the file spelled the tables (`[boot]` headers, dotted keys,
    /// inline tables), so `boot.grub_timeout = 5` and `boot = { grub_timeout = 5 }` read alike.
    static func apply(_ document: TOMLDocument, from file: String, to profile: inout Profile,
                      origins: inout [String: ProfileValueOrigin]) throws(ProfileError) {
        let known = Set(tables)
        for table in document.tables where !known.contains(table.name) {
            // `[image.size]`: a table where a key's value belongs.
            try refuseTable(under: table.name, file: file, line: table.line)
            throw ProfileError.unknownTable(file: file, line: table.line, table: table.name,
                                            suggestion: closest(table.name, among: tables))
        }
        for entry in document.entries {
            if entry.table.isEmpty && entry.key == "extends" { continue }
            guard let spec = keys.first(where: { $0.table == entry.table && $0.key == entry.key }) else {
                if entry.table.isEmpty && known.contains(entry.key) {
                    // `image = {}` is an empty [image]; `image = "8G"` or `[[image]]` is no table at all.
                    if entry.value == .table([:]) { continue }
                    throw ProfileError.wrongType(file: file, line: entry.line, key: entry.key, expected: "a table",
                                                 found: entry.value.typeDescription)
                }
                try refuseTable(under: entry.qualifiedKey, file: file, line: entry.line)
                throw ProfileError.unknownKey(file: file, line: entry.line, key: entry.qualifiedKey,
                                              suggestion: suggestion(for: entry))
            }
            let origin = ProfileValueOrigin(file: file, line: entry.line, key: entry.qualifiedKey)
            try spec.set(&profile, entry.value, origin)
            origins[entry.qualifiedKey] = origin
        }
    }

    /// A path below a known key (`image.size.x`, from `[image.size]` or `image.size = { x = 1 }`) means that key
    /// was given a table: the key's own reader says what it takes, as for any other wrong type.
    static func refuseTable(under path: String, file: String, line: Int) throws(ProfileError) {
        guard let spec = keys.first(where: { path == $0.qualifiedKey || path.hasPrefix($0.qualifiedKey + ".") }) else { return }
        var scratch = Profile()
        try spec.set(&scratch, .table([:]), ProfileValueOrigin(file: file, line: line, key: spec.qualifiedKey))
    }

    /// The known key a mistyped one most likely meant.
    static func suggestion(for entry: TOMLEntry) -> String? {
        // The right key in the wrong table (or at the top level).
        if let moved = keys.first(where: { $0.key == entry.key }) { return moved.qualifiedKey }
        let sameTable = keys.filter { $0.table == entry.table }
        if let contained = sameTable.first(where: { $0.key.contains(entry.key) || entry.key.contains($0.key) }), entry.key.count >= 3 {
            return contained.qualifiedKey
        }
        if let near = closest(entry.key, among: sameTable.map(\.key)) { return "\(entry.table).\(near)" }
        if let near = closest(entry.qualifiedKey, among: keys.map(\.qualifiedKey)) { return near }
        // A dotted key under the wrong header (`[image]` then `luks.iteration = 5`): what it means without it.
        if let dot = entry.table.firstIndex(of: "."), !entry.table.hasPrefix("\"") {
            var shorter = entry
            shorter.table = String(entry.table[entry.table.index(after: dot)...])
            return suggestion(for: shorter)
        }
        return nil
    }

    /// The candidate within a small edit distance, if any.
    static func closest(_ word: String, among candidates: [String]) -> String? {
        let limit = max(2, word.count / 3)
        let scored = candidates.map { ($0, editDistance(word, $0)) }.filter { $0.1 <= limit }
        return scored.min { $0.1 < $1.1 }?.0
    }

    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a.utf8.prefix(256)), b = Array(b.utf8.prefix(256))
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var previous = Array(0...b.count)
        for i in 1...a.count {
            var row = [i] + Array(repeating: 0, count: b.count)
            for j in 1...b.count {
                row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            previous = row
        }
        return previous[b.count]
    }

    // MARK: - Finding files

    /// Whether `nameOrPath` names a file rather than a profile.
    static func isPath(_ nameOrPath: String) -> Bool {
        nameOrPath.contains("/") || nameOrPath.hasSuffix(".toml")
    }

    /// Finds a profile by name or path. A relative path in `extends` is relative to the extending file's directory.
    static func source(nameOrPath: String, relativeTo parent: ProfileSource?,
                       environment: [String: String]) throws(ProfileError) -> ProfileSource {
        if isPath(nameOrPath) {
            var path = nameOrPath
            if !path.hasPrefix("/"), let directory = parent?.directory {
                path = directory + "/" + path
            }
            return ProfileSource(name: nameOrPath, displayName: path, location: path,
                                 directory: PathName.directory(of: path).isEmpty ? "." : PathName.directory(of: path),
                                 text: try readProfileFile(path))
        }
        var searched: [String] = []
        if let directory = environment[directoryVariable], !directory.isEmpty {
            let path = directory + "/" + nameOrPath + ".toml"
            searched.append(directory)
            if FileManager.default.fileExists(atPath: path) {
                let source = ProfileSource(name: nameOrPath, displayName: path, location: path, directory: directory,
                                           text: try readProfileFile(path))
                // A directory profile that extends the built-in profile of the same name (say default.toml
                // extending "default") means the built-in one, not itself.
                if parent?.location != path { return source }
            }
        }
        searched.append("the built-in profiles")
        if let text = builtInProfiles[nameOrPath] {
            return ProfileSource(name: nameOrPath, displayName: nameOrPath + ".toml", location: "built-in",
                                 directory: nil, text: Array(text.utf8))
        }
        throw ProfileError.notFound(name: nameOrPath, searched: searched)
    }

    /// Every profile `load` can find by name: the directory's first, then the built-in ones they do not shadow.
    public static func available(environment: [String: String] = ProcessInfo.processInfo.environment) -> [ProfileSource] {
        var result: [ProfileSource] = []
        if let directory = environment[directoryVariable], !directory.isEmpty,
           let names = try? FileManager.default.contentsOfDirectory(atPath: directory) {
            for file in names.sorted() where file.hasSuffix(".toml") && !file.hasPrefix(".") {
                let path = directory + "/" + file
                guard let text = try? readProfileFile(path) else { continue }
                let name = String(file.dropLast(5))
                result.append(ProfileSource(name: name, displayName: path, location: path, directory: directory, text: text))
            }
        }
        for name in builtInProfileNames where !result.contains(where: { $0.name == name }) {
            if let text = builtInProfiles[name] {
                result.append(ProfileSource(name: name, displayName: name + ".toml", location: "built-in", directory: nil, text: Array(text.utf8)))
            }
        }
        return result
    }

    static func readProfileFile(_ path: String) throws(ProfileError) -> [UInt8] {
        var status = stat()
        guard stat(path, &status) == 0 else { throw ProfileError.unreadable(path: path, reason: errnoDescription(errno)) }
        guard status.st_mode & S_IFMT == S_IFREG else { throw ProfileError.unreadable(path: path, reason: "not a regular file") }
        guard status.st_size <= maximumFileSize else {
            throw ProfileError.unreadable(path: path, reason: "\(status.st_size) bytes is too large for a profile")
        }
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw ProfileError.unreadable(path: path, reason: errnoDescription(errno)) }
        defer { close(descriptor) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw ProfileError.unreadable(path: path, reason: errnoDescription(errno))
            }
            if count == 0 { break }
            bytes.append(contentsOf: buffer[0..<count])
            if bytes.count > maximumFileSize {
                throw ProfileError.unreadable(path: path, reason: "too large for a profile")
            }
        }
        return bytes
    }

    static func canonicalPath(_ path: String) -> String {
        guard let resolved = realpath(path, nil) else { return path }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}
