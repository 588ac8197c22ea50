#!/usr/bin/env python3
"""Independent answers for the firmware tests, many per invocation.

Reads a JSON list of jobs from the file named by argv[1] and prints a JSON list of answers:
  {"kind": "digest", "ovmf": PATH, "mode": "sev"|"sev-es"|"sev-snp", "vcpus": N, "vcpuType": NAME,
   "guestFeatures": INT (sev-snp only, optional)}
      -> {"digest": hex} computed by PyPI's sev-snp-measure, or {"error": text} when it refuses
  {"kind": "measurement", "tik": hex, "apiMajor": n, "apiMinor": n, "build": n, "policy": n,
   "digest": hex, "nonce": hex}
      -> {"measurement": hex, "launchMeasure": base64}: HMAC-SHA256 with Python's hmac module
  {"kind": "vmsa", "ovmf": PATH, "vcpuType": NAME, "out0": PATH, "out1": PATH}
      -> {"written": 2}: the SEV-ES VMSA pages sev-snp-measure measures (QEMU), the boot vCPU's to out0 and
         every other vCPU's to out1
  {"kind": "version"} -> {"version": sev-snp-measure's version}
"""
import base64
import hashlib
import hmac
import json
import struct
import sys

from sevsnpmeasure import guest, vcpu_types
from sevsnpmeasure.sev_mode import SevMode

MODES = {"sev": SevMode.SEV, "sev-es": SevMode.SEV_ES, "sev-snp": SevMode.SEV_SNP}


def digest(job):
    mode = MODES[job["mode"]]
    sig = 0 if mode == SevMode.SEV else vcpu_types.CPU_SIGS[job["vcpuType"]]
    try:
        ld = guest.calc_launch_digest(mode, job.get("vcpus", 1), sig, job["ovmf"], None, None, None,
                                      job.get("guestFeatures", 0x1))
    except Exception as e:  # the oracle refusing a firmware is an answer too
        return {"error": f"{type(e).__name__}: {e}"}
    return {"digest": ld.hex()}


def measurement(job):
    message = bytes([0x04, job["apiMajor"], job["apiMinor"], job["build"]])
    message += struct.pack("<I", job["policy"])
    message += bytes.fromhex(job["digest"]) + bytes.fromhex(job["nonce"])
    mac = hmac.new(bytes.fromhex(job["tik"]), message, hashlib.sha256).digest()
    return {"measurement": mac.hex(),
            "launchMeasure": base64.b64encode(mac + bytes.fromhex(job["nonce"])).decode()}


def vmsa_pages(job):
    from sevsnpmeasure.ovmf import OVMF
    from sevsnpmeasure.vmsa import VMSA
    pages = list(VMSA(SevMode.SEV_ES, OVMF(job["ovmf"]).sev_es_reset_eip(), vcpu_types.CPU_SIGS[job["vcpuType"]], 0x0).pages(2))
    for page, path in zip(pages, [job["out0"], job["out1"]]):
        with open(path, "wb") as f:
            f.write(bytes(page))
    return {"written": len(pages)}


def version(_job):
    from importlib.metadata import version as v
    return {"version": v("sev-snp-measure")}


def main():
    with open(sys.argv[1]) as f:
        jobs = json.load(f)
    handlers = {"digest": digest, "measurement": measurement, "vmsa": vmsa_pages, "version": version}
    json.dump([handlers[job["kind"]](job) for job in jobs], sys.stdout)


if __name__ == "__main__":
    main()
