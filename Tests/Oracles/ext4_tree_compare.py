#!/usr/bin/env python3
"""Checks that an ext4 image holds a directory tree exactly (test oracle, reads with debugfs only).

usage: ext4_tree_compare.py SOURCE_DIR EXT4_IMAGE [IGNORED_PATH ...]

For every entry below SOURCE_DIR: the same type, permission bits, owner and group; the same bytes
for regular files; the same target for symlinks; device numbers for devices; and entries that are
hard links of each other in the source share one inode in the image. Entries in the image that the
source lacks are reported too (except IGNORED_PATHs, such as a generated /boot/grub/grub.cfg).
Prints "ok" or one line per difference and exits non-zero.
"""
import os, re, stat, subprocess, sys, tempfile


def debugfs(image, commands):
    with tempfile.NamedTemporaryFile("w", suffix=".cmds", delete=False) as f:
        f.write("\n".join(commands) + "\n")
        name = f.name
    try:
        out = subprocess.run(["debugfs", "-f", name, image], capture_output=True, check=True)
    finally:
        os.unlink(name)
    return out.stdout.decode("utf-8", "surrogateescape")


def quote(path):
    return '"' + path.replace('"', '\\"') + '"'


def main():
    source, image = sys.argv[1], sys.argv[2]
    ignored = set(sys.argv[3:])
    problems = []
    entries = []
    for root, dirs, files in os.walk(source):
        for name in sorted(dirs + files):
            full = os.path.join(root, name)
            entries.append("/" + os.path.relpath(full, source))
    text = debugfs(image, ["stat " + quote(p) for p in entries])
    blocks = re.split(r"^debugfs: stat ", text, flags=re.M)[1:]
    inode_of_source = {}
    with tempfile.TemporaryDirectory() as dump:
        for path, block in zip(entries, blocks):
            st = os.lstat(source + path)
            m = re.search(r"Inode: (\d+)\s+Type: (\w+)\s+Mode:\s+(\d+)", block)
            if not m:
                problems.append(f"{path}: missing in the image")
                continue
            ino, kind, mode = int(m.group(1)), m.group(2), int(m.group(3), 8)
            user = int(re.search(r"User:\s+(\d+)", block).group(1))
            group = int(re.search(r"Group:\s+(\d+)", block).group(1))
            want = {stat.S_IFREG: "regular", stat.S_IFDIR: "directory", stat.S_IFLNK: "symlink",
                    stat.S_IFCHR: "character", stat.S_IFBLK: "block", stat.S_IFIFO: "FIFO",
                    stat.S_IFSOCK: "socket"}[stat.S_IFMT(st.st_mode)]
            if kind != want:
                problems.append(f"{path}: type {kind}, expected {want}")
            if mode != stat.S_IMODE(st.st_mode):
                problems.append(f"{path}: mode {mode:o}, expected {stat.S_IMODE(st.st_mode):o}")
            if (user, group) != (st.st_uid, st.st_gid):
                problems.append(f"{path}: owner {user}:{group}, expected {st.st_uid}:{st.st_gid}")
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                if key in inode_of_source and inode_of_source[key] != ino:
                    problems.append(f"{path}: not a hard link of its source siblings")
                inode_of_source.setdefault(key, ino)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(source + path)
                fm = re.search(r'Fast link dest: "(.*)"', block)
                got = fm.group(1) if fm else None
                if got is None:
                    out = os.path.join(dump, "link")
                    debugfs(image, [f"dump {quote(path)} {quote(out)}"])
                    got = open(out, "rb").read().decode("utf-8", "surrogateescape") if os.path.exists(out) else None
                if got != target:
                    problems.append(f"{path}: symlink to {got!r}, expected {target!r}")
            elif stat.S_ISREG(st.st_mode):
                out = os.path.join(dump, "file")
                debugfs(image, [f"dump {quote(path)} {quote(out)}"])
                with open(out, "rb") as a, open(source + path, "rb") as b:
                    if a.read() != b.read():
                        problems.append(f"{path}: contents differ")
                os.unlink(out)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                dm = re.search(r"Device major/minor number: (\d+):(\d+)", block)
                if not dm or (int(dm.group(1)), int(dm.group(2))) != (os.major(st.st_rdev), os.minor(st.st_rdev)):
                    problems.append(f"{path}: device numbers differ")
    # Entries in the image that the source does not have.
    listing = debugfs(image, ["ls -p " + quote(p) for p in ["/"] + [p for p in entries if os.path.isdir(source + p) and not os.path.islink(source + p)]])
    present = set()
    for chunk in re.split(r"^debugfs: ls -p ", listing, flags=re.M)[1:]:
        directory = chunk.split("\n", 1)[0].strip('"')
        for line in chunk.split("\n")[1:]:
            parts = line.split("/")
            if len(parts) >= 6 and parts[5] not in (".", "..", "lost+found"):
                present.add((directory.rstrip("/") + "/" + parts[5]))
    for extra in sorted(present - set(entries) - ignored):
        if not any(extra == i or extra.startswith(i + "/") for i in ignored):
            problems.append(f"{extra}: in the image but not in the source")
    print("\n".join(problems) if problems else "ok")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
