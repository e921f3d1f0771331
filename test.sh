#!/usr/bin/env bash
# test.sh — every holo test: unit, conformance and end-to-end (real daemon, real programs).
#
# Installs the Debian packages the tests need if any is missing, builds the whole workspace
# in release mode (the end-to-end tests run the binaries in target/release), checks the
# systemd unit, then runs `cargo test`. Any failure stops the script with a non-zero status.
# Runnable from any directory; meant for a Debian 12 machine, as root (CI: `.ci/run`).
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"

say() { printf '==> %s\n' "$*"; }
die() { printf 'test.sh: error: %s\n' "$*" >&2; exit 1; }
trap 'printf "test.sh: FAILED (exit status %d, line %d)\n" "$?" "$LINENO" >&2' ERR

TMP=$(mktemp -d "${TMPDIR:-/tmp}/holo-test.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# --- Debian packages ------------------------------------------------------------------
# build-essential: cc for the C test programs; pkg-config: build scripts; libhwloc-dev: the
# system libhwloc the daemon's NUMA topology comes from (hwlocality finds it with pkg-config
# and also links its private dependency libudev, hence libudev-dev); memtester: run under the
# shim by an e2e test; util-linux, procps: everyday tools the e2e tests call; iproute2:
# `ip netns` and veth links for the cluster test's three-node LAN; fonts-dejavu-core: the text
# of holo-bench's PNG plots (its unit tests draw some).
PACKAGES=(build-essential pkg-config libhwloc-dev libudev-dev memtester util-linux procps iproute2
    fonts-dejavu-core)

pkg_installed() {
    # Not `dpkg -s | grep -q`: with pipefail, grep quitting early can SIGPIPE dpkg.
    [[ $(dpkg -s "$1" 2>/dev/null) == *"Status: install ok installed"* ]]
}

ensure_packages() {
    local p missing=()
    for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
    ((${#missing[@]} == 0)) && return 0
    say "installing missing Debian packages: ${missing[*]}"
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null 2>&1 || die "not root and no sudo: cannot install ${missing[*]}"
        sudo=(sudo -n)
    fi
    local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -qq -o DPkg::Lock::Timeout=300)
    if ! { "${apt[@]}" update && "${apt[@]}" install -y --no-install-recommends "${missing[@]}"; } \
        >"$TMP/apt.log" 2>&1 </dev/null; then
        cat "$TMP/apt.log" >&2
        die "apt-get failed to install: ${missing[*]}"
    fi
    for p in "${missing[@]}"; do pkg_installed "$p" || die "package $p still not installed"; done
}

ensure_packages "${PACKAGES[@]}"

# --- Rust toolchain (rustup puts it in ~/.cargo/bin, not on PATH in non-login shells) ---
if ! command -v cargo >/dev/null 2>&1; then
    export PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust with rustup)"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

say "building: cargo build --release --workspace"
cargo build --release --workspace

# --- systemd unit -----------------------------------------------------------------------
# `systemd-analyze verify` works offline (no systemd as PID 1 needed) on most machines. If the
# tool is missing or cannot run here at all (probed with a trivial unit), skip; if it runs,
# any complaint about holo-pager.service fails the suite. The unit is checked as a copy whose
# ExecStart points at the binary just built, since /usr/local/bin/holo-pager is only there
# once installed (verify rejects a unit whose command does not exist).
verify_unit() {
    local unit=systemd/holo-pager.service
    [[ -f $unit ]] || die "$unit is missing"
    if ! command -v systemd-analyze >/dev/null 2>&1; then
        say "skipping systemd unit check: systemd-analyze not installed"
        return 0
    fi
    local d="$TMP/units"
    mkdir -p "$d"
    printf '[Unit]\nDescription=probe\n[Service]\nType=oneshot\nExecStart=/bin/true\n' \
        >"$d/holo-probe.service"
    local out
    if ! out=$(systemd-analyze verify "$d/holo-probe.service" 2>&1); then
        say "skipping systemd unit check: systemd-analyze cannot run here:"
        printf '    %s\n' "$out"
        return 0
    fi
    sed "s|^ExecStart=/usr/local/bin/holo-pager|ExecStart=$PWD/target/release/holo-pager|" \
        "$unit" >"$d/holo-pager.service"
    local rc=0
    out=$(systemd-analyze verify "$d/holo-pager.service" 2>&1) || rc=$?
    # Only lines about our unit count: verify may also grumble about unrelated system units.
    local ours
    ours=$(grep -F 'holo-pager' <<<"$out" || true)
    if ((rc != 0)) || [[ -n $ours ]]; then
        printf '%s\n' "$out" >&2
        die "systemd-analyze verify $unit failed (exit $rc)"
    fi
    say "systemd-analyze verify $unit: ok"
}
verify_unit

# --- tests ------------------------------------------------------------------------------
say "testing: cargo test --release --workspace -- --test-threads=2"
cargo test --release --workspace -- --test-threads=2 2>&1 | tee "$TMP/test.log"

say "summary"
grep -E '^ +(Running|Doc-tests) |^test result:' "$TMP/test.log" || true
say "all tests passed"
