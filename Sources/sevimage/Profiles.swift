import ArgumentParser
import Foundation
import SEVImageKit

/// `sevimage profiles list|show`: the named settings an image is built with.
struct ProfilesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "profiles",
        abstract: "List the profiles and show one resolved.",
        discussion: "A bare NAME is looked up in $SEVIMAGE_PROFILE_DIR, then among the built-in profiles; a path (with a '/' or ending in .toml) is read from disk.",
        subcommands: [ProfilesList.self, ProfilesShow.self]
    )
}

struct ProfilesList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the profiles --profile NAME can use.")

    @Flag(help: "Print a JSON array on stdout.")
    var json = false

    func run() throws {
        let sources = Profile.available()
        if json {
            let objects = sources.map { ["name": $0.name, "location": $0.location, "summary": $0.summary] }
            let data = try JSONSerialization.data(withJSONObject: objects, options: [.prettyPrinted, .sortedKeys])
            JSONOutput.write(data + Data("\n".utf8))
            return
        }
        let width = sources.map(\.name.count).max() ?? 0
        for source in sources {
            let name = source.name.padding(toLength: width, withPad: " ", startingAt: 0)
            let location = source.location.padding(toLength: max(8, source.location.count), withPad: " ", startingAt: 0)
            print("\(name)  \(location)  \(source.summary)")
        }
    }
}

struct ProfilesShow: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show",
                                                    abstract: "Print a resolved profile with every key, as TOML or JSON.")

    @Argument(help: "A profile name or a path to a .toml file.")
    var profile: String

    @Flag(help: "Print JSON (sizes in bytes) instead of TOML.")
    var json = false

    func run() throws {
        let resolved = try Profile.resolve(nameOrPath: profile)
        if json {
            JSONOutput.write(try resolved.profile.jsonData(chain: resolved.chain) + Data("\n".utf8))
        } else {
            let header = ["profile \(resolved.profile.name), resolved from \(resolved.chain.joined(separator: " -> ")) and the defaults"]
            print(resolved.profile.tomlText(header: header), terminator: "")
        }
    }
}
