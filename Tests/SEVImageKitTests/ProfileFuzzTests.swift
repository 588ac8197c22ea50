import Foundation
import Testing
@testable import SEVImageKit

/// The TOML reader and the profile mapping must refuse any input with an error, never trap or hang.
@Suite("Profile fuzzing")
struct ProfileFuzzTests {
    /// A small deterministic generator (xorshift64*), so a failure can be replayed from the seed.
    struct Generator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state ^= state >> 12
            state ^= state << 25
            state ^= state >> 27
            return state &* 2_685_821_657_736_338_717
        }
    }

    static let iterations = 100_000

    /// One to four edits of `input`: a byte replaced from `alphabet`, one inserted (drawn by `insert`), one
    /// deleted, or a slice of up to 40 bytes duplicated.
    static func mutate(_ input: inout [UInt8], alphabet: [UInt8], using generator: inout Generator,
                       insert: (inout Generator) -> UInt8) {
        for _ in 0..<Int.random(in: 1...4, using: &generator) where !input.isEmpty {
            let at = Int.random(in: 0..<input.count, using: &generator)
            switch Int.random(in: 0...3, using: &generator) {
            case 0: input[at] = alphabet.randomElement(using: &generator) ?? 0
            case 1: input.insert(insert(&generator), at: at)
            case 2: input.remove(at: at)
            default:
                let end = min(input.count, at + Int.random(in: 1...40, using: &generator))
                input.insert(contentsOf: input[at..<end], at: at)
            }
        }
    }

    /// `input` through the TOML reader and the profile mapping, as `create --profile` reads a file.
    static func readProfile(_ input: [UInt8]) throws {
        let document = try TOMLReader.parse(input)
        var profile = Profile()
        var origins: [String: ProfileValueOrigin] = [:]
        try Profile.apply(document, from: "fuzz.toml", to: &profile, origins: &origins)
    }

    @Test func randomAndMutatedInputsNeverTrap() {
        var generator = Generator(state: 0x5EF1_4A6E_0000_0001)
        let seeds = Profile.builtInProfileNames.compactMap { Profile.builtInProfiles[$0] }.map { Array($0.utf8) }
            + [Array("a = [[1, \"x\\u00e9\"], 'y', -9_223_372_036_854_775_808]\n[t]\nb = \"\\U0001F600\"\n".utf8)]
        let alphabet = Array("[]{}=\"'#\\.,_-+0123456789aeftrux \t\n\r".utf8) + [0x00, 0x7f, 0xc3, 0xa9, 0xff, 0xef, 0xbb, 0xbf]
        var accepted = 0, refused = 0
        let start = Date()
        for iteration in 0..<Self.iterations {
            var input: [UInt8]
            if iteration % 4 == 0 {
                // Random bytes drawn mostly from TOML's punctuation.
                let length = Int.random(in: 0...80, using: &generator)
                input = (0..<length).map { _ in
                    Bool.random(using: &generator) ? alphabet.randomElement(using: &generator) ?? 0 : UInt8.random(in: 0...255, using: &generator)
                }
            } else {
                // A real profile with a few bytes replaced, inserted, deleted or a slice duplicated.
                input = seeds.randomElement(using: &generator) ?? []
                Self.mutate(&input, alphabet: alphabet, using: &generator) { UInt8.random(in: 0...255, using: &$0) }
            }
            do {
                try Self.readProfile(input)
                accepted += 1
            } catch let error as TOMLSyntaxError {
                let oneLine = !error.message.contains { $0.isNewline }
                #expect(error.line >= 1 && !error.message.isEmpty && oneLine)
                refused += 1
            } catch {
                let oneLine = !"\(error)".contains { $0.isNewline }
                #expect(oneLine)
                refused += 1
            }
        }
        let seconds = Date().timeIntervalSince(start)
        print("profile fuzz: \(Self.iterations) inputs in \(String(format: "%.2f", seconds)) s, \(accepted) accepted, \(refused) refused")
        #expect(accepted + refused == Self.iterations)
        #expect(accepted > 100 && refused > 100)
    }
}
