#!/bin/sh
# The README's second command: install the test dependencies and run the whole test suite.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
scripts/install-deps.sh --test
swift build --build-tests
swift test --skip-build
