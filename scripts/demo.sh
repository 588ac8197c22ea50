#!/bin/sh
# The README's first command: install what is needed, build and install sevimage (with its shell
# completions and man pages), and create the demo image from the built-in root tree.
#   scripts/demo.sh [OUTPUT_DIR]      default: demo-out/
# Produces OUTPUT_DIR/demo.qcow2, demo.manifest.json and demo.passphrase (mode 0600).
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-"$here/demo-out"}
cd "$here"

scripts/install-deps.sh
scripts/install-sevimage.sh
bin=${PREFIX:-/usr/local}/bin/sevimage
tree=$(scripts/demo-rootfs.sh)
mkdir -p "$out"
"$bin" create --rootfs "$tree" --output "$out/demo.qcow2" --size 1G --force
echo
echo "Boot it (types the passphrase at GRUB's prompt, about 10-20 s under TCG):"
echo "  sevimage boot $out/demo.qcow2 --passphrase-file $out/demo.passphrase"
