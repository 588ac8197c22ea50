#!/bin/sh
# Rebuilds the libFuzzer targets (release, -sanitize=fuzzer,address) and runs each for a number of inputs.
#
#   Fuzz/run.sh                 every target, 1,000,000 inputs each
#   Fuzz/run.sh 50000 FuzzQMP   one target, 50,000 inputs
#
# Each target starts from its committed corpus in Fuzz/Corpus/TARGET (read only); new inputs go to
# .cache/fuzz/TARGET, crashes to .cache/fuzz/crashes/. The last line per target gives the input count.
set -eu
cd "$(dirname "$0")"
runs=${1:-1000000}
shift 2>/dev/null || true
targets=${*:-"FuzzOVMFTable FuzzManifest FuzzProfile FuzzSecretTable FuzzQCOW2 FuzzQMP FuzzGPT FuzzKeysImage"}
scratch=${FUZZ_SCRATCH:-../.cache/fuzz-build}
swift build -c release --scratch-path "$scratch" -Xswiftc -sanitize=fuzzer,address
bin=$(swift build -c release --scratch-path "$scratch" -Xswiftc -sanitize=fuzzer,address --show-bin-path)
mkdir -p ../.cache/fuzz/crashes
# TOMLKit 0.6.0 never frees a parsed table: suppress leaks allocated inside TOMLKit only (see the file).
LSAN_OPTIONS="suppressions=$(pwd)/lsan-tomlkit.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
export LSAN_OPTIONS
status=0
for target in $targets; do
    work=../.cache/fuzz/$target
    mkdir -p "$work"
    echo "== $target: $runs inputs"
    # FuzzProfile leaks through TOMLKit on every input, which would make libFuzzer run a leak scan on every
    # input (5x slower); its leaks are checked once, at exit, instead.
    leaks=""
    [ "$target" = FuzzProfile ] && leaks="-detect_leaks=0"
    # shellcheck disable=SC2086
    if "$bin/$target" -runs="$runs" -max_len=4096 -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 $leaks \
        -artifact_prefix=../.cache/fuzz/crashes/"$target"- "$work" "Corpus/$target" 2>"$work.log"; then
        runs_done=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work.log" | grep -o '[0-9]*$' || true)
        echo "$target: ok, ${runs_done:-?} inputs executed"
    else
        status=1
        echo "$target: FAILED, see $work.log and ../.cache/fuzz/crashes/"
        grep -m5 -E 'ERROR|Fatal|panic|SUMMARY' "$work.log" || true
    fi
done
exit $status
