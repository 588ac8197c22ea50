#!/bin/sh
# Installs what sevimage needs on Debian 12, as root.
#   scripts/install-deps.sh           the tool's own needs (build and run)
#   scripts/install-deps.sh --test    plus the test suite's independent checkers and oracles
set -eu

runtime="libcryptsetup-dev libfdisk-dev libblkid-dev libssl-dev pkg-config
  e2fsprogs dosfstools mtools grub-efi-amd64-bin grub-common qemu-utils
  qemu-system-x86 ovmf busybox-static cpio tar gzip xz-utils zstd bzip2 lz4 lzop libeatmydata1"
test_packages="cryptsetup-bin fdisk util-linux python3 python3-pip mmdebstrap"
# scripts/build-amdsev-ovmf.sh (the AmdSev OVMF tests): unpacking Debian's edk2 source and building it.
test_packages="$test_packages dpkg-dev nasm acpica-tools uuid-dev build-essential"
# export containerdisk's tests read the OCI layout with skopeo and unpack it with umoci.
test_packages="$test_packages skopeo umoci"
# export libvirt's tests validate the domain XML with virt-xml-validate (libvirt-clients; it runs xmllint from
# libxml2-utils) and parse it with libvirt's test driver through python3-libvirt; launch is cross-checked with
# libvirt's virt-qemu-sev-validate (libvirt-clients-qemu), which imports lxml and cryptography without depending
# on their packages.
test_packages="$test_packages libvirt-clients libxml2-utils libvirt-clients-qemu python3-libvirt python3-lxml python3-cryptography"
# The stage image's tests (StageImageTests): rootless podman runs it (uidmap's newuidmap maps the user's
# subordinate ids; no network, so no slirp4netns) and check-deploy.py reads deploy/'s YAML with PyYAML.
test_packages="$test_packages podman uidmap python3-yaml"

packages=$runtime
[ "${1:-}" = "--test" ] && packages="$runtime $test_packages"

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: run as root (apt-get install)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $packages

if ! command -v swift >/dev/null 2>&1; then
    echo "install-deps: no Swift toolchain on PATH; install Swift 6 (swift.org) and rerun" >&2
    exit 1
fi

if [ "${1:-}" = "--test" ]; then
    # Independent oracles: AES-XTS/CTR and HMAC from `cryptography`, launch digests from `sev-snp-measure`.
    python3 -m pip install --quiet --disable-pip-version-check cryptography sev-snp-measure 2>/dev/null \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages cryptography sev-snp-measure
    # deploy/'s Jobs against Kubernetes' own schemas (bundled in the package: no network at test time).
    python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate 2>/dev/null \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages kubernetes-validate
    # Rootless podman runs the stage image as this user; useradd gives it subordinate uid and gid ranges.
    if ! getent passwd sevimage-rootless >/dev/null; then
        useradd --create-home --shell /usr/sbin/nologin --comment "sevimage rootless podman tests" sevimage-rootless
    fi
fi
