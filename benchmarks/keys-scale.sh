#!/bin/bash
# Benchmark: the key operations against the data an image holds (issue 17), in one run.
#
#   benchmarks/keys-scale.sh [--sizes "1G 8G 32G"] [--reencrypt-sizes "1G 8G"] [--runs 3]
#                            [--pipeline 4G:16G] [--pipeline-runs 3] [--workdir DIR] [--sevimage PATH]
#
# For each size S of --sizes: an image of S + 2G made sparse-fast (`create` of a minimal tree, then S bytes
# of random data (one 256 MiB random file, repeated) written into the root partition's data segment with
# qemu-io, so that the image holds S of allocated clusters), one untimed `rotate` that upgrades the manifest
# (the data changed behind sevimage's back: no trusted block digests, so the whole file is hashed: its time is
# reported as "first rotate"), then --runs times each, the page cache dropped before every run: `rotate`,
# `keys add` (PBKDF2 1000 iterations: the KDF apart), `keys remove`; then `verify` once (it must pass);
# and, for the sizes in --reencrypt-sizes, `reencrypt` --runs times and "read + write once" (cp of the
# image and sync, the floor for anything that rewrites it), also followed by the copy replacing the image
# (mv: the old file's blocks freed, as they are when reencrypt publishes). The image is removed before the
# next size.
#
# --pipeline DATA:DISK: an image holding DATA in a DISK disk, `reencrypt` against what a user would do
# without sevimage: qemu-img convert -O raw, a loop device on the root partition (losetup -o/--sizelimit),
# cryptsetup reencrypt (offline, new volume key), losetup -d, qemu-img convert -O qcow2, sync.
#
# Reports medians (and ranges) of wall time, peak RSS (GNU time's maximum resident set size; for the
# pipeline the largest of its steps) and the ratio of each median to the smallest size's.
# Needs root (drop_caches, losetup), qemu-img, qemu-io, cryptsetup, GNU time (package time), python3, openssl.
# Disk space: the largest size twice (image and reencrypt's new image); the pipeline about DATA + 2 x DISK.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
sizes="1G 8G 32G"
reencrypt_sizes="1G 8G"
runs=3
pipeline=""
pipeline_runs=3
workdir="$here/.cache/benchmark-keys"
sevimage=""
while [ $# -gt 0 ]; do
    case "$1" in
        --sizes) sizes=$2; shift 2 ;;
        --reencrypt-sizes) reencrypt_sizes=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --pipeline) pipeline=$2; shift 2 ;;
        --pipeline-runs) pipeline_runs=$2; shift 2 ;;
        --workdir) workdir=$2; shift 2 ;;
        --sevimage) sevimage=$2; shift 2 ;;
        *) echo "usage: $0 [--sizes \"1G 8G 32G\"] [--reencrypt-sizes \"1G 8G\"] [--runs 3] [--pipeline 4G:16G] [--pipeline-runs 3] [--workdir DIR] [--sevimage PATH]" >&2; exit 2 ;;
    esac
done
[ -n "$sevimage" ] || sevimage=$("$here/scripts/build-release.sh")
mkdir -p "$workdir"
results="$workdir/results.tsv"
: > "$results"
say() { echo "keys-scale: $*" >&2; }

drop_caches() {
    sync
    if [ "$(id -u)" -eq 0 ]; then echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; fi
}

# measure LABEL SIZE COMMAND...: one run, caches dropped; appends "label size seconds peak-KiB" to the results.
measure() {
    local label=$1 size=$2; shift 2
    drop_caches
    /usr/bin/time -f "%e %M" -o "$workdir/time.out" "$@" > "$workdir/last.out" 2> "$workdir/last.err" || {
        cat "$workdir/last.err" >&2; echo "keys-scale: $label failed" >&2; exit 1; }
    read -r seconds kib < <(tail -n 1 "$workdir/time.out")
    printf '%s\t%s\t%s\t%s\n' "$label" "$size" "$seconds" "$kib" >> "$results"
    say "$label $size: $seconds s, $kib KiB"
}

