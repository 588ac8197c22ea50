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
# The pipeline-stage image (StageImageTests): the release binary first (the tests do not run swift build while
# swift test holds .build), then mmdebstrap and umoci in the background; the tests wait for it (the script's lock)
# and reuse it.
if [ "$(id -u)" -eq 0 ] && command -v mmdebstrap >/dev/null 2>&1 && command -v umoci >/dev/null 2>&1; then
    release=$(scripts/build-release.sh)
    scripts/build-stage-image.sh --binary "$release" --output .cache/stage-image --reuse \
        >.cache/stage-image.out 2>.cache/stage-image.log &
    trees="$trees $!"
fi
for pid in $trees; do
    wait "$pid" || echo "test.sh: a Debian tree or the stage image failed to build (see .cache/debian-tree-*.log, .cache/stage-image.log); its tests will say why" >&2
done
swift test --skip-build
