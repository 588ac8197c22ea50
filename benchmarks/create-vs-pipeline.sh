#!/bin/bash
# Benchmark: `sevimage create` against the offline pipeline that `systemd-repart --offline` and mkosi use.
#
#   benchmarks/create-vs-pipeline.sh [--data "256M 1G"] [--disks "8G 16G"] [--cases "DATA:DISK ..."]
#                                    [--runs N] [--workdir DIR] [--sevimage PATH] [--keep]
#                                    [--no-drop-caches] [--settle SECONDS]
#
# For every data size it generates a root tree (a realistic mix of many small files and a few large
# ones, incompressible bytes from /dev/urandom, plus the demo tree's /boot so that create accepts it;
# a size written NUMBERfiles, e.g. 200000files, is that many small files instead, in the shape of a
# distribution's /usr: 64 B to 32 KiB, log-uniform, about 5 KiB on average, 100 to a directory, two
# levels deep), then for every disk size (or for the DATA:DISK pairs of --cases, e.g.
# --cases "200000files:8G 8G:64G") it builds one image with each of:
#
#   (a) sevimage create --rootfs TREE --output OUT.qcow2 --size DISK --passphrase-file K   (release build)
#       the whole image: GPT, ESP with GRUB, LUKS2 root, manifest, fsync'ed and published.
#   (b) the offline pipeline, on the root partition only (no GPT, no ESP, no GRUB: the issue's baseline):
#         truncate -s PART root.img
#         mkfs.ext4 -q -F -b 4096 -d TREE root.img (PART - 32M)   (-b: the size mke2fs picks anyway above 512M)
#         cryptsetup reencrypt --encrypt --type luks2 --reduce-device-size 32M --pbkdf pbkdf2
#             --pbkdf-force-iterations 1000 --sector-size 4096 --cipher aes-xts-plain64 --key-size 512
#             --batch-mode --key-file K root.img
#         qemu-img convert -f raw -O qcow2 root.img root.qcow2
#         sync root.qcow2          (sevimage fsyncs its outputs; so does the pipeline here, timed)
#       PART is the size of the root partition that sevimage gives the same disk.
#
# Each build runs --runs times (default 3), alternating sevimage and the pipeline; the report gives the
# median of each (and the ratios of the medians), because single runs of cold-cache work on a shared
# machine vary by 20% or more.
# The page cache is dropped (sync; echo 3 > /proc/sys/vm/drop_caches, needs root) before each build, and
# the machine is left idle for --settle seconds (default 10): the pipeline's deleted 8-16 GiB files and
# writes still keep a virtual disk busy after sync returns (a create started at once took 17.5 s instead
# of 3.5 s here once), and whichever build came next would pay for the previous one.
# Printed per build: wall time, output size (file length and blocks on disk), peak memory (GNU time's
# "Maximum resident set size": for sevimage the largest of it and its children; for the pipeline the
# largest of its steps); then the ratios and the issue's goals:
#   time(sevimage) <= 0.1 x time(pipeline) on 1 GiB in 8 GiB; QCOW2 <= 1.15 x data;
#   16G/8G changes time and size by < 10%; peak memory < 256 MiB.
#
# Needs: swift (or --sevimage), mkfs.ext4 (e2fsprogs), cryptsetup, qemu-img (qemu-utils), GNU time
# (package `time`), python3, and the demo tree (scripts/demo-rootfs.sh, built on first use).
# Disk space: the pipeline writes whole partitions: about 2 x the largest disk size in --workdir.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
data_sizes="256M 1G"
disk_sizes="8G 16G"
cases=""
workdir="$here/.cache/benchmark"
sevimage=""
runs=3
settle=10
keep=0
drop=1

usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --data) data_sizes=$2; shift 2 ;;
        --disks) disk_sizes=$2; shift 2 ;;
        --cases) cases=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --settle) settle=$2; shift 2 ;;
        --workdir) workdir=$2; shift 2 ;;
        --sevimage) sevimage=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        --no-drop-caches) drop=0; shift ;;
        -h|--help) usage ;;
        *) echo "create-vs-pipeline: unknown argument $1" >&2; usage ;;
    esac
