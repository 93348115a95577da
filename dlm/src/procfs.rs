//! What the lock manager reads from Linux's /proc: a process's CPU time (the
//! benchmark, the tests) and the system's runnable tasks and this process's usable
//! CPUs (whether polling before sleeping pays, `proto/poll_window.rs`).

use std::sync::OnceLock;
use std::time::Duration;

/// CPU time (user + system) that process `pid` ("self" for this one) has used;
/// `None` if /proc does not say.
pub fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    // utime and stime: fields 14 and 15 of proc(5), the 12th and 13th here, in
    // clock ticks of USER_HZ (100 per second on Linux).
    Some(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

/// How many tasks the system has ready to run, the caller included (the fourth
/// field of /proc/loadavg, "running/total"); 0 where the kernel does not say.
pub fn runnable_tasks() -> usize {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let field = text.split_ascii_whitespace().nth(3).unwrap_or_default();
    field.split('/').next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// CPUs this process may run on (affinity and cgroup quota), read once per
/// process: the standard library reads cgroup files to answer.
pub fn usable_cpus() -> usize {
    static CPUS: OnceLock<usize> = OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let before = cpu_time("self").expect("/proc/self/stat");
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(0u64);
        }
        assert!(cpu_time("self").unwrap() >= before);
        assert!(cpu_time("no-such-process").is_none());
        assert!(runnable_tasks() >= 1, "this test is running");
        assert!(usable_cpus() >= 1);
    }
}
