#!/bin/sh
# Builds sevimage's pipeline-stage image: an OCI image layout directory, offline (no container daemon, no
# registry), from Debian 12's packages and the static release binary. Prints the image's reference
# (oci:DIR:TAG) on stdout; progress, the package list and the size go to stderr.
#
#   scripts/build-stage-image.sh [--binary PATH] [--output DIR] [--tag TAG] [--mirror URL|FILE] [--reuse]
#
#   --binary PATH   the sevimage to ship (default: scripts/build-release.sh builds it: Swift's runtime is linked
#                   in, so the image needs no toolchain library). It is stripped of its symbols in the image.
#   --output DIR    the OCI layout to write (default: stage-image/); replaced whole, built beside it first
#   --tag TAG       the image's tag in the layout (default: the binary's version)
#   --mirror M      the Debian mirror or a sources file, as mmdebstrap takes it (default: the host's bookworm
#                   sources); a snapshot.debian.org URL makes the packages themselves fixed in time
#   --reuse         keep DIR when it was built by this recipe from this binary (what the tests use)
#
# What goes in (two layers):
#   1. a Debian 12 tree from mmdebstrap --variant=essential (the Essential:yes packages: a shell, coreutils, dpkg,
#      tar, gzip) plus exactly the packages `sevimage doctor --pipeline --packages` names and those of the shared
#      libraries the binary links (found with ldd and dpkg -S on this host); no apt, no package lists, no docs but
#      the copyright files, no man pages, no locales; a user sevimage (65532:65532) whose home /home/sevimage is
#      root's and read-only; /work (1777), the work directory and TMPDIR.
#   2. /usr/local/bin/sevimage.
# Config: user 65532:65532 (numeric, so that Kubernetes' runAsNonRoot can check it), entrypoint sevimage, command
# `doctor --pipeline`, working directory /work, TMPDIR=/work, HOME=/home/sevimage.
#
# Reproducible: every timestamp is SOURCE_DATE_EPOCH (default: the last commit's time), the layers are tar
# archives with sorted names, numeric owners and no atime/ctime, and mmdebstrap is reproducible with the same
# mirror content: two builds from one binary and one mirror state give the same image digest.
#
# Needs root (mmdebstrap --mode=root), mmdebstrap, umoci, GNU tar, and Debian's package mirror.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
recipe=2                                # bump when what goes into the image changes
binary=
output=stage-image
tag=
mirror=
reuse=false

die() { printf 'build-stage-image: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'build-stage-image: %s\n' "$*" >&2; }

while [ $# -gt 0 ]; do
    case $1 in
        --binary) binary=${2:?--binary needs a path}; shift 2 ;;
        --output) output=${2:?--output needs a directory}; shift 2 ;;
        --tag) tag=${2:?--tag needs a value}; shift 2 ;;
        --mirror) mirror=${2:?--mirror needs a URL or a sources file}; shift 2 ;;
        --reuse) reuse=true; shift ;;
        -h|--help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "run as root (mmdebstrap --mode=root installs the packages as they are installed on a machine)"
for tool in mmdebstrap umoci tar ldd dpkg-query flock; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (apt-get install mmdebstrap umoci)"
done
start=$(date +%s)

if [ -z "$binary" ]; then
    say "building the release binary (scripts/build-release.sh)"
    binary=$("$here/scripts/build-release.sh")
fi
[ -x "$binary" ] || die "$binary is not an executable"
binary=$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")
version=$("$binary" --version) || die "$binary does not run here"
[ -n "$tag" ] || tag=$version

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$here" log -1 --format=%ct 2>/dev/null || echo 0)
fi
export SOURCE_DATE_EPOCH
created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)

if [ -z "$mirror" ]; then
    for candidate in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
        if [ -s "$candidate" ] && grep -q bookworm "$candidate"; then mirror=$candidate; break; fi
    done
    [ -n "$mirror" ] || die "no bookworm entry in the host's apt sources; give --mirror http://deb.debian.org/debian"
fi

# The packages: what the code says it runs, and what the binary links (ldd lists the whole closure; each library
# must belong to a Debian package, or the image could not hold it).
programs=$("$binary" doctor --pipeline --packages) || die "$binary doctor --pipeline --packages failed"
libraries=
for library in $(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }'); do
    # By name in its multiarch directory: on a merged-/usr host dpkg knows /lib/... or /usr/lib/..., not both.
    pattern="*/$(basename "$(dirname "$library")")/$(basename "$library")"
    owner=$(dpkg-query -S "$pattern" 2>/dev/null | sed 's/: .*//; s/, /\n/g' | sed 's/:.*//' | sort -u | head -n 1)
    [ -n "$owner" ] || die "$library (linked by $binary) belongs to no Debian package of this host"
    libraries="$libraries $owner"
done
packages=$(printf '%s\n' $programs $libraries | sort -u | tr '\n' ',' | sed 's/,$//')
say "packages: $packages"

sha=$(sha256sum "$binary" | cut -d' ' -f1)
stamp="recipe $recipe epoch $SOURCE_DATE_EPOCH tag $tag binary $sha mirror $mirror packages $packages"
output_parent=$(dirname "$output")
mkdir -p "$output_parent"
output=$(cd "$output_parent" && pwd)/$(basename "$output")
stampfile="$output_parent/.$(basename "$output").stamp"

# One build of an output at a time: test.sh starts one in the background and the tests ask for the same one.
exec 9>"$output_parent/.$(basename "$output").lock"
flock 9
if $reuse && [ -f "$output/index.json" ] && [ "$(cat "$stampfile" 2>/dev/null)" = "$stamp" ]; then
    say "reusing $output (same recipe, binary and packages)"
    printf 'oci:%s:%s\n' "$output" "$tag"
    exit 0
