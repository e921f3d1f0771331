#!/usr/bin/env bash
# demo.sh — holo in one go: install what is missing, build, start holo-pager with a small DRAM
# budget, run a program whose working set is 8x that budget under libholo.so, verify every
# byte it wrote, print `holoctl tiers`, stop the daemon. Exits with the program's status.
# Meant for a Debian 12 machine, as root. Runnable from any directory.
#
# Knobs (environment): HOLO_DEMO_SIZE (default 2G), HOLO_DEMO_PASSES (2),
# HOLO_DEMO_BUDGET (256M), HOLO_DEMO_TMPDIR (/var/tmp: on disk, unlike a tmpfs /tmp).
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"
ROOT=$PWD

SIZE=${HOLO_DEMO_SIZE:-2G}
PASSES=${HOLO_DEMO_PASSES:-2}
BUDGET=${HOLO_DEMO_BUDGET:-256M}

say() { printf '==> %s\n' "$*"; }
die() { printf 'demo.sh: error: %s\n' "$*" >&2; exit 1; }
trap 'printf "demo.sh: FAILED (exit status %d, line %d)\n" "$?" "$LINENO" >&2' ERR

((EUID == 0)) || die "run as root: holo-pager needs CAP_SYS_PTRACE to serve other processes"

# --- Debian packages (same logic as test.sh) ---------------------------------------------
pkg_installed() {
    # Not `dpkg -s | grep -q`: with pipefail, grep quitting early can SIGPIPE dpkg.
    [[ $(dpkg -s "$1" 2>/dev/null) == *"Status: install ok installed"* ]]
}

ensure_packages() {
    local p missing=()
    for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
    ((${#missing[@]} == 0)) && return 0
    say "installing missing Debian packages: ${missing[*]}"
    local log apt=(env DEBIAN_FRONTEND=noninteractive apt-get -qq -o DPkg::Lock::Timeout=300)
    log=$(mktemp)
    if ! { "${apt[@]}" update && "${apt[@]}" install -y --no-install-recommends "${missing[@]}"; } \
        >"$log" 2>&1 </dev/null; then
        cat "$log" >&2
        rm -f "$log"
        die "apt-get failed to install: ${missing[*]}"
    fi
    rm -f "$log"
    for p in "${missing[@]}"; do pkg_installed "$p" || die "package $p still not installed"; done
}

# libhwloc-dev, libudev-dev: the NUMA topology library the daemon links and its dependency.
ensure_packages build-essential pkg-config libhwloc-dev libudev-dev memtester util-linux procps

# --- build ------------------------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1; then
    export PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust with rustup)"

say "building: cargo build --release"
cargo build --release

BIN=$ROOT/target/release
for f in holo-pager holoctl libholo.so; do
    [[ -e $BIN/$f ]] || die "$BIN/$f was not built"
done
[[ -f tests/c/fill_verify.c ]] || die "tests/c/fill_verify.c is missing"
[[ -c /dev/userfaultfd ]] ||
    die "/dev/userfaultfd is missing (needs Linux >= 6.1 with CONFIG_USERFAULTFD)"

# --- scratch directory, cleaned up (daemon stopped first) on any exit ---------------------
TMP=$(mktemp -d "${HOLO_DEMO_TMPDIR:-/var/tmp}/holo-demo.XXXXXX")
SOCK=$TMP/pager.sock
STATE=$TMP/state
LOG=$TMP/pager.log
DAEMON_PID=

show_log() {
    if [[ -s $LOG ]]; then
        printf -- '--- last lines of the holo-pager log ---\n' >&2
        tail -n 40 "$LOG" >&2
        printf -- '---\n' >&2
    fi
}

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    local rc=$?
    if [[ -n $DAEMON_PID ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        say "stopping holo-pager (pid $DAEMON_PID)"
        kill -TERM "$DAEMON_PID" 2>/dev/null || true
        local i
        for ((i = 0; i < 100; i++)); do
            kill -0 "$DAEMON_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$DAEMON_PID" 2>/dev/null; then
            say "holo-pager did not stop within 10 s: SIGKILL"
            kill -KILL "$DAEMON_PID" 2>/dev/null || true
        fi
        wait "$DAEMON_PID" 2>/dev/null || true
    fi
    ((rc == 0)) || show_log
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The NVMe tier's slab grows to about SIZE - BUDGET; fail early rather than with ENOSPC midway.
size_bytes=$(numfmt --from=iec "$SIZE") || die "HOLO_DEMO_SIZE=$SIZE is not a size"
budget_bytes=$(numfmt --from=iec "$BUDGET") || die "HOLO_DEMO_BUDGET=$BUDGET is not a size"
avail_mib=$(df -Pm "$TMP" | awk 'NR == 2 { print $4 }')
need_mib=$((size_bytes >> 20))
((avail_mib > need_mib + 256)) ||
    die "$TMP has ${avail_mib} MiB free; the demo needs about $((need_mib + 256)) MiB (set HOLO_DEMO_TMPDIR)"

say "compiling tests/c/fill_verify.c"
cc -O2 -g -Wall -pthread -o "$TMP/fill_verify" tests/c/fill_verify.c

# --- daemon -----------------------------------------------------------------------------
# Embedded defaults except three flags. Under systemd, holo-pager uses the service paths
# (socket /run/holo/pager.sock in RuntimeDirectory=holo, tier slab in StateDirectory=holo,
# /var/lib/holo; see systemd/holo-pager.service). The demo points socket and state into its
# own temp dir so that it never collides with a holo-pager service running on this machine.
mkdir -m 0700 "$STATE"
say "starting holo-pager: DRAM budget $BUDGET, socket $SOCK"
"$BIN/holo-pager" --dram-budget "$BUDGET" --socket "$SOCK" --state-dir "$STATE" \
    >"$LOG" 2>&1 </dev/null &
DAEMON_PID=$!

for ((i = 0; i < 300; i++)); do # up to 30 s
    [[ -S $SOCK ]] && break
    kill -0 "$DAEMON_PID" 2>/dev/null || {
        wait "$DAEMON_PID" && st=0 || st=$?
        DAEMON_PID=
        die "holo-pager exited (status $st) before creating its socket"
    }
    sleep 0.1
done
[[ -S $SOCK ]] || die "holo-pager (pid $DAEMON_PID) did not create $SOCK within 30 s"
say "holo-pager is up (pid $DAEMON_PID)"

# --- the program ------------------------------------------------------------------------
say "running fill_verify $SIZE $PASSES under libholo.so" \
    "(working set $((size_bytes / budget_bytes))x the DRAM budget)"
start=$SECONDS
rc=0
LD_PRELOAD="$BIN/libholo.so" HOLO_SOCKET="$SOCK" "$TMP/fill_verify" "$SIZE" "$PASSES" || rc=$?
say "fill_verify exited with status $rc after $((SECONDS - start)) s"

if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
    say "warning: holo-pager is no longer running"
    show_log
fi

say "holoctl tiers"
"$BIN/holoctl" --socket "$SOCK" tiers || say "warning: holoctl failed (exit status $?)"

if ((rc == 0)); then say "demo passed"; else say "demo FAILED"; fi
exit "$rc"
