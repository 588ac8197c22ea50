# Rewrites the JSON metadata of both LUKS2 headers of IMAGE (a QCOW2; its root partition at byte OFFSET), with
# each header's checksum made right again, the way a hostile or foreign cryptsetup would leave them:
#   luks_metadata.py IMAGE OFFSET requirement         an unknown mandatory requirement
#   luks_metadata.py IMAGE OFFSET kdf SLOT KDF-JSON   keyslot SLOT's KDF replaced by KDF-JSON (its salt kept)
import sys, json, hashlib, subprocess, os
image, offset, change = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def edit(meta):
    if change == "requirement":
        meta["config"]["requirements"] = {"mandatory": ["sevimage-test-unknown"]}
    elif change == "kdf":
        slot, kdf = sys.argv[4], json.loads(sys.argv[5])
        kdf["salt"] = meta["keyslots"][slot]["kdf"]["salt"]
        meta["keyslots"][slot]["kdf"] = kdf
    else:
        sys.exit(f"luks_metadata.py: unknown change {change}")

raw = image + ".hdr"
subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", image, raw], check=True)
with open(raw, "rb") as f:
    f.seek(offset)
    data = bytearray(f.read(32768))
for base in (0, 16384):
    size = int.from_bytes(data[base + 8:base + 16], "big")
    meta = json.loads(bytes(data[base + 4096:base + size]).rstrip(b"\0").decode())
    edit(meta)
    encoded = json.dumps(meta, separators=(",", ":")).encode()
    data[base + 4096:base + size] = encoded + b"\0" * (size - 4096 - len(encoded))
    data[base + 448:base + 512] = b"\0" * 64
    data[base + 448:base + 480] = hashlib.sha256(bytes(data[base:base + size])).digest()
open(raw, "wb").write(data)
subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -s {raw} {offset} {len(data)}", image], check=True, stdout=subprocess.DEVNULL)
os.unlink(raw)
