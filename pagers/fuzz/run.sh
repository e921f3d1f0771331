#!/usr/bin/env bash
# run.sh — run every holo fuzz target (wire protocol in pagers/fuzz, daemon parsers and the
# shared home in daemon/fuzz, the control plane in cluster/fuzz) for a bounded time each; fail
# on the first crash, panic, leak or timeout.
#
#   pagers/fuzz/run.sh                 # every target, FUZZ_SECONDS (default 60) each
#   FUZZ_SECONDS=300 pagers/fuzz/run.sh frame_stream config_toml
#
# Needs a nightly toolchain (`rustup toolchain install nightly`); installs cargo-fuzz if
# missing. Kept next to the protocol fuzz crate rather than in a scripts/ folder: it is the
# fuzz crates' entry point. The crates share one target dir (target/fuzz) so libFuzzer is
# built once. Each target starts from its seed corpus (the regression corpus that the
# stable tests replay, <crate>/tests/corpus/<target>) plus what earlier runs found
# (<crate>/fuzz/corpus/<target>, not checked in); a crash input lands in
# <crate>/fuzz/artifacts/<target>/: copy it into the regression corpus once fixed.
set -euo pipefail
ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.." && pwd)
cd "$ROOT"
SECONDS_EACH=${FUZZ_SECONDS:-60}
[[ $SECONDS_EACH =~ ^[0-9]+$ ]] || { echo "run.sh: FUZZ_SECONDS must be a number of seconds" >&2; exit 2; }

if ! command -v cargo >/dev/null 2>&1; then
    export PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi
cargo +nightly --version >/dev/null 2>&1 || { echo "run.sh: no nightly toolchain (rustup toolchain install nightly)" >&2; exit 2; }
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# target name -> crate folder holding its fuzz/ directory
declare -A CRATE=(
    [frame_decode]=pagers [frame_stream]=pagers
    [config_toml]=daemon [parse_size]=daemon [proc_parsers]=daemon [metrics_request]=daemon [remote_frame]=daemon
    [shared_home]=daemon [control_envelope]=cluster
)
ORDER=(frame_decode frame_stream config_toml parse_size proc_parsers metrics_request remote_frame shared_home
    control_envelope)
targets=("$@")
((${#targets[@]})) || targets=("${ORDER[@]}")

for t in "${targets[@]}"; do
    crate=${CRATE[$t]:-}
    [[ -n $crate ]] || { echo "run.sh: unknown target $t (known: ${ORDER[*]})" >&2; exit 2; }
    mkdir -p "$crate/fuzz/corpus/$t"
    corpora=("fuzz/corpus/$t") # new inputs go to the first
    [[ -d $crate/tests/corpus/$t ]] && corpora+=("tests/corpus/$t")
    log="$ROOT/target/fuzz-$t.log"
    echo "==> fuzzing $t for ${SECONDS_EACH}s (log: $log)"
    # -O -a: optimised, with debug assertions and overflow checks (-O alone drops them).
    # -max_total_time bounds the run; a crash, a panic, an ASan report or a 10 s input
    # (-timeout) makes cargo fuzz exit non-zero.
    rc=0
    (cd "$crate" && cargo +nightly fuzz run -O -a --target-dir "$ROOT/target/fuzz" "$t" "${corpora[@]}" -- \
        -max_total_time="$SECONDS_EACH" -timeout=10 -max_len=4096 -print_final_stats=1) >"$log" 2>&1 || rc=$?
    grep -E '^(stat::number_of_executed_units|stat::new_units_added|==[0-9]+==|SUMMARY)|panicked' "$log" || true
    if ((rc != 0)); then
        tail -n 40 "$log" >&2
        echo "run.sh: $t FAILED (exit $rc); inputs in $crate/fuzz/artifacts/$t/" >&2
        exit 1
    fi
done
echo "==> all fuzz targets ran clean"
