/// Reads a guest's serial console as it streams and recognises the moments that drive a boot:
/// GRUB asking for the passphrase, GRUB refusing it, the embedded config giving up, and the text
/// that says the guest came up.
///
/// Firmware and GRUB paint the console with ANSI escape sequences (`ESC [ 0 m`, `ESC [ 2 J`) and end
/// lines with `\r\n`; the scanner removes both before matching, keeping state across chunks, so that a
/// pattern split between two reads, or interleaved with colour changes, still matches. Each occurrence
/// is reported once, in the order it appeared.
///
/// Not `Sendable`: one boot's reader owns it.
public final class SerialConsoleScanner {
    public enum Event: Equatable, Sendable {
        /// GRUB's cryptomount prompt, `Enter passphrase for hd0,gpt2 (<uuid>): `.
        case passphrasePrompt
        /// GRUB said the passphrase is wrong (`error: access denied`, `Invalid passphrase`), or the
        /// image's embedded config said it cannot unlock the root (`sevimage: cannot unlock ...`).
        case passphraseRefused
        /// The embedded config stopped the boot for another reason: a whole `sevimage: ...` line.
        case grubStopped(String)
        /// The expected text (by default the demo init's `SEVIMAGE-BOOT-OK`).
        case expectedText
        /// The booted system stopped where no one will answer: the initramfs asking for the passphrase a second
        /// time, its rescue shell, systemd's emergency mode, a kernel panic. The text is what it printed.
        case guestStuck(String)
    }

    /// What the guest prints when it is stuck after GRUB (initramfs-tools, systemd, dracut, the kernel).
    static let stuckSigns = [
        "Please unlock disk", "Please enter passphrase for disk", "Dropping to a shell!", "You are in emergency mode",
        "Entering emergency mode", "Give root password for maintenance", "Kernel panic - not syncing",
    ].map { Array($0.utf8) }

    /// What the image's embedded GRUB config prints before it halts.
    static let stopPrefix = Array("sevimage: ".utf8)
    static let prompt = Array("Enter passphrase for".utf8)
    static let refusals = [Array("error: access denied".utf8), Array("Invalid passphrase".utf8)]

    private let expected: [UInt8]
    /// Escape-free text not yet matched; bounded so a chatty guest cannot grow it.
    private var pending: [UInt8] = []
    private var escape = EscapeState.text

    private enum EscapeState {
        case text
        /// After ESC.
        case escape
        /// Inside `ESC [ ...` until a final byte (0x40...0x7E).
        case controlSequence
    }

    public init(expecting expected: String) {
        self.expected = Array(expected.utf8)
    }

    /// Feeds raw console bytes; returns them without escape sequences and carriage returns (for a log
    /// that is not a terminal) and the events they completed.
    public func consume<C: Collection>(_ bytes: C) -> (text: [UInt8], events: [Event]) where C.Element == UInt8 {
        var text: [UInt8] = []
        text.reserveCapacity(bytes.count)
        for byte in bytes {
            switch escape {
            case .text:
                if byte == 0x1B { escape = .escape } else if byte != 0x0D && byte != 0x00 { text.append(byte) }
            case .escape:
                escape = byte == UInt8(ascii: "[") ? .controlSequence : .text
            case .controlSequence:
                if (0x40...0x7E).contains(byte) { escape = .text }
            }
        }
        pending.append(contentsOf: text)
        let events = scan()
        return (text, events)
    }

    private func scan() -> [Event] {
        var events: [Event] = []
        while let (event, end) = earliestMatch() {
            events.append(event)
            pending.removeFirst(end)
        }
        // Keep only what could still begin a match (a partial pattern or an unfinished `sevimage:` line).
        let keep = 4096
        if pending.count > keep { pending.removeFirst(pending.count - keep) }
        return events
    }

    /// The first complete pattern in `pending` and the index just past it.
    private func earliestMatch() -> (Event, Int)? {
        var best: (event: Event, start: Int, end: Int)?
        func consider(_ event: Event, _ range: Range<Int>?) {
            guard let range else { return }
            if let current = best, current.start <= range.lowerBound { return }
            best = (event, range.lowerBound, range.upperBound)
        }
        consider(.passphrasePrompt, pending.firstRange(of: Self.prompt))
        for refusal in Self.refusals { consider(.passphraseRefused, pending.firstRange(of: refusal)) }
        if !expected.isEmpty { consider(.expectedText, pending.firstRange(of: expected)) }
        for sign in Self.stuckSigns { consider(.guestStuck(String(decoding: sign, as: UTF8.self)), pending.firstRange(of: sign)) }
        if let start = pending.firstRange(of: Self.stopPrefix) {
            if let newline = pending[start.upperBound...].firstIndex(of: 0x0A) {
                let line = String(decoding: pending[start.lowerBound..<newline], as: UTF8.self)
                    .trimmingCharacters(in: .whitespaces)
                let event: Event = line.contains("cannot unlock") ? .passphraseRefused : .grubStopped(line)
                consider(event, start.lowerBound..<(newline + 1))
            } else if (best.map { start.lowerBound < $0.start }) ?? true {
                // The line is not finished: wait for the rest before reporting anything after it.
                return nil
            }
        }
        return best.map { ($0.event, $0.end) }
    }
}

import Foundation
