import Foundation

/// The image's block digests, kept beside it as `IMAGE.blockdigests` so that a key operation re-hashes only
/// the blocks it rewrote instead of the whole file.
///
///     IMAGE.blockdigests:   | SHA-256(block 0) | SHA-256(block 1) | ... | SHA-256(block n-1) |    32·n bytes
///     IMAGE.qcow2:          | block 0 (64 KiB) | block 1          | ... | block n-1 (the rest) |
///     manifest image.blockSHA256  =  SHA-256(IMAGE.blockdigests)
///
/// These are exactly the bytes `ImageDigest` hashes, so the manifest's digest covers the file: no new
/// definition, and a sidecar is trusted only when its SHA-256 is the manifest's digest and it has one
/// digest per block of the image as it is. `create` and `reencrypt` write it (they have every block's
/// digest anyway); `rotate` and `keys` check it, re-hash the blocks holding the LUKS header area (the one
/// part of the file they write), patch those digests in place and record the new top digest; without a
/// trusted sidecar (an image of an earlier sevimage, a damaged sidecar, or a run killed between the two
/// writes) they hash the whole file once and write one. `verify` still hashes the whole file, and checks
/// the sidecar when there is one.
public enum BlockDigests {
    /// Why a sidecar cannot be used; nil when it can.
    static func problem(_ bytes: [UInt8]?, blockSHA256: String?, fileSize: UInt64) -> String? {
        guard let blockSHA256 else { return "the manifest records the whole file's SHA-256 (sevimage 0.1)" }
        guard let bytes else { return "there is none" }
        let blocks = ImageDigest.blockCount(size: fileSize)
        guard bytes.count == blocks * ImageDigest.leafSize else {
            return "it holds \(bytes.count) bytes, not \(ImageDigest.leafSize) for each of the image's \(blocks) blocks"
        }
        guard hex(Crypto.sha256(bytes)) == blockSHA256.lowercased() else { return "its SHA-256 is not the manifest's image digest" }
        return nil
    }

    /// The sidecar's bytes, or nil when there is no such file.
    static func read(_ path: String) throws -> [UInt8]? {
        guard ImagePaths.exists(path) else { return nil }
        let file = try RawFile(path: path, writable: false)
        var bytes = [UInt8](repeating: 0, count: Int(file.size))
        try bytes.withUnsafeMutableBytes { try file.read(into: $0, at: 0) }
        return bytes
    }

    /// Writes a whole sidecar durably (temporary name, fsync, rename, directory fsync).
    static func replace(_ path: String, with bytes: [UInt8]) throws {
        try DurableFile.replace(path, with: Data(bytes))
    }

    /// Writes the digests of `blocks` from `bytes` into the sidecar in place, then fsyncs it. A run killed
    /// meanwhile leaves a sidecar the manifest does not cover: the next key operation hashes the whole file.
    static func patch(_ path: String, with bytes: [UInt8], blocks: [Int]) throws {
        guard !blocks.isEmpty else { return }
        let file = try RawFile(path: path, writable: true)
        var runs: [Range<Int>] = []
        for block in blocks.sorted() {
            if let last = runs.last, last.upperBound == block { runs[runs.count - 1] = last.lowerBound..<block + 1 } else { runs.append(block..<block + 1) }
        }
        for run in runs {
            let range = run.lowerBound * ImageDigest.leafSize..<run.upperBound * ImageDigest.leafSize
            try bytes.withUnsafeBytes { try file.write(UnsafeRawBufferPointer(rebasing: $0[range]), at: UInt64(range.lowerBound)) }
        }
        try file.sync()
    }

    /// Hashes blocks `blocks` of `path` again into `bytes`; returns those whose digest changed.
    static func rehash(_ path: String, blocks: [Int], into bytes: inout [UInt8]) throws -> [Int] {
        let file = try RawFile(path: path, writable: false)
        let size = file.size
        var buffer = [UInt8](repeating: 0, count: ImageDigest.blockSize)
        var changed: [Int] = []
        for block in blocks {
            let start = UInt64(block) * UInt64(ImageDigest.blockSize)
            guard start < size else { continue }
            let count = Int(min(UInt64(ImageDigest.blockSize), size - start))
            let digest = try buffer.withUnsafeMutableBytes { raw -> Crypto.SHA256Value in
                let slice = UnsafeMutableRawBufferPointer(rebasing: raw[0..<count])
                try file.read(into: slice, at: start)
                return Crypto.sha256Value(UnsafeRawBufferPointer(slice))
            }
            let offset = block * ImageDigest.leafSize
            let old = Array(bytes[offset..<offset + ImageDigest.leafSize])
            withUnsafeBytes(of: digest) { bytes.replaceSubrange(offset..<offset + ImageDigest.leafSize, with: $0) }
            if Array(bytes[offset..<offset + ImageDigest.leafSize]) != old { changed.append(block) }
        }
        return changed
    }

    /// The blocks of the file that host byte ranges `ranges` touch.
    static func blocks(covering ranges: [Range<UInt64>]) -> [Int] {
        var result = Set<Int>()
        let size = UInt64(ImageDigest.blockSize)
        for range in ranges where !range.isEmpty {
            for block in Int(range.lowerBound / size)...Int((range.upperBound - 1) / size) { result.insert(block) }
        }
        return result.sorted()
    }

    /// The first block whose digest differs between two sidecars of equal length.
    static func firstDifference(_ a: [UInt8], _ b: [UInt8]) -> Int? {
        guard a.count == b.count else { return nil }
        var block = 0
        while block * ImageDigest.leafSize < a.count {
            let range = block * ImageDigest.leafSize..<(block + 1) * ImageDigest.leafSize
            if a[range] != b[range] { return block }
            block += 1
        }
        return nil
    }
}
