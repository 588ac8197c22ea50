#!/usr/bin/env python3
"""Independent check of a manifest's image digest (`image.blockSHA256`): SHA-256 over the SHA-256 digests
of the file's 64 KiB blocks, in order, the last block as long as what is left. Prints the hex digest of
each file given.

With --blocks IMAGE: writes those block digests themselves, 32 bytes each, back to back, to stdout:
byte for byte what sevimage keeps beside the image as IMAGE.blockdigests (whose SHA-256 is the digest)."""
import hashlib
import sys


def block_digests(path):
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(65536), b""):
            yield hashlib.sha256(block).digest()


if sys.argv[1:2] == ["--blocks"]:
    for path in sys.argv[2:]:
        for digest in block_digests(path):
            sys.stdout.buffer.write(digest)
    sys.exit(0)

for path in sys.argv[1:]:
    outer = hashlib.sha256()
    for digest in block_digests(path):
        outer.update(digest)
    print(outer.hexdigest())
