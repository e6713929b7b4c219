//! CPU time and resident memory of server processes, from /proc.

/// User + system CPU seconds of `pids` together; `None` without pids or
/// when one cannot be read (a process gone, not Linux).
pub fn cpu_secs(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    let ticks = clock_ticks();
    let mut total = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        total += parse_cpu_ticks(&stat)?;
    }
    Some(total as f64 / ticks)
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line. The command
/// name (field 2) may hold spaces: fields are counted after its ')'.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': field 3 (state) is f[0], so field n is f[n - 3].
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Ticks all CPUs spent busy and in total since boot, from the first line
/// of /proc/stat (`cpu user nice system idle iowait irq softirq steal ...`;
/// idle and iowait are not busy; guest time is already in user).
pub fn machine_ticks() -> Option<(u64, u64)> {
    parse_machine_ticks(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    if f.len() < 5 {
        return None;
    }
    let total: u64 = f.iter().sum();
    Some((total - f[3] - f[4], total))
}

/// The share of the machine's CPU time that was busy between two
/// [`machine_ticks`] readings, in percent.
pub fn busy_percent(before: (u64, u64), after: (u64, u64)) -> Option<f64> {
    let total = after.1.checked_sub(before.1).filter(|t| *t > 0)?;
    let busy = after.0.checked_sub(before.0)?;
    Some(busy as f64 * 100.0 / total as f64)
}

fn clock_ticks() -> f64 {
    // Linux has reported 100 ticks per second to user space for decades
    // (USER_HZ); /proc counts in it.
    100.0
}

/// Summed resident set size of `pids`, in MiB.
pub fn rss_mib(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    let mut kib = 0u64;
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        kib += status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()?;
    }
    Some(kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_fields_14_and_15_even_with_spaces_in_the_name() {
        let line =
            "4242 (ravel node) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 123 0 0";
        assert_eq!(parse_cpu_ticks(line), Some(300));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn machine_busy_time_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 10 50 800 40 0 0 0 0 0\ncpu0 50 5 25 400 20 0 0 0 0 0\n";
        assert_eq!(parse_machine_ticks(stat), Some((160, 1000)));
        assert_eq!(parse_machine_ticks("intr 1 2"), None);
        assert_eq!(busy_percent((160, 1000), (310, 1200)), Some(75.0));
        assert_eq!(busy_percent((160, 1000), (160, 1000)), None);
        assert!(machine_ticks().is_some_and(|(b, t)| b <= t && t > 0));
    }

    #[test]
    fn this_process_has_a_cpu_time_and_an_rss() {
        let me = std::process::id();
        assert!(cpu_secs(&[me]).is_some());
        assert!(rss_mib(&[me]).unwrap() > 0.0);
        assert_eq!(cpu_secs(&[]), None);
    }
}
