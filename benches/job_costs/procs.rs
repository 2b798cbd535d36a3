//! CPU time and memory of processes, read from `/proc`.

/// User plus system CPU seconds `pid` has used (its waited-for children excluded).
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name is in parentheses and may hold spaces: fields are counted after it.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name and state.
    (ticks(11) + ticks(12)) / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(read_clock_ticks)
}

fn read_clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// `VmRSS` of `pid`, in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    i32::try_from(pid)
        .ok()
        .and_then(|pid| crate::support::status_kib(pid, "VmRSS"))
        .unwrap_or(0)
}

/// CPU seconds of several processes together.
pub fn total_cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter().map(|pid| cpu_seconds(*pid)).sum()
}