fi

work=$(mktemp -d "$output_parent/.stage-image-XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM HUP
tree=$work/tree

say "mmdebstrap: Debian 12 essential + runtime packages"
# shellcheck disable=SC2016
mmdebstrap --mode=root --variant=essential --format=directory \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --include="$packages" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --customize-hook='echo "sevimage:x:65532:65532:sevimage pipeline stage:/home/sevimage:/usr/sbin/nologin" >>"$1/etc/passwd"' \
    --customize-hook='echo "sevimage:x:65532:" >>"$1/etc/group"' \
    --customize-hook='install -d -m 0555 -o 0 -g 0 "$1/home/sevimage"' \
    --customize-hook='install -d -m 1777 -o 0 -g 0 "$1/work"' \
    --customize-hook=': >"$1/etc/resolv.conf"; echo sevimage >"$1/etc/hostname"; chmod 0644 "$1/etc/resolv.conf" "$1/etc/hostname"' \
    --customize-hook='rm -rf "$1/var/cache/debconf/"*-old "$1/var/lib/dpkg/"*-old "$1/var/log/"*' \
    --customize-hook='find "$1/usr/share/doc" -mindepth 2 ! -type d ! -name copyright -delete; rm -f "$1/usr/share/info/"*' \
    bookworm "$tree" "$mirror" </dev/null >"$work/mmdebstrap.log" 2>&1 \
    || { tail -n 20 "$work/mmdebstrap.log" >&2; die "mmdebstrap failed"; }

# The layers: GNU tar's reproducible archives (sorted names, one clamped time, numeric owners, no atime/ctime).
layer() {
    directory=$1; archive=$2; shift 2
    tar --create --file "$archive" --directory "$directory" --sort=name --format=pax \
        --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
        --mtime="@$SOURCE_DATE_EPOCH" --clamp-mtime --numeric-owner "$@"
}
# /dev, /proc, /sys, /run and /tmp are the runtime's: their directories stay, their contents (device nodes) do not.
layer "$tree" "$work/debian.tar" --exclude=./dev/* --exclude=./proc/* --exclude=./sys/* --exclude=./run/* --exclude=./tmp/* .
mkdir -p "$work/bin/usr/local/bin"
chmod 0755 "$work/bin" "$work/bin/usr" "$work/bin/usr/local" "$work/bin/usr/local/bin"
# The toolchain's llvm-objcopy (binutils' objcopy is not always installed).
strip=$(dirname "$(command -v swift 2>/dev/null || echo /nonexistent/swift)")/llvm-objcopy
[ -x "$strip" ] || strip=$(command -v llvm-objcopy || command -v objcopy || true)
if [ -n "$strip" ]; then
    "$strip" --strip-all "$binary" "$work/bin/usr/local/bin/sevimage"
else
    say "no objcopy here: the binary goes in with its symbols"
    cp "$binary" "$work/bin/usr/local/bin/sevimage"
fi
chmod 0755 "$work/bin/usr/local/bin/sevimage"
chown -R 0:0 "$work/bin"
layer "$work/bin" "$work/sevimage.tar" --owner=0 --group=0 ./usr

say "umoci: assembling the OCI layout"
layout=$work/layout
image="$layout:$tag"
umoci init --layout "$layout"
umoci new --image "$image"
umoci raw add-layer --image "$image" --history.created="$created" --history.created_by="scripts/build-stage-image.sh: mmdebstrap --variant=essential" \
    --history.comment="Debian 12: $packages" "$work/debian.tar"
umoci raw add-layer --image "$image" --history.created="$created" --history.created_by="scripts/build-stage-image.sh: sevimage $version" \
    --history.comment="/usr/local/bin/sevimage" "$work/sevimage.tar"
umoci config --image "$image" --created="$created" --history.created="$created" \
    --history.created_by="scripts/build-stage-image.sh: config" \
    --config.user=65532:65532 --config.entrypoint=/usr/local/bin/sevimage --config.cmd=doctor --config.cmd=--pipeline \
    --config.workingdir=/work \
    --config.env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.env=TMPDIR=/work --config.env=HOME=/home/sevimage \
    --config.label=org.opencontainers.image.title=sevimage \
    --config.label=org.opencontainers.image.version="$version" \
    --config.label=org.opencontainers.image.created="$created" \
    --config.label=org.opencontainers.image.description="sevimage pipeline stage: builds and rotates encrypted SEV disk images without privileges" \
    --manifest.annotation=org.opencontainers.image.title=sevimage \
    --manifest.annotation=org.opencontainers.image.version="$version" \
    --manifest.annotation=org.opencontainers.image.created="$created"
umoci gc --layout "$layout"

# Readable by everyone (umoci writes its files 0600): nothing in it is secret, and rootless podman or skopeo
# run by another user read it.
chmod -R a+rX "$layout"
rm -rf "$output.old"
[ ! -e "$output" ] || mv "$output" "$output.old"
mv "$layout" "$output"
rm -rf "$output.old"
printf '%s\n' "$stamp" >"$stampfile"

compressed=$(du -sb --apparent-size "$output/blobs" | cut -f1)
unpacked=$(($(stat -c %s "$work/debian.tar") + $(stat -c %s "$work/sevimage.tar")))
say "$(printf 'oci:%s:%s: %d MiB compressed, %d MiB unpacked (Debian %d MiB, sevimage %d MiB), built in %d s' \
    "$output" "$tag" $((compressed >> 20)) $((unpacked >> 20)) $(($(stat -c %s "$work/debian.tar") >> 20)) \
    $(($(stat -c %s "$work/sevimage.tar") >> 20)) $(($(date +%s) - start)))"
printf 'oci:%s:%s\n' "$output" "$tag"
