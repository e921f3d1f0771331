//! The parsers of /proc and cgroup text the pressure controller reads. Clients choose their
//! cgroup names (delegated cgroups), which land in /proc/PID/cgroup and mountinfo: any text
//! must parse to something or nothing, never panic (cgroup v2 `memory.max` too). Their thread
//! names land in /proc/PID/task/TID/stat, whose CPU field NUMA placement reads (and the
//! journal the start time in /proc/PID/stat, through the same field parser).
#![no_main]

use holo_pager::numa::parse_stat_cpu;
use holo_pager::procstat;
use holo_pager::pressure::{parse_mountinfo, parse_proc_cgroup, parse_psi, parse_v2_max};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(p) = parse_psi(&text) {
        assert!(text.contains("some"));
        let _ = p.some_avg10 + p.full_avg10;
    }
    let cg = parse_proc_cgroup(&text);
    for path in [cg.v1_memory, cg.v2].into_iter().flatten() {
        assert!(text.contains(path.as_str()));
    }
    let _ = parse_mountinfo(&text);
    let _ = parse_v2_max(&text);
    if let Some(cpu) = parse_stat_cpu(&text) {
        assert!(text.contains(&cpu.to_string()));
    }
    if let Some(start) = procstat::field(&text, 22) {
        assert!(!start.is_empty() && text.contains(start));
    }
});
