#!/usr/bin/env python3
"""A fake QEMU QMP peer playing a paused SEV guest, for sevimage launch tests.

It speaks the real protocol (greeting, qmp_capabilities, execute/return/error with id, asynchronous
events interleaved before replies) and computes its launch measurement independently:
HMAC-SHA256(TIK, 0x04 | api major | api minor | build | policy u32 | digest | nonce) (AMD SEV API,
LAUNCH_MEASURE). An injected packet is checked with the TEK/TIK (python cryptography) and decrypted.
Every command received goes to --log as one JSON line. With --launch-measure B64 it reports that
LAUNCH_MEASURE blob (measurement 32 | nonce 16) as it is, whatever its query-sev says: the guest of a
test that computes the launch elsewhere, and checks the packet's HMAC against that measurement.

Scenarios: ok, wrong-nonce (reports a nonce other than the one measured), closed (hangs up on
query-sev-launch-measure), malformed (answers query-sev-launch-measure with broken JSON),
measure-error (QEMU error reply to query-sev-launch-measure), inject-error (error reply to
sev-inject-launch-secret).
"""
import argparse
import base64
import json
import os
import socket
import struct
import sys

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def hm(key, *parts):
    h = hmac.HMAC(key, hashes.SHA256())
    for p in parts:
        h.update(p)
    return h.finalize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket")
    ap.add_argument("--tcp-port-file")
    ap.add_argument("--tk-file", required=True)
    ap.add_argument("--digest")
    ap.add_argument("--launch-measure")
    ap.add_argument("--policy", type=int, default=3)
    ap.add_argument("--api-major", type=int, default=0)
    ap.add_argument("--api-minor", type=int, default=24)
    ap.add_argument("--build", type=int, default=15)
    ap.add_argument("--scenario", default="ok")
    ap.add_argument("--log", required=True)
    a = ap.parse_args()

    tk = open(a.tk_file, "rb").read()
    tek, tik = tk[:16], tk[16:32]
    if a.launch_measure:
        blob = base64.b64decode(a.launch_measure)
        measurement, nonce = blob[:32], blob[32:48]
    else:
        nonce = os.urandom(16)
        measurement = hm(tik, bytes([4, a.api_major, a.api_minor, a.build]), struct.pack("<I", a.policy),
                         bytes.fromhex(a.digest), nonce)
    reported_nonce = os.urandom(16) if a.scenario == "wrong-nonce" else nonce

    if a.socket:
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(a.socket + ".tmp")
        srv.listen(1)
        os.rename(a.socket + ".tmp", a.socket)  # the path appears only once it accepts connections
    else:
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        with open(a.tcp_port_file + ".tmp", "w") as f:
            f.write(str(srv.getsockname()[1]))
        os.rename(a.tcp_port_file + ".tmp", a.tcp_port_file)
    srv.settimeout(30)
    conn, _ = srv.accept()
    conn.settimeout(60)
    log = open(a.log, "w")
    reader = conn.makefile("rb")

    def send(obj):
        try:
            conn.sendall(json.dumps(obj).encode() + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client may hang up right after its last reply

    def event(name):
        send({"event": name, "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}})

    send({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 8}, "package": "fake"},
                  "capabilities": ["oob"]}})
    negotiated = False
    running = False
    while True:
        line = reader.readline()
        if not line:
            break
        msg = json.loads(line)
        cmd = msg.get("execute")
        args = msg.get("arguments", {})
        rid = msg.get("id")
        record = {"execute": cmd, "arguments": args}

        def reply(value):
            r = {"return": value}
            if rid is not None:
                r["id"] = rid
            send(r)

        def error(cls, desc):
            r = {"error": {"class": cls, "desc": desc}}
            if rid is not None:
                r["id"] = rid
            send(r)

        if cmd == "qmp_capabilities":
            negotiated = True
            log.write(json.dumps(record) + "\n"); log.flush()
            reply({})
            continue
        if not negotiated:
            error("CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'")
            continue
        event("RTC_CHANGE")  # an asynchronous event before every reply
        if cmd == "query-status":
            reply({"running": running, "status": "running" if running else "prelaunch"})
        elif cmd == "query-sev":
            reply({"enabled": True, "api-major": a.api_major, "api-minor": a.api_minor, "build-id": a.build,
                   "policy": a.policy, "state": "launch-secret", "handle": 1, "sev-type": "sev"})
        elif cmd == "query-sev-launch-measure":
            if a.scenario == "closed":
                log.write(json.dumps(record) + "\n"); log.flush()
                conn.close()
                break
            if a.scenario == "malformed":
                conn.sendall(b'{"return": {"data": "AAAA"\r\n')
            elif a.scenario == "measure-error":
                error("GenericError", "SEV launch measurement is not available")
            else:
                event("NIC_RX_FILTER_CHANGED")
                reply({"data": base64.b64encode(measurement + reported_nonce).decode()})
        elif cmd == "sev-inject-launch-secret":
            header = base64.b64decode(args["packet-header"])
            payload = base64.b64decode(args["secret"])
            iv = header[4:20]
            n = struct.pack("<I", len(payload))
            record["hmacValid"] = header[20:52] == hm(tik, b"\x01", header[0:4], iv, n, n, payload, measurement)
            record["headerLength"] = len(header)
            record["tableHex"] = Cipher(algorithms.AES(tek), modes.CTR(iv)).decryptor().update(payload).hex()
            if a.scenario == "inject-error":
                error("GenericError", "SEV: failed to inject secret")
            else:
                reply({})
        elif cmd == "cont":
            running = True
            log.write(json.dumps(record) + "\n"); log.flush()
            record = None
            reply({})
            event("RESUME")
        else:
            error("CommandNotFound", "The command %s has not been found" % cmd)
        if record is not None:
            log.write(json.dumps(record) + "\n"); log.flush()
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
