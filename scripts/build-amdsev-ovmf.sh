#!/bin/bash
# Builds an AmdSev OVMF (edk2 OvmfPkg/AmdSev/AmdSevX64.dsc: code and variables in one OVMF.fd, a SEV
# secret area, and a GRUB inside the firmware volume) from Debian's edk2 source package, with the GRUB
# that `sevimage firmware grub` makes. Prints the path of the OVMF.fd on stdout; everything else goes
# to stderr.
#
#   scripts/build-amdsev-ovmf.sh [--grub GRUB.efi] [--src DIR] [--cache DIR] [--no-install]
#
#   --grub FILE    the GRUB binary to build in; default: `sevimage firmware grub` (sevimage from $SEVIMAGE,
#                  PATH, or this checkout's .build/release or .build/debug)
#   --src DIR      where `apt-get source edk2` unpacks (default .cache/edk2-src in this checkout)
#   --cache DIR    where finished firmware is kept (default .cache/amdsev-ovmf)
#   --no-install   never run apt-get; fail if something is missing
#
# Result: CACHE/<edk2 source version>-<first 16 hex digits of the GRUB's SHA-256>/OVMF.fd, reused
# without network or build when it exists. A first build fetches the source (adding a deb-src entry for
# Debian's archive in /etc/apt/sources.list.d/ when apt has none), installs the build dependencies
# (nasm acpica-tools uuid-dev build-essential python3), builds BaseTools, then the firmware
# (`build -a X64 -t GCC5 -b RELEASE`, about 2 minutes on 2 cores). Needs root only for apt-get.
#
# edk2's own PREBUILD step (OvmfPkg/AmdSev/Grub/grub.sh) would make a GRUB with a module name that no
# longer exists and without LUKS2; in the build tree it is replaced by a stub that only checks that
# grub.efi is in place.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
src="$here/.cache/edk2-src"
cache="$here/.cache/amdsev-ovmf"
grub=
install=1

say() { printf 'build-amdsev-ovmf: %s\n' "$*" >&2; }
die() { printf 'build-amdsev-ovmf: error: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case $1 in
        --grub) [ $# -ge 2 ] || die "--grub needs a file"; grub=$2; shift 2 ;;
        --src) [ $# -ge 2 ] || die "--src needs a directory"; src=$2; shift 2 ;;
        --cache) [ $# -ge 2 ] || die "--cache needs a directory"; cache=$2; shift 2 ;;
        --no-install) install=0; shift ;;
        -h|--help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

mkdir -p "$src" "$cache"
src=$(cd "$src" && pwd)
cache=$(cd "$cache" && pwd)

# One build at a time per cache (tests and people may run this concurrently).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$cache/.lock"
    flock 9
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/build-amdsev-ovmf.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM HUP

# The GRUB binary: given, or made by sevimage.
if [ -z "$grub" ]; then
    sevimage=${SEVIMAGE:-}
    if [ -z "$sevimage" ]; then
        for candidate in "$(command -v sevimage 2>/dev/null || true)" "$here/.build/release/sevimage" "$here/.build/debug/sevimage"; do
            if [ -n "$candidate" ] && [ -x "$candidate" ]; then sevimage=$candidate; break; fi
        done
    fi
    [ -n "$sevimage" ] || die "no sevimage binary: run 'swift build -c release', set SEVIMAGE, or pass --grub"
    "$sevimage" firmware grub --output "$work/grub.efi" >&2 || die "sevimage firmware grub failed"
    grub="$work/grub.efi"
fi
[ -f "$grub" ] || die "GRUB binary $grub does not exist"
grub_hash=$(sha256sum "$grub" | cut -c1-16)

apt_install() {
    [ "$install" = 1 ] || die "missing: $* (install the Debian packages, or run without --no-install as root)"
    [ "$(id -u)" -eq 0 ] || die "missing: $* (run as root once, or: apt-get install $*)"
    say "installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2 \
        || die "apt-get install $* failed"
}

has_deb_src() {
    grep -rqsE '^[[:space:]]*(deb-src[[:space:]]|Types:.*deb-src)' /etc/apt/sources.list /etc/apt/sources.list.d/
}

# The unpacked source: edk2-<upstream version> with debian/ (Debian's patches already applied).
source_dir() {
    for d in "$src"/edk2-*/; do
        [ -f "${d}debian/changelog" ] && [ -f "${d}edksetup.sh" ] && { printf '%s\n' "${d%/}"; return 0; }
    done
    return 1
}

