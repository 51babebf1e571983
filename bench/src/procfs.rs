//! What `/proc` tells about a process or the machine: resident memory, CPU time, open files,
//! the open-files limit, and the kernel's TCP memory.

use std::sync::OnceLock;

/// Resident memory (`VmRSS`) of `pid` in bytes; 0 once the process is gone.
pub fn rss_bytes(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:").map_or(0, |kb| kb * 1024)
}

/// Peak resident memory (`VmHWM`) of `pid` in bytes; 0 once the process is gone.
pub fn peak_rss_bytes(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:").map_or(0, |kb| kb * 1024)
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
}

/// User + system CPU seconds `pid` has used (its threads included, children not); 0 once gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / clock_ticks() as f64
}

/// Kernel clock ticks per second (`getconf CLK_TCK`, 100 if that fails).
pub fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100)
    })
}

/// Open file descriptors of `pid`; 0 if unreadable.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// (soft, hard) limit on open files of `pid` (`self` for this process), from `/proc/<pid>/limits`.
pub fn open_files_limit(pid: &str) -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut nums = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .map(|v| v.parse::<u64>().unwrap_or(u64::MAX));
    Some((nums.next()?, nums.next()?))
}

/// Pages of memory the kernel's TCP stack holds (the `mem` of `TCP:` in `/proc/net/sockstat`).
pub fn tcp_mem_pages() -> u64 {
    sockstat_field("TCP:", "mem")
}

/// Sockets in TIME_WAIT (`tw` of `TCP:` in `/proc/net/sockstat`).
pub fn tcp_time_wait() -> u64 {
    sockstat_field("TCP:", "tw")
}

fn sockstat_field(line: &str, key: &str) -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/net/sockstat") else {
        return 0;
    };
    let Some(l) = text.lines().find(|l| l.starts_with(line)) else {
        return 0;
    };
    let words: Vec<&str> = l.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == key)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(0)
}

/// A counter of the kernel's `TcpExt` statistics (`/proc/net/netstat`), e.g. `ListenOverflows`
/// (a connection completed its handshake but the listener's accept queue was full, so the
/// client must retransmit) or `ListenDrops`. Machine-wide: other processes count too.
pub fn tcp_ext(field: &str) -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/net/netstat") else {
        return 0;
    };
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == field)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// The machine's online CPUs as a `taskset` list (`0-1`), from sysfs. Not
/// `available_parallelism`: that follows this process's own affinity, which is one CPU while
/// a pinned scenario runs, and "every CPU" computed then was CPU 0 alone (every scenario
/// after the first pinned one ran servers and clients on one core; docs/benchmarks.md).
pub fn online_cpus() -> String {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| cpu_count(s) > 0)
        .unwrap_or_else(|| {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            format!("0-{}", n - 1)
        })
}

/// How many CPUs a list such as `0-3,6` names (5); 0 if it does not parse.
pub fn cpu_count(list: &str) -> usize {
    list.split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => match (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 0,
            },
            None => usize::from(part.trim().parse::<usize>().is_ok()),
        })
        .sum()
}

/// Machine facts for the report: (nproc, total RAM in bytes, kernel release, CPU model).
pub fn machine() -> (usize, u64, String, String) {
    let nproc = cpu_count(&online_cpus());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let ram = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|r| r.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_default();
    (nproc, ram, kernel, model)
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_visible() {
        let pid = std::process::id();
        assert!(rss_bytes(pid) > 0);
        assert!(cpu_seconds(pid) >= 0.0);
        assert!(open_fds(pid) > 0);
        assert!(open_files_limit("self").is_some());
    }

    #[test]
    fn cpu_lists_are_counted() {
        assert_eq!(cpu_count("0-1"), 2);
        assert_eq!(cpu_count("0"), 1);
        assert_eq!(cpu_count("0-3,6,8-9"), 7);
        assert_eq!(cpu_count(""), 0);
        assert_eq!(cpu_count("x"), 0);
        assert!(cpu_count(&online_cpus()) >= 1);
    }
}
