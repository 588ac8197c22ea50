#!/usr/bin/env python3
"""Helpers for the tests that hold sevimage against libvirt's own SEV tools, independent of sevimage's code.

  measure --digest HEX --tk-file TK --policy N --api-major N --api-minor N --build N [--nonce HEX]
      -> base64(measurement | nonce), what QEMU's query-sev-launch-measure returns: measurement =
         HMAC-SHA256(TIK, 0x04 | api major | api minor | build | policy u32 | digest | nonce) (AMD SEV API,
         LAUNCH_MEASURE), with Python's hmac. The TK file is TEK | TIK.
  decode-packet --tk-file TK --launch-measure B64 --header B64|@FILE --secret B64|@FILE
      -> JSON: the header's fields, whether its HMAC-SHA256 under the TIK over
         0x01 | flags | IV | len | len | ciphertext | measurement holds (AMD SEV API, LAUNCH_SECRET), the
         plaintext (AES-128-CTR under the TEK, `cryptography`) and the secret table parsed from it
         (GUID, u32 total length, entries GUID | u32 length | data, GUIDs in EFI byte order), its padding.

Run with Debian's python3 (lxml, libvirt: libvirt-clients-qemu's own interpreter):
  check-domain XML        -> the libvirt validator's own check of a domain it is to attest
                             (LibvirtConfidentialVM.check_domain, secure mode): "ok" or its error, exit 1
  libvirt-define XML      -> the domain as libvirt's parser (the test:///default driver) defines and dumps it
  validator-vmsas FIRMWARE FAMILY MODEL STEPPING OUT0 OUT1
                          -> the SEV-ES VMSA pages the validator builds from a CPU SKU (build_vmsas)
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import struct
import sys
import uuid

VALIDATOR = "/usr/bin/virt-qemu-sev-validate"
TABLE_GUID = uuid.UUID("1e74f542-71dd-4d66-963e-ef4287ff173b")


def read_tk(path):
    tk = open(path, "rb").read()
    if len(tk) != 32:
        sys.exit("the TK file holds %d bytes, not 32" % len(tk))
    return tk[:16], tk[16:]


def measure(a):
    _, tik = read_tk(a.tk_file)
    nonce = bytes.fromhex(a.nonce) if a.nonce else os.urandom(16)
    msg = bytes([4, a.api_major, a.api_minor, a.build]) + struct.pack("<I", a.policy) + bytes.fromhex(a.digest) + nonce
    print(base64.b64encode(hmac.new(tik, msg, hashlib.sha256).digest() + nonce).decode())


def b64_argument(value):
    if value.startswith("@"):
        value = open(value[1:], "rb").read().decode()
    return base64.b64decode(value, validate=True)


def parse_table(plain):
    out = {"size": len(plain)}
    if len(plain) < 20:
        out["error"] = "shorter than a table header"
        return out
    out["guid"] = str(uuid.UUID(bytes_le=plain[:16]))
    total = struct.unpack("<I", plain[16:20])[0]
    out["totalLength"] = total
    entries, offset = [], 20
    while offset < min(total, len(plain)):
        if offset + 20 > len(plain):
            out["error"] = "an entry header runs past the end"
            break
        length = struct.unpack("<I", plain[offset + 16:offset + 20])[0]
        if length < 20 or offset + length > len(plain):
            out["error"] = "an entry length %d does not fit" % length
            break
        entries.append({"guid": str(uuid.UUID(bytes_le=plain[offset:offset + 16])), "length": length,
                        "dataHex": plain[offset + 20:offset + length].hex()})
        offset += length
    out["entries"] = entries
    out["padding"] = len(plain) - total
    out["paddingIsZero"] = all(b == 0 for b in plain[total:])
    return out


def decode_packet(a):
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    tek, tik = read_tk(a.tk_file)
    measurement = base64.b64decode(a.launch_measure)[:32]
    header, secret = b64_argument(a.header), b64_argument(a.secret)
    flags, iv, mac = header[:4], header[4:20], header[20:52]
    n = struct.pack("<I", len(secret))
    expected = hmac.new(tik, b"\x01" + flags + iv + n + n + secret + measurement, hashlib.sha256).digest()
    plain = Cipher(algorithms.AES(tek), modes.CTR(iv)).decryptor().update(secret)
    json.dump({"headerLength": len(header), "flags": struct.unpack("<I", flags)[0], "payloadLength": len(secret),
               "hmacValid": hmac.compare_digest(mac, expected), "plaintextHex": plain.hex(),
               "table": parse_table(plain)}, sys.stdout)


def load_validator():
    import importlib.machinery
    import importlib.util
    loader = importlib.machinery.SourceFileLoader("virt_qemu_sev_validate", VALIDATOR)
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def check_domain(a):
    from lxml import etree
    validator = load_validator()
    vm = validator.LibvirtConfidentialVM()
    try:
        vm.check_domain(etree.parse(a.xml).getroot(), True)
    except Exception as e:
        print("%s: %s" % (type(e).__name__, e))
        return 1
    print("ok")
    return 0


def libvirt_define(a):
    import libvirt
    libvirt.registerErrorHandler(lambda *_: None, None)
    conn = libvirt.open("test:///default")
    try:
        dom = conn.defineXML(open(a.xml).read())
    except libvirt.libvirtError as e:
        print("libvirt refused it: %s" % e.get_error_message(), file=sys.stderr)
        return 1
    sys.stdout.write(dom.XMLDesc(0))
    return 0


def validator_vmsas(a):
    validator = load_validator()
    vm = validator.OfflineConfidentialVM(measurement=None, api_major=0, api_minor=0, build_id=0, policy=7, num_cpus=2)
    vm.load_firmware(a.firmware)
    vm.build_vmsas(a.family, a.model, a.stepping)
    open(a.out0, "wb").write(vm.vmsa_cpu0)
    open(a.out1, "wb").write(vm.vmsa_cpu1)
    return 0


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--digest", required=True)
    m.add_argument("--tk-file", required=True)
    m.add_argument("--policy", type=int, required=True)
    m.add_argument("--api-major", type=int, required=True)
    m.add_argument("--api-minor", type=int, required=True)
    m.add_argument("--build", type=int, required=True)
    m.add_argument("--nonce")
    d = sub.add_parser("decode-packet")
    d.add_argument("--tk-file", required=True)
    d.add_argument("--launch-measure", required=True)
    d.add_argument("--header", required=True)
    d.add_argument("--secret", required=True)
    c = sub.add_parser("check-domain")
    c.add_argument("xml")
    l = sub.add_parser("libvirt-define")
    l.add_argument("xml")
    v = sub.add_parser("validator-vmsas")
    v.add_argument("firmware")
    v.add_argument("family", type=int)
    v.add_argument("model", type=int)
    v.add_argument("stepping", type=int)
    v.add_argument("out0")
    v.add_argument("out1")
    a = ap.parse_args()
    handlers = {"measure": measure, "decode-packet": decode_packet, "check-domain": check_domain,
                "libvirt-define": libvirt_define, "validator-vmsas": validator_vmsas}
    return handlers[a.command](a) or 0


if __name__ == "__main__":
    sys.exit(main())