if ! tree=$(source_dir); then
    command -v dpkg-source >/dev/null 2>&1 || apt_install dpkg-dev
    if ! has_deb_src; then
        [ "$install" = 1 ] && [ "$(id -u)" -eq 0 ] \
            || die "apt has no deb-src entry; add one for bookworm (see the README) or run as root"
        say "adding a deb-src entry for Debian bookworm in /etc/apt/sources.list.d/sevimage-deb-src.sources"
        cat >/etc/apt/sources.list.d/sevimage-deb-src.sources <<'EOF'
# Added by sevimage's scripts/build-amdsev-ovmf.sh: source packages (apt-get source edk2).
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        apt-get update -q >&2 || die "apt-get update failed"
    fi
    say "fetching Debian's edk2 source into $src"
    (cd "$src" && apt-get source -q edk2 >&2) || {
        [ "$(id -u)" -eq 0 ] && apt-get update -q >&2 && (cd "$src" && apt-get source -q edk2 >&2)
    } || die "apt-get source edk2 failed"
    tree=$(source_dir) || die "apt-get source edk2 left no edk2-* directory in $src"
fi
version=$(sed -n '1s/^edk2 (\([^)]*\)).*/\1/p' "$tree/debian/changelog")
[ -n "$version" ] || die "cannot read the source version from $tree/debian/changelog"

result="$cache/$version-$grub_hash/OVMF.fd"
if [ -f "$result" ]; then
    say "cached: edk2 $version with GRUB $grub_hash"
    printf '%s\n' "$result"
    exit 0
fi

# Build dependencies (what `build` needs for this one platform, not the whole `apt-get build-dep edk2`).
missing=
command -v nasm >/dev/null 2>&1 || missing="$missing nasm"
command -v iasl >/dev/null 2>&1 || missing="$missing acpica-tools"
[ -f /usr/include/uuid/uuid.h ] || missing="$missing uuid-dev"
command -v python3 >/dev/null 2>&1 || missing="$missing python3"
for tool in gcc g++ make; do
    command -v $tool >/dev/null 2>&1 || { missing="$missing build-essential"; break; }
done
# shellcheck disable=SC2086
[ -z "$missing" ] || apt_install $missing

jobs=$(nproc 2>/dev/null || echo 2)
log="$cache/build-$version-$grub_hash.log"
say "building edk2 $version AmdSevX64 with GRUB $grub_hash (log: $log)"
: >"$log"

# The GRUB goes where the .fdf takes it from; edk2's grub.sh must not rebuild it.
cp "$grub" "$tree/OvmfPkg/AmdSev/Grub/grub.efi"
cat >"$tree/OvmfPkg/AmdSev/Grub/grub.sh" <<'EOF'
# Replaced by sevimage's scripts/build-amdsev-ovmf.sh: grub.efi comes from `sevimage firmware grub`.
[ -f "$(dirname -- "$0")/grub.efi" ] || { echo "grub.efi is missing" >&2; exit 1; }
EOF

(
    cd "$tree"
    # Variables that would point the build at another workspace.
    unset WORKSPACE EDK_TOOLS_PATH CONF_PATH PACKAGES_PATH ECP_SOURCE EDK_SOURCE EFI_SOURCE
    export PYTHON3_ENABLE=TRUE PYTHON_COMMAND=python3
    if [ ! -x BaseTools/Source/C/bin/GenFw ]; then
        make -C BaseTools -j"$jobs" >>"$log" 2>&1 || exit 10
    fi
    # edksetup.sh reads the positional parameters (give it none) and unset variables.
    set -- && set +u
    # shellcheck disable=SC1091
    . ./edksetup.sh >>"$log" 2>&1 || exit 11
    rm -rf Build/AmdSev/RELEASE_GCC5/FV
    build -a X64 -t GCC5 -p OvmfPkg/AmdSev/AmdSevX64.dsc -b RELEASE -n "$jobs" >>"$log" 2>&1 || exit 12
) || {
    status=$?
    tail -n 20 "$log" >&2
    case $status in
        10) die "building edk2's BaseTools failed (see $log)" ;;
        11) die "edksetup.sh failed (see $log)" ;;
        *) die "the edk2 build failed (see $log)" ;;
    esac
}

built="$tree/Build/AmdSev/RELEASE_GCC5/FV/OVMF.fd"
[ -f "$built" ] || die "the build finished without $built"
# The GRUB it holds next to it, then the firmware last: its presence means the entry is complete.
mkdir -p "$cache/$version-$grub_hash"
cp "$grub" "$cache/$version-$grub_hash/grub.efi"
cp "$built" "$result.tmp"
mv "$result.tmp" "$result"
say "built $(wc -c <"$result") bytes"
printf '%s\n' "$result"
