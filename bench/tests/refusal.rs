//! The benchmarks that need root refuse without it before they build or start anything.

use std::process::Command;

/// `holo-bench ARGS` as a user other than root: run as is when the test is not root, else
/// through `setpriv` as nobody. `CC=/bin/false`: a benchmark that compiled its C programs
/// before checking would fail on that instead.
fn holo_bench_unprivileged(args: &[&str]) -> std::process::Output {
    let bench = env!("CARGO_BIN_EXE_holo-bench");
    // SAFETY: geteuid has no preconditions.
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", bench]);
        c
    } else {
        Command::new(bench)
    };
    cmd.args(args).env("CC", "/bin/false");
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

#[test]
fn root_is_checked_before_anything_is_compiled() {
    for (bench, needs) in [
        ("swap", "cgroups, swapon, zram"),
        ("overhead", "cgroups, swapon, zram"),
        ("pressure", "cgroups, swapon"),
        ("remote", "network namespaces"),
        ("shared", "network namespaces"),
    ] {
        let out = holo_bench_unprivileged(&[bench]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "holo-bench {bench}: {stderr}");
        assert!(stderr.contains(&format!("refusing to run: needs root ({needs}")), "holo-bench {bench}: {stderr}");
    }
}
