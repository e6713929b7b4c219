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
    fn this_process_has_a_cpu_time_and_an_rss() {
        let me = std::process::id();
        assert!(cpu_secs(&[me]).is_some());
        assert!(rss_mib(&[me]).unwrap() > 0.0);
        assert_eq!(cpu_secs(&[]), None);
    }
}