# A minimal tree: create needs a kernel in /boot; nothing here boots.
tree="$workdir/tree"
if [ ! -d "$tree" ]; then
    mkdir -p "$tree/boot" "$tree/etc"
    head -c 1048576 /dev/urandom > "$tree/boot/vmlinuz-bench"
    echo bench > "$tree/etc/hostname"
fi
random="$workdir/random-256M"
[ -f "$random" ] || head -c 268435456 /dev/urandom > "$random"

# make_image DATA DISK: $workdir/vm.qcow2 holding DATA of allocated clusters, manifest and block digests upgraded.
make_image() {
    local data=$1 disk=$2
    rm -rf "$workdir"/vm.* "$workdir"/vm.qcow2.sevimage-*
    "$sevimage" create --rootfs "$tree" --output "$workdir/vm.qcow2" --size "$disk" --no-initramfs-unlock --quiet
    local root commands=() offset left
    root=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["partitions"][1]["firstLBA"] * 512)' "$workdir/vm.manifest.json")
    offset=$(( root + (16 << 20) + (256 << 20) ))   # past the LUKS header area and the ext4's first groups
    left=$(numfmt --from=iec "$data")
    while [ "$left" -gt 0 ]; do
        local chunk=$(( left < 268435456 ? left : 268435456 ))
        commands+=(-c "write -s $random $offset $chunk")
        offset=$(( offset + chunk )); left=$(( left - chunk ))
    done
    say "writing $data of random data into a $disk image"
    qemu-io -f qcow2 "${commands[@]}" "$workdir/vm.qcow2" > /dev/null
    sync
    measure "first rotate (upgrade: whole file hashed)" "$data" "$sevimage" rotate "$workdir/vm.qcow2" --passphrase-file "$workdir/vm.passphrase" --quiet
}

printf 'pass' > "$workdir/recovery.txt"; chmod 600 "$workdir/recovery.txt"
for size in $sizes; do
    disk=$(( $(numfmt --from=iec "$size") / 1073741824 + 2 ))G
    make_image "$size" "$disk"
    for run in $(seq "$runs"); do
        measure rotate "$size" "$sevimage" rotate "$workdir/vm.qcow2" --passphrase-file "$workdir/vm.passphrase" --json
        # The part of it spent on the manifest's digest (reading and checking vm.blockdigests, the header area hashed again).
        printf '%s\t%s\t%s\t0\n' "rotate: the digest part (hashSeconds)" "$size" \
            "$(python3 -c 'import json,sys; print("%.3f" % json.load(open(sys.argv[1]))["hashSeconds"])' "$workdir/last.out")" >> "$results"
        measure "keys add" "$size" "$sevimage" keys add "$workdir/vm.qcow2" --passphrase-file "$workdir/vm.passphrase" \
            --new-passphrase-file "$workdir/recovery.txt" --iterations 1000 --quiet
        slot=$("$sevimage" keys list "$workdir/vm.qcow2" --json | python3 -c 'import json,sys; print([k["slot"] for k in json.load(sys.stdin)["keyslots"] if k.get("role") == "recovery"][0])')
        measure "keys remove" "$size" "$sevimage" keys remove "$workdir/vm.qcow2" --slot "$slot" --passphrase-file "$workdir/vm.passphrase" --quiet
    done
    measure verify "$size" "$sevimage" verify "$workdir/vm.qcow2"
    if [[ " $reencrypt_sizes " == *" $size "* ]]; then
        for run in $(seq "$runs"); do
            measure reencrypt "$size" "$sevimage" reencrypt "$workdir/vm.qcow2" --passphrase-file "$workdir/vm.passphrase" --quiet
            measure "read + write once" "$size" sh -c "cp --sparse=always '$workdir/vm.qcow2' '$workdir/copy.qcow2' && sync '$workdir/copy.qcow2'"
            rm -f "$workdir/copy.qcow2"
            # The same, then the copy (identical bytes) takes the image's place: the old file's blocks are freed,
            # as reencrypt's replacement frees them (slow on a filesystem mounted with `discard`, as here).
            measure "read + write once, replacing the image" "$size" sh -c "cp --sparse=always '$workdir/vm.qcow2' '$workdir/copy.qcow2' && sync '$workdir/copy.qcow2' && mv '$workdir/copy.qcow2' '$workdir/vm.qcow2' && sync '$workdir'"
        done
        measure verify "$size" "$sevimage" verify "$workdir/vm.qcow2"
    fi
    rm -rf "$workdir"/vm.* "$workdir"/vm.qcow2.sevimage-*
