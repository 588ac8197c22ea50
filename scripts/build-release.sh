#!/bin/sh
# Builds the sevimage executable in release mode and prints its path (build output goes to stderr).
# Swift's runtime and Foundation are linked in (--static-swift-stdlib): the binary runs without the
# toolchain's libraries and starts in half the time from a cold cache (0.05 s instead of 0.11 s on this
# project's machines). Linked with the toolchain's lld: the default linker warns about a mktemp call
# inside the static Foundation library, which is not ours to change.
set -eu
cd "$(dirname "$0")/.."
flags="-c release --static-swift-stdlib -Xswiftc -use-ld=lld"
# shellcheck disable=SC2086
swift build $flags --product sevimage >&2
# shellcheck disable=SC2086
echo "$(swift build $flags --show-bin-path)/sevimage"
