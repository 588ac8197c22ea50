#!/bin/sh
# The README's first command: install, build, and create the demo image from the built-in root tree.
#   scripts/demo.sh [OUTPUT_DIR]      default: demo-out/
# Produces OUTPUT_DIR/demo.qcow2, demo.manifest.json and demo.passphrase (mode 0600).
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-"$here/demo-out"}
cd "$here"

scripts/install-deps.sh
swift build -c release --product sevimage
bin=$(swift build -c release --show-bin-path)/sevimage
tree=$(scripts/demo-rootfs.sh)
mkdir -p "$out"
"$bin" create --rootfs "$tree" --output "$out/demo.qcow2" --size 1G --force
echo
echo "Boot it (types the passphrase at GRUB's prompt, about 20 s under TCG):"
echo "  $bin boot $out/demo.qcow2 --passphrase-file $out/demo.passphrase"
