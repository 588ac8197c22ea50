import Foundation

/// A small XML element tree that renders itself with every text and attribute value escaped: the way
/// `export libvirt` writes a domain, so that a name or path from a user can never become markup.
///
/// ```
/// <name attr='value'>text</name>        text:  & < > and CR escaped as &amp; &lt; &gt; &#13;
/// <name attr='value'>                   value: & < > ' " and TAB LF CR escaped (&#9; &#10; &#13;), so that
///   <child/>                                   attribute-value normalization cannot turn them into spaces
/// </name>
/// ```
///
/// Element and attribute names are the program's own constants (checked with a precondition); values are
/// anything. A value holding a character XML 1.0 cannot carry at all, even as a reference (a control
/// character other than TAB, LF and CR, or U+FFFE/U+FFFF), makes `rendered()` throw instead.
public struct MarkupElement: Sendable, Equatable {
    public struct Attribute: Sendable, Equatable {
        public var name: String
        public var value: String
    }

    public var name: String
    public var attributes: [Attribute]
    /// Character data before the children (an element here has text or children, rarely both).
    public var text: String?
    public var children: [MarkupElement]

    public init(_ name: String, _ attributes: KeyValuePairs<String, String> = [:], text: String? = nil,
                children: [MarkupElement] = []) {
        precondition(Self.isName(name), "not an XML name: \(name)")
        for (key, _) in attributes { precondition(Self.isName(key), "not an XML attribute name: \(key)") }
        self.name = name
        self.attributes = attributes.map { Attribute(name: $0.key, value: $0.value) }
        self.text = text
        self.children = children
    }

    /// The element as a document: an XML declaration-free rendering, two spaces per level, one final newline.
    public func rendered() throws -> String {
        var output = ""
        try render(into: &output, depth: 0)
        return output
    }

    private func render(into output: inout String, depth: Int) throws {
        let indent = String(repeating: "  ", count: depth)
        output += indent + "<" + name
        for attribute in attributes {
            output += " " + attribute.name + "='" + (try Self.escaped(attribute.value, inAttribute: true, what: attribute.name)) + "'"
        }
        if text == nil && children.isEmpty {
            output += "/>\n"
            return
        }
        output += ">"
        if let text { output += try Self.escaped(text, inAttribute: false, what: name) }
        if !children.isEmpty {
            output += "\n"
            for child in children { try child.render(into: &output, depth: depth + 1) }
            output += indent
        }
        output += "</" + name + ">\n"
    }

    /// Whether XML 1.0 can carry `scalar` (its `Char` production; Swift strings hold no surrogates).
    public static func isAllowed(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x9, 0xA, 0xD: true
        case 0x20...0xFFFD: scalar.value != 0xFFFE
        case 0x10000...0x10FFFF: true
        default: false
        }
    }

    static func escaped(_ value: String, inAttribute: Bool, what: String) throws -> String {
        var output = ""
        output.reserveCapacity(value.utf8.count)
        for scalar in value.unicodeScalars {
            guard isAllowed(scalar) else {
                throw ExportError.badName("the value of \(what) holds the character U+\(String(format: "%04X", scalar.value)), which XML cannot carry")
            }
            switch scalar {
            case "&": output += "&amp;"
            case "<": output += "&lt;"
            case ">": output += "&gt;"
            case "\r": output += "&#13;"
            case "'" where inAttribute: output += "&apos;"
            case "\"" where inAttribute: output += "&quot;"
            case "\t" where inAttribute: output += "&#9;"
            case "\n" where inAttribute: output += "&#10;"
            default: output.unicodeScalars.append(scalar)
            }
        }
        return output
    }

    /// ASCII names only: a letter or `_`, then letters, digits, `_`, `-`, `.` or `:` (for `xmlns:x` and `x:name`).
    private static func isName(_ text: String) -> Bool {
        guard let first = text.utf8.first, isLetter(first) || first == UInt8(ascii: "_") else { return false }
        return text.utf8.allSatisfy { isLetter($0) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x5F || $0 == 0x2D || $0 == 0x2E || $0 == 0x3A }
    }

    private static func isLetter(_ byte: UInt8) -> Bool { (byte | 0x20) >= 0x61 && (byte | 0x20) <= 0x7A }
}
