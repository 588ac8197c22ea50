#!/bin/sh
# The README's second command: install the test dependencies and run the whole test suite.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
scripts/install-deps.sh --test

# The real-distribution boot tests need two Debian trees (mmdebstrap, 2-3 minutes each, mostly downloads and
# dpkg): build them while Swift compiles. The tests call the same script, which reuses a finished tree.
trees=
if [ "$(id -u)" -eq 0 ] && command -v mmdebstrap >/dev/null 2>&1; then
    mkdir -p .cache
    Tests/Support/make-debian-tree.sh initramfs-tools >.cache/debian-tree-initramfs-tools.log 2>&1 &
    trees="$trees $!"
    Tests/Support/make-debian-tree.sh dracut >.cache/debian-tree-dracut.log 2>&1 &
    trees="$trees $!"
fi
swift build --build-tests
for pid in $trees; do
    wait "$pid" || echo "test.sh: a Debian tree build failed (see .cache/debian-tree-*.log); its tests will say why" >&2
done
swift test --skip-build
