//! Clocks and `/proc` readings shared by the orchestrator and the workers.
//!
//! CPU time comes from `/proc/PID/stat` (`utime` + `stime`), counted in clock ticks. The tick
//! is `sysconf(_SC_CLK_TCK)`, which is 100 on every Linux that matters (the kernel's `USER_HZ`
//! exported to user space is fixed at 100); this module assumes 100 rather than calling libc,
//! so a CPU reading has a resolution of 10 ms.

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Clock ticks per second in `/proc/PID/stat` (`USER_HZ`, assumed: see the module docs).
pub const CLOCK_TICKS_PER_SEC: u64 = 100;

/// Nanoseconds since the Unix epoch: comparable across the processes of one machine.
pub fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Seconds between two [`unix_ns`] readings (negative if `to` is earlier).
pub fn secs_between(from_ns: u64, to_ns: u64) -> f64 {
    (to_ns as f64 - from_ns as f64) / 1e9
}

/// User plus system CPU time used so far by process `pid` (`"self"` for this one), all threads
/// included.
pub fn cpu_time(pid: &str) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let rest = stat
        .rfind(')')
        .map(|at| &stat[at + 1..])
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no ')' in /proc stat"))?;
    // After the name: state (field 3), ... utime is field 14, stime field 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|value| value.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short /proc stat"))
    };
    let ticks = field(14)? + field(15)?;
    Ok(Duration::from_nanos(ticks * (1_000_000_000 / CLOCK_TICKS_PER_SEC)))
}

/// A `kB` field of `/proc/PID/status` such as `VmRSS` or `VmHWM`, in KiB.
pub fn status_kib(pid: &str, field: &str) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| {
            let value = line.strip_prefix(field)?.strip_prefix(':')?;
            value.split_whitespace().next()?.parse().ok()
        })
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no {field} in status")))
}

/// The current UTC time as `YYYYMMDDTHHMMSSZ`, for naming a results folder.
pub fn utc_stamp() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!("{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Year, month and day of a count of days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn reads_own_process() {
        assert!(cpu_time("self").is_ok());
        assert!(status_kib("self", "VmRSS").unwrap() > 0);
        assert!(status_kib("self", "VmHWM").unwrap() > 0);
    }
}
