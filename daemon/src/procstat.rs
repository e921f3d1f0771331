//! `/proc/PID/stat` and `/proc/PID/task/TID/stat`, which the journal (a client's start time)
//! and NUMA placement (the CPU a thread last ran on) read. Field 2, the command name, is
//! chosen by the process and may hold spaces and parentheses (`prctl(PR_SET_NAME)`), so the
//! fields after it are counted from the last `)`.

/// Field `n` of a stat line, numbered from 1 as proc(5) numbers them; only the fields after
/// the command name (3 and up) can be told apart. `None` if the line is too short.
pub fn field(stat: &str, n: usize) -> Option<&str> {
    assert!(n >= 3, "field {n} is not after the command name");
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(n - 3)
}
