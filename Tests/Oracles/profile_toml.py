#!/usr/bin/env python3
"""Reads TOML and profiles with Python's own TOML 1.0 reader (tomllib, Python 3.11+), independently of sevimage.

  profile_toml.py flatten FILE...   one JSON object per file: {"ok": true, "entries": {KEY: {TYPE: VALUE}}} with a key
                                    path per value (components joined by '.', quoted as TOML quotes keys that
                                    are not bare), tables inside arrays kept whole; or {"ok": false, "line": L,
                                    "column": C, "message": M} when tomllib refuses the text
  profile_toml.py resolve FILE      the profile FILE resolves to, laid out as `sevimage profiles show --json`
                                    prints it (sizes in bytes), without "name" and "chain"

`resolve` follows `extends` (a bare name is profiles/NAME.toml of this repository, a path is relative to the
extending file), applies the chain's tables from the root down, starting from profiles/default.toml, which
spells out every key. Sizes are converted by this file's own reading of the README's rule: bytes, or a whole
number with K, M, G or T (powers of 1024, an optional "iB" or "B"). `vcpus = N` means [N]. It checks nothing
else: a profile sevimage refuses is not given to it.
"""
import datetime
import json
import os
import re
import sys
import tomllib

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def quoted(component):
    if BARE.match(component):
        return component
    out = '"'
    for ch in component:
        if ch == '"':
            out += '\\"'
        elif ch == "\\":
            out += "\\\\"
        elif ch == "\n":
            out += "\\n"
        elif ch == "\t":
            out += "\\t"
        elif ch == "\r":
            out += "\\r"
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out += "\\u%04x" % ord(ch)
        else:
            out += ch
    return out + '"'


def fraction(microseconds):
    if microseconds == 0:
        return ""
    return "." + ("%06d" % microseconds).rstrip("0")


def plain(value):
    """A one-key object naming the TOML type, dates and times written as TOML writes them."""
    if isinstance(value, datetime.datetime):
        text = value.strftime("%Y-%m-%dT%H:%M:%S") + fraction(value.microsecond)
        if value.tzinfo is not None:
            offset = value.utcoffset()
            minutes = int(offset.total_seconds() // 60)
            if minutes == 0:
                text += "Z"
            else:
                sign = "-" if minutes < 0 else "+"
                text += "%s%02d:%02d" % (sign, abs(minutes) // 60, abs(minutes) % 60)
        return {"dateTime": text}
    if isinstance(value, datetime.date):
        return {"date": value.strftime("%Y-%m-%d")}
    if isinstance(value, datetime.time):
        return {"time": value.strftime("%H:%M:%S") + fraction(value.microsecond)}
    if isinstance(value, bool):
        return {"boolean": value}
    if isinstance(value, int):
        return {"integer": value}
    if isinstance(value, float):
        return {"float": repr(value)}
    if isinstance(value, str):
        return {"string": value}
    if isinstance(value, list):
        return {"array": [plain(v) for v in value]}
    return {"table": {k: plain(v) for k, v in value.items()}}


def flatten(table, prefix, out):
    for key, value in table.items():
        path = prefix + [key]
        if isinstance(value, dict) and value:
            flatten(value, path, out)
        else:
            out[".".join(quoted(c) for c in path)] = plain(value)


def flatten_file(path):
    with open(path, "rb") as f:
        data = f.read()
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        message = str(error)
        found = re.search(r"\(at line (\d+), column (\d+)\)", message)
        line, column = (int(found.group(1)), int(found.group(2))) if found else (0, 0)
        return {"ok": False, "line": line, "column": column, "message": message}
    entries = {}
    flatten(document, [], entries)
    return {"ok": True, "entries": entries}


def size(value):
    if isinstance(value, int):
        return value
    found = re.fullmatch(r"\s*(\d+)\s*([KMGTkmgt]?)(iB|B)?\s*", value)
    if not found:
        sys.exit("size %r: not a size" % value)
    return int(found.group(1)) << (10 * " KMGT".index(found.group(2).upper() or " "))


def chain(path):
    files = []
    while path is not None:
        with open(path, "rb") as f:
            document = tomllib.load(f)
        files.append(document)
        parent = document.get("extends")
        if parent is None:
            path = None
        elif "/" in parent or parent.endswith(".toml"):
            path = os.path.join(os.path.dirname(path), parent)
        else:
            path = os.path.join(REPOSITORY, "profiles", parent + ".toml")
    return files


def resolve(path):
    with open(os.path.join(REPOSITORY, "profiles", "default.toml"), "rb") as f:
        profile = tomllib.load(f)
    for document in reversed(chain(path)):
        for table, values in document.items():
            if table == "extends":
                continue
            profile.setdefault(table, {}).update(values)
    profile.pop("extends", None)
    for table in ("image", "esp"):
        profile[table]["size"] = size(profile[table]["size"])
    if isinstance(profile["firmware"]["vcpus"], int):
        profile["firmware"]["vcpus"] = [profile["firmware"]["vcpus"]]
    return profile


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "flatten":
        print(json.dumps([flatten_file(path) for path in sys.argv[2:]], sort_keys=True))
    elif len(sys.argv) == 3 and sys.argv[1] == "resolve":
        print(json.dumps(resolve(sys.argv[2]), sort_keys=True))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
