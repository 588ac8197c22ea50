#!/usr/bin/env python3
"""Independent oracle for sevimage's SEV secret table and LAUNCH_SECRET packet.

Written from the published descriptions, not from sevimage's code:
- the table layout of Linux drivers/virt/coco/efi_secret (header GUID, u32 total length, entries
  GUID + u32 length + data) with the unpadded total length and 16-byte zero padding of
  confidential-containers simple-kbs, and GRUB's NUL-terminated disk passphrase entry;
- the LAUNCH_SECRET packet header of AMD's SEV API spec as sev-tool builds it:
  flags u32 | IV 16 | HMAC-SHA256(TIK, 0x01 | flags | IV | guest len | trans len | ciphertext | measurement).

  secret_oracle.py table --passphrase-file F [--entry GUID=FILE ...]       -> hex of the table
  secret_oracle.py verify-packet --tk-file F --launch-measure B64 --header B64 --secret B64
                   --passphrase-file F [--entry GUID=FILE ...]             -> JSON verdict, exit 1 if bad
"""
import argparse
import base64
import json
import struct
import sys
import uuid

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

HEADER_GUID = uuid.UUID("1e74f542-71dd-4d66-963e-ef4287ff173b")
DISK_GUID = uuid.UUID("736869e5-84f0-4973-92ec-06879ce3da0b")


def read_passphrase(path):
    data = open(path, "rb").read()
    if data.endswith(b"\n"):
        data = data[:-1]
    if data.endswith(b"\r"):
        data = data[:-1]
    return data


def build_table(passphrase, extra):
    entries = [(DISK_GUID, passphrase + b"\0")] + extra
    body = b"".join(g.bytes_le + struct.pack("<I", 20 + len(d)) + d for g, d in entries)
    table = HEADER_GUID.bytes_le + struct.pack("<I", 20 + len(body)) + body
    return table + b"\0" * (-len(table) % 16)


def parse_entries(specs):
    out = []
    for spec in specs or []:
        guid, path = spec.split("=", 1)
        out.append((uuid.UUID(guid), open(path, "rb").read()))
    return out


def mac(tik, parts):
    h = hmac.HMAC(tik, hashes.SHA256())
    for p in parts:
        h.update(p)
    return h.finalize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["table", "verify-packet"])
    ap.add_argument("--passphrase-file", required=True)
    ap.add_argument("--entry", action="append")
    ap.add_argument("--tk-file")
    ap.add_argument("--launch-measure")
    ap.add_argument("--header")
    ap.add_argument("--secret")
    a = ap.parse_args()
    table = build_table(read_passphrase(a.passphrase_file), parse_entries(a.entry))
    if a.mode == "table":
        print(table.hex())
        return 0
    tk = open(a.tk_file, "rb").read()
    tek, tik = tk[:16], tk[16:32]
    measure = base64.b64decode(a.launch_measure)[:32]
    header = base64.b64decode(a.header)
    payload = base64.b64decode(a.secret)
    flags, iv, got_mac = header[:4], header[4:20], header[20:52]
    length = struct.pack("<I", len(payload))
    want_mac = mac(tik, [b"\x01", flags, iv, length, length, payload, measure])
    plain = Cipher(algorithms.AES(tek), modes.CTR(iv)).decryptor().update(payload)
    verdict = {
        "headerLength": len(header),
        "flags": struct.unpack("<I", flags)[0],
        "hmacValid": got_mac == want_mac,
        "tableMatches": plain == table,
        "payloadLength": len(payload),
    }
    print(json.dumps(verdict, sort_keys=True))
    ok = verdict["hmacValid"] and verdict["tableMatches"] and len(header) == 52 and verdict["flags"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
