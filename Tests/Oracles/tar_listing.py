#!/usr/bin/env python3
"""Lists a tar archive's members with Python's tarfile (no code shared with sevimage).

  tar_listing.py ARCHIVE [--headers-only]

Prints a JSON list: {"name", "type" ("file", "dir", other), "uid", "gid", "uname", "gname", "mode", "mtime",
"size", "sha256" (files, unless --headers-only)}. --headers-only reads the archive as a stream and stops after
the first member's header, for archives whose data was left out (a header declaring 9 GiB).
"""
import hashlib
import json
import sys
import tarfile


def describe(archive, member, data):
    entry = {"name": member.name, "type": "file" if member.isfile() else "dir" if member.isdir() else member.type.decode(),
             "uid": member.uid, "gid": member.gid, "uname": member.uname, "gname": member.gname,
             "mode": member.mode, "mtime": member.mtime, "size": member.size}
    if data and member.isfile():
        h = hashlib.sha256()
        f = archive.extractfile(member)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
        entry["sha256"] = h.hexdigest()
    return entry


def main():
    headers_only = "--headers-only" in sys.argv
    path = sys.argv[1]
    if headers_only:
        with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as archive:
            print(json.dumps([describe(archive, archive.next(), False)]))
        return
    with tarfile.open(path, mode="r:") as archive:
        print(json.dumps([describe(archive, m, True) for m in archive.getmembers()]))


if __name__ == "__main__":
    main()