done

say() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

for tool in mkfs.ext4 cryptsetup qemu-img python3 truncate; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done
# (No `| grep -q`: with pipefail, grep leaving early would fail the pipeline through time's SIGPIPE.)
[ -x /usr/bin/time ] && [[ "$(/usr/bin/time -v true 2>&1)" == *"Maximum resident"* ]] \
    || die "GNU time is not installed (apt-get install time)"

# Sizes with K/M/G suffixes (powers of 1024) to bytes.
bytes() {
    local value=${1%[KkMmGgTt]} unit=${1: -1}
    case "$unit" in
        K|k) echo $((value << 10)) ;; M|m) echo $((value << 20)) ;;
        G|g) echo $((value << 30)) ;; T|t) echo $((value << 40)) ;;
        *) echo "$1" ;;
    esac
}

if [ -z "$sevimage" ]; then
    say "building sevimage (release)"
    sevimage=$("$here/scripts/build-release.sh")
fi
[ -x "$sevimage" ] || die "no sevimage executable at $sevimage"
demo=$("$here/scripts/demo-rootfs.sh")

mkdir -p "$workdir"
workdir=$(cd "$workdir" && pwd)
cleanup() { [ "$keep" = 1 ] || rm -rf "$workdir/run"; }
trap cleanup EXIT
rm -rf "$workdir/run"
mkdir -p "$workdir/run"
key=$workdir/run/key
(umask 077 && python3 -c 'import secrets; print(secrets.token_hex(32), end="")' > "$key")

if [ "$drop" = 1 ] && ! { sync && echo 3 > /proc/sys/vm/drop_caches; } 2>/dev/null; then
    say "cannot drop the page cache (needs root); timings include a warm cache"
    drop=0
fi
drop_caches() { sync; [ "$drop" = 0 ] || echo 3 > /proc/sys/vm/drop_caches; sleep "$settle"; }

# A root tree of about $2 bytes of file data at $1: a quarter in many small files (0.5-64 KiB), a
# quarter in medium ones (256 KiB-4 MiB), half in large ones (16-64 MiB); fixed sizes (seeded), random bytes.
make_tree() {
    python3 - "$1" "$2" <<'EOF'
import os, random, sys
root, total = sys.argv[1], sys.argv[2]
rng = random.Random(6)
if total.endswith("files"):
    count = int(total[:-len("files")])
    for index in range(count):
        directory = os.path.join(root, "usr/share/d%03d" % (index // 10000), "d%03d" % (index // 100 % 100))
        if index % 100 == 0:
            os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "f%05d" % index), "wb") as f:
            f.write(os.urandom(int(64 * 512 ** rng.random())))
    print(count)
    sys.exit(0)
total = int(total)
classes = [(0.25, 512, 64 << 10, "usr/share/small"), (0.25, 256 << 10, 4 << 20, "usr/lib/medium"),
           (0.50, 16 << 20, 64 << 20, "var/lib/large")]
count = 0
for share, low, high, folder in classes:
    budget = int(total * share)
    index = 0
    while budget > 0:
        size = min(budget, int(low * (high / low) ** rng.random()))
        directory = os.path.join(root, folder, "d%03d" % (index // 100))
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "f%05d" % index), "wb") as f:
            left = size
            while left > 0:
                piece = min(left, 4 << 20)
                f.write(os.urandom(piece))
                left -= piece
        budget -= size
        index += 1
    count += index
print(count)
EOF
}

# Runs a command under GNU time; appends "seconds maxrss_kib" to $record. Output of the command goes to $log.
timed() {
    local record=$1 log=$2; shift 2
    local start end
    start=$(date +%s.%N)
    /usr/bin/time -v -o "$log.time" "$@" >>"$log" 2>&1 || { cat "$log" >&2; die "failed: $*"; }
    end=$(date +%s.%N)
    printf '%s %s\n' "$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')" \
        "$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$log.time")" >> "$record"
}

