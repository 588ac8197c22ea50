/// Fixed-width integers read from on-disk bytes, with the byte order spelled out (Swift promises no
/// struct layout, so formats are decoded field by field). The caller has checked the bounds.
extension Array where Element == UInt8 {
    func le16(at offset: Int) -> UInt16 {
        UInt16(self[offset]) | UInt16(self[offset + 1]) << 8
    }

    func le32(at offset: Int) -> UInt32 {
        UInt32(self[offset]) | UInt32(self[offset + 1]) << 8 | UInt32(self[offset + 2]) << 16 | UInt32(self[offset + 3]) << 24
    }

    func le64(at offset: Int) -> UInt64 {
        UInt64(le32(at: offset)) | UInt64(le32(at: offset + 4)) << 32
    }

    func be32(at offset: Int) -> UInt32 {
        UInt32(self[offset]) << 24 | UInt32(self[offset + 1]) << 16 | UInt32(self[offset + 2]) << 8 | UInt32(self[offset + 3])
    }

    func be64(at offset: Int) -> UInt64 {
        UInt64(be32(at: offset)) << 32 | UInt64(be32(at: offset + 4))
    }
}