done

if [ -n "$pipeline" ]; then
    data=${pipeline%%:*} disk=${pipeline##*:}
    label="$data in $disk"
    make_image "$data" "$disk"
    root=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1]))["partitions"][1]; print(m["firstLBA"] * 512, (m["lastLBA"] - m["firstLBA"] + 1) * 512)' "$workdir/vm.manifest.json")
    read -r rootOffset rootSize <<< "$root"
    for run in $(seq "$pipeline_runs"); do
        measure "reencrypt (sevimage)" "$label" "$sevimage" reencrypt "$workdir/vm.qcow2" --passphrase-file "$workdir/vm.passphrase" --quiet
        cat > "$workdir/pipeline.sh" <<EOF
set -e
qemu-img convert -f qcow2 -O raw "$workdir/vm.qcow2" "$workdir/vm.raw"
loop=\$(losetup --show -f -o $rootOffset --sizelimit $rootSize "$workdir/vm.raw")
cryptsetup reencrypt --batch-mode --key-file "$workdir/vm.passphrase" --pbkdf pbkdf2 --pbkdf-force-iterations 1000 "\$loop"
losetup -d "\$loop"
qemu-img convert -f raw -O qcow2 "$workdir/vm.raw" "$workdir/pipeline.qcow2"
sync "$workdir/pipeline.qcow2"
EOF
        # GNU time's %M is the largest of the shell and its waited-for children: the pipeline's peak step.
        measure "reencrypt (pipeline)" "$label" sh "$workdir/pipeline.sh"
        rm -f "$workdir/vm.raw" "$workdir/pipeline.qcow2"
    done
    rm -rf "$workdir"/vm.* "$workdir"/vm.qcow2.sevimage-*
fi

python3 - "$results" <<'PY'
import statistics, sys
from collections import OrderedDict
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
groups = OrderedDict()
for label, size, seconds, kib in rows:
    groups.setdefault(label, OrderedDict()).setdefault(size, []).append((float(seconds), int(kib)))
print("| operation | data | runs | median s | range s | peak RSS MiB | time / smallest size's |")
print("|---|---|---|---|---|---|---|")
for label, sizes in groups.items():
    base = None
    for size, values in sizes.items():
        times = [t for t, _ in values]
        median = statistics.median(times)
        base = base or median
        rss = max(k for _, k in values) / 1024
        print(f"| {label} | {size} | {len(times)} | {median:.3f} | {min(times):.3f}–{max(times):.3f} | {rss:.1f} | ×{median / base:.2f} |")

def median(label, size):
    values = groups.get(label, {}).get(size)
    return statistics.median(t for t, _ in values) if values else None
print()
for size in groups.get("reencrypt", {}):
    own = median("reencrypt", size)
    for floor_label in ("read + write once", "read + write once, replacing the image"):
        floor = median(floor_label, size)
        if own and floor:
            print(f"reencrypt / {floor_label}, {size}: {own / floor:.2f} (goal <= 1.5): {'met' if own <= 1.5 * floor else 'NOT MET'}")
for size in groups.get("reencrypt (sevimage)", {}):
    own, pipeline = median("reencrypt (sevimage)", size), median("reencrypt (pipeline)", size)
    if own and pipeline:
        print(f"reencrypt, pipeline / sevimage, {size}: {pipeline / own:.1f}x faster (goal >= 5): {'met' if pipeline >= 5 * own else 'NOT MET'}")
PY