results=$workdir/results.tsv
printf 'data\tdisk\trun\tbuilder\tseconds\tbytes\tallocated\tpeak_kib\tdata_bytes\n' > "$results"

# The builds: every data size in every disk, or the pairs of --cases.
if [ -z "$cases" ]; then
    for data in $data_sizes; do for disk in $disk_sizes; do cases="$cases $data:$disk"; done; done
fi
data_sizes=$(for pair in $cases; do echo "${pair%%:*}"; done | awk '!seen[$0]++' | tr '\n' ' ')

for data in $data_sizes; do
    tree=$workdir/run/tree-$data
    say "generating a $data root tree"
    mkdir -p "$tree"
    case "$data" in *files) size=$data ;; *) size=$(bytes "$data") ;; esac
    files=$(make_tree "$tree" "$size")
    cp -a "$demo/boot" "$tree/"
    data_bytes=$(find "$tree" -type f -printf '%s\n' | awk '{ s += $1 } END { printf "%.0f\n", s }')
    say "tree: $files files + /boot, $data_bytes bytes"
    for disk in $(for pair in $cases; do [ "${pair%%:*}" = "$data" ] && echo "${pair##*:}"; done); do
      for run in $(seq "$runs"); do
        out=$workdir/run/$data-$disk
        mkdir -p "$out"

        # (a) sevimage create
        drop_caches
        say "sevimage create: $data in $disk (run $run of $runs)"
        rm -f "$out"/sevimage.*
        : > "$out/sevimage.record"
        timed "$out/sevimage.record" "$out/sevimage.log" "$sevimage" create --rootfs "$tree" \
            --output "$out/sevimage.qcow2" --size "$disk" --passphrase-file "$key" --json
        read -r s_sec s_kib < "$out/sevimage.record"
        s_bytes=$(stat -c %s "$out/sevimage.qcow2")
        s_alloc=$(( $(stat -c %b "$out/sevimage.qcow2") * 512 ))
        printf '%s\t%s\t%s\tsevimage\t%s\t%s\t%s\t%s\t%s\n' "$data" "$disk" "$run" "$s_sec" "$s_bytes" "$s_alloc" "$s_kib" "$data_bytes" >> "$results"
        # The root partition sevimage made for this disk, in bytes.
        part=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); p=[p for p in m["partitions"] if p["role"]=="root"][0]; print((p["lastLBA"]-p["firstLBA"]+1)*512)' "$out/sevimage.manifest.json")
        rm -f "$out/sevimage.qcow2"

        # (b) the offline pipeline: the encrypted raw partition (every sector written) and its QCOW2 copy.
        avail=$(df --output=avail -B1 "$out" | tail -n 1)
        if [ "$avail" -lt $(( 2 * part + (1 << 30) )) ]; then
            say "pipeline: $data in $disk skipped: it needs $(( (2 * part >> 30) + 1 )) GiB free in $out, there are $(( avail >> 30 ))"
            continue
        fi
        drop_caches
        say "pipeline: $data in $disk (root partition $part bytes, run $run of $runs)"
        rm -f "$out"/pipeline.*
        : > "$out/pipeline.record"
        truncate -s "$part" "$out/root.img"
        timed "$out/pipeline.record" "$out/pipeline.log" mkfs.ext4 -q -F -b 4096 -d "$tree" "$out/root.img" "$(( (part - (32 << 20)) >> 10 ))k"
        timed "$out/pipeline.record" "$out/pipeline.log" cryptsetup reencrypt --encrypt --type luks2 \
            --reduce-device-size 32M --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --sector-size 4096 \
            --cipher aes-xts-plain64 --key-size 512 --batch-mode --key-file "$key" "$out/root.img"
        timed "$out/pipeline.record" "$out/pipeline.log" qemu-img convert -f raw -O qcow2 "$out/root.img" "$out/pipeline.qcow2"
        timed "$out/pipeline.record" "$out/pipeline.log" sync "$out/pipeline.qcow2"
        read -r p_sec p_kib < <(awk '{ s += $1; if ($2 > m) m = $2 } END { print s, m }' "$out/pipeline.record")
        p_bytes=$(stat -c %s "$out/pipeline.qcow2")
        p_alloc=$(( $(stat -c %b "$out/pipeline.qcow2") * 512 ))
        printf '%s\t%s\t%s\tpipeline\t%s\t%s\t%s\t%s\t%s\n' "$data" "$disk" "$run" "$p_sec" "$p_bytes" "$p_alloc" "$p_kib" "$data_bytes" >> "$results"
        rm -f "$out/root.img" "$out/pipeline.qcow2"
      done
    done
    [ "$keep" = 1 ] || rm -rf "$tree"
