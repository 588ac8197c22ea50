#!/usr/bin/env python3
"""Reads a Trustee RVPS registration message the way Trustee's RVPS does, and computes what it must hold.

  rvps_message.py MESSAGE.json --ovmf OVMF.fd --vcpus 1,4 --vcpu-type EPYC-v4 [--encoding hex|base64]

Parsing follows confidential-containers/trustee rvps/src/lib.rs (Message: "payload" and "type" required,
"version" defaulting to and required to be "0.1.0"), rvps/src/extractors/mod.rs (the "sample" extractor) and
rvps/src/extractors/sample/mod.rs (payload: standard base64 with padding of a JSON object, name -> value; each
entry becomes one reference value). The expected SNP launch digests come from PyPI's sev-snp-measure, from the
firmware file itself (default guest features 0x1), encoded as Trustee's SNP verifier reports the measurement:
hex from v0.18.0 on, standard base64 before.

Prints {"referenceValues": {name: value}, "expected": {"snp_launch_measurement": [...]}}; exits 1 with a
line on stderr when the message would not register.
"""
import argparse
import base64
import binascii
import json
import sys

from sevsnpmeasure import guest, vcpu_types
from sevsnpmeasure.sev_mode import SevMode


def registered(path):
    with open(path, "rb") as f:
        message = json.loads(f.read())
    if not isinstance(message, dict):
        sys.exit("message is not a JSON object")
    for key in ("payload", "type"):
        if not isinstance(message.get(key), str):
            sys.exit(f"message has no string {key!r}")
    version = message.get("version", "0.1.0")
    if version != "0.1.0":
        sys.exit(f"Version unmatched! Need 0.1.0, given {version}.")
    if message["type"] != "sample":
        sys.exit(f"Could not find extractor for {message['type']}")
    try:
        provenance = base64.b64decode(message["payload"], validate=True)
    except binascii.Error as e:
        sys.exit(f"base64 decode: {e}")
    values = json.loads(provenance)
    if not isinstance(values, dict):
        sys.exit("deseralize sample provenance: not a JSON object")
    return values


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("message")
    parser.add_argument("--ovmf", required=True)
    parser.add_argument("--vcpus", required=True)
    parser.add_argument("--vcpu-type", required=True)
    parser.add_argument("--encoding", choices=["hex", "base64"], default="hex")
    args = parser.parse_args()
    values = registered(args.message)
    expected = []
    for count in (int(n) for n in args.vcpus.split(",")):
        digest = guest.calc_launch_digest(SevMode.SEV_SNP, count, vcpu_types.CPU_SIGS[args.vcpu_type], args.ovmf,
                                          None, None, None, 0x1)
        expected.append(digest.hex() if args.encoding == "hex" else base64.b64encode(digest).decode())
    json.dump({"referenceValues": values, "expected": {"snp_launch_measurement": expected}}, sys.stdout)


if __name__ == "__main__":
    main()
