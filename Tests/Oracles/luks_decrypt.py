#!/usr/bin/env python3
"""Independent decryption of a LUKS2 aes-xts-plain64 data segment (test oracle).

usage: luks_decrypt.py PARTITION VOLUME_KEY_FILE OFFSET SECTOR_SIZE OUTPUT

Decrypts every sector of PARTITION from OFFSET on with AES-XTS from Python's `cryptography`
package, the tweak of sector n being n * (SECTOR_SIZE / 512) little-endian (dm-crypt's plain64).
Sectors that were never written (zeros in the file) decrypt to noise, as they would on a real
volume: the result is what the guest's kernel sees.
"""
import sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def main():
    partition, key_file, offset, sector_size, output = sys.argv[1:6]
    offset, sector_size = int(offset), int(sector_size)
    key = open(key_file, "rb").read()
    units = sector_size // 512
    with open(partition, "rb") as src, open(output, "wb") as dst:
        src.seek(offset)
        n = 0
        while True:
            block = src.read(sector_size * 256)
            if not block:
                break
            out = bytearray()
            for i in range(0, len(block), sector_size):
                tweak = ((n + i // sector_size) * units).to_bytes(16, "little")
                dec = Cipher(algorithms.AES(key), modes.XTS(tweak)).decryptor()
                out += dec.update(block[i:i + sector_size]) + dec.finalize()
            dst.write(out)
            n += len(block) // sector_size


if __name__ == "__main__":
    main()