done

# The report.
python3 - "$results" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
def mib(n): return "%.1f MiB" % (n / 2**20)
# One line per (data, disk, builder): the median of its runs (time, size), the largest peak memory, the range of times.
groups = {}
for r in rows: groups.setdefault((r["data"], r["disk"], r["builder"]), []).append(r)
by = {}
print("%-6s %-5s %-9s %4s %9s %13s %12s %12s %11s %9s" % ("data", "disk", "builder", "runs", "median s", "range s", "file", "on disk", "peak RSS", "size/data"))
for key, runs in groups.items():
    seconds = [float(r["seconds"]) for r in runs]
    m = {"seconds": statistics.median(seconds), "bytes": statistics.median(int(r["bytes"]) for r in runs),
         "allocated": statistics.median(int(r["allocated"]) for r in runs), "peak": max(int(r["peak_kib"]) for r in runs) * 1024,
         "data": int(float(runs[0]["data_bytes"]))}
    by[key] = m
    print("%-6s %-5s %-9s %4d %9.2f %13s %12s %12s %11s %8.3fx" % (key[0], key[1], key[2], len(runs), m["seconds"],
          "%.2f-%.2f" % (min(seconds), max(seconds)), mib(m["bytes"]), mib(m["allocated"]), mib(m["peak"]), m["bytes"] / m["data"]))
print()
datas = list(dict.fromkeys(r["data"] for r in rows)); disks = list(dict.fromkeys(r["disk"] for r in rows))
verdicts = []
for d in datas:
    for k in disks:
        s, p = by.get((d, k, "sevimage")), by.get((d, k, "pipeline"))
        if s and p:
            ratio = s["seconds"] / p["seconds"]
            print("%s in %s: time sevimage/pipeline %.3f  size sevimage/pipeline %.4f  (medians)" % (d, k, ratio, s["bytes"] / p["bytes"]))
            if d == "1G" and k == "8G": verdicts.append(("time <= 0.1x pipeline (1G in 8G)", ratio <= 0.1))
    for b in ("sevimage", "pipeline"):
        if len(disks) >= 2:
            a, z = by.get((d, disks[0], b)), by.get((d, disks[-1], b))
            if a and z:
                t, n = z["seconds"] / a["seconds"], z["bytes"] / a["bytes"]
                print("%s %s: %s/%s time %.3f  size %.4f" % (b, d, disks[-1], disks[0], t, n))
                if b == "sevimage": verdicts.append(("%s: doubling the disk changes time and size < 10%%" % d, abs(t - 1) < 0.1 and abs(n - 1) < 0.1))
sev = [v for k, v in by.items() if k[2] == "sevimage"]
# (A tree of small files has one 4 KiB block per file whatever its size: the size goal is the mixed tree's.)
mixed = [v for k, v in by.items() if k[2] == "sevimage" and not k[0].endswith("files")]
if mixed: verdicts.append(("QCOW2 <= 1.15x data (mixed trees)", all(v["bytes"] <= 1.15 * v["data"] for v in mixed)))
verdicts.append(("peak memory < 256 MiB", all(v["peak"] < 256 * 2**20 for v in sev)))
print()
for name, ok in verdicts: print("%-55s %s" % (name, "met" if ok else "NOT MET"))
EOF
say "raw figures: $results"
