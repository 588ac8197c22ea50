#!/usr/bin/env python3
"""Independent check of a manifest's image digest (`image.blockSHA256`): SHA-256 over the SHA-256 digests
of the file's 64 KiB blocks, in order, the last block as long as what is left. Prints the hex digest of
each file given."""
import hashlib
import sys

for path in sys.argv[1:]:
    outer = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(65536), b""):
            outer.update(hashlib.sha256(block).digest())
    print(outer.hexdigest())
