//! CPU time and peak memory of a process, read from Linux's `/proc`.
//!
//! Owns the parsing of `/proc/PID/stat` (user and system CPU time, all threads, in
//! clock ticks), of `VmHWM` in `/proc/PID/status` (peak resident set size) and of
//! `/proc/PID/task/TID/schedstat` (time a thread was runnable but waited for a CPU,
//! which tells a server slowed by other work on the machine from a slow server). The
//! parsers are pure; [`sample`] and [`sample_with_wait`] are the thin readers. Elsewhere than Linux
//! every read fails, and the summary goes without server figures.

use std::io;
use std::time::Duration;

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSample {
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Peak resident set size in KiB, when the kernel reports it.
    pub peak_rss_kib: Option<u64>,
    /// Time the live threads spent runnable, waiting for a CPU; read only by
    /// [`sample_with_wait`].
    pub run_queue_wait: Option<Duration>,
}

/// Reads `/proc/PID/stat` and `/proc/PID/status`.
pub fn sample(pid: u32) -> io::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let cpu_ticks = parse_cpu_ticks(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable stat line"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(ProcSample {
        cpu_ticks,
        peak_rss_kib: parse_vm_hwm_kib(&status),
        run_queue_wait: None,
    })
}

/// Like [`sample`], with the run-queue wait summed over the process's threads (a
/// thread that has exited takes its share with it). Costs one read per thread.
pub fn sample_with_wait(pid: u32) -> io::Result<ProcSample> {
    let mut sample = sample(pid)?;
    let mut wait_ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        // A thread may end between listing and reading.
        if let Ok(text) = std::fs::read_to_string(path) {
            wait_ns += parse_schedstat_wait_ns(&text).unwrap_or(0);
        }
    }
    sample.run_queue_wait = Some(Duration::from_nanos(wait_ns));
    Ok(sample)
}

/// The second field of a schedstat line: nanoseconds spent waiting on a run queue.
pub fn parse_schedstat_wait_ns(schedstat: &str) -> Option<u64> {
    schedstat.split_whitespace().nth(1)?.parse().ok()
}

/// Clock ticks per second (`getconf CLK_TCK`); 100, the Linux value, if that fails.
pub fn ticks_per_second() -> u64 {
    let output = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output();
    let parsed = output
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok());
    parsed.filter(|ticks| *ticks > 0).unwrap_or(100)
}

/// CPU time between two readings.
pub fn cpu_between(start: ProcSample, end: ProcSample, ticks_per_second: u64) -> Duration {
    let ticks = end.cpu_ticks.saturating_sub(start.cpu_ticks);
    Duration::from_secs_f64(ticks as f64 / ticks_per_second.max(1) as f64)
}

/// `utime + stime` of a stat line. The command name sits in parentheses and may hold
/// spaces and parentheses itself, so fields are counted after its last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3, utime field 14, stime field 15.
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The `VmHWM:` line of a status file, in KiB.
pub fn parse_vm_hwm_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (relais (w) x) S 1 4242 4242 0 -1 4194560 5120 0 0 0 \
                        731 129 0 0 20 0 9 0 12345 987654321 4321 18446744073709551615";

    #[test]
    fn cpu_ticks_are_counted_after_the_name() {
        assert_eq!(parse_cpu_ticks(STAT), Some(731 + 129));
        assert_eq!(parse_cpu_ticks("1 (x) S 1 2"), None);
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn peak_rss_comes_from_vm_hwm() {
        let status = "Name:\trelais\nVmPeak:\t  900000 kB\nVmHWM:\t   51234 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(parse_vm_hwm_kib(status), Some(51_234));
        assert_eq!(parse_vm_hwm_kib("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn cpu_time_between_readings() {
        let at = |cpu_ticks| ProcSample {
            cpu_ticks,
            peak_rss_kib: None,
            run_queue_wait: None,
        };
        let spent = cpu_between(at(100), at(350), 100);
        assert_eq!(spent, Duration::from_millis(2500));
        assert_eq!(cpu_between(at(5), at(1), 100), Duration::ZERO);
    }

    #[test]
    fn this_process_can_be_read() {
        if cfg!(target_os = "linux") {
            let me = sample(std::process::id()).expect("own /proc entry");
            assert!(me.peak_rss_kib.is_some_and(|kib| kib > 0));
            let me = sample_with_wait(std::process::id()).expect("own /proc entry");
            assert!(me.run_queue_wait.is_some());
        }
    }

    #[test]
    fn run_queue_wait_is_the_second_schedstat_field() {
        assert_eq!(parse_schedstat_wait_ns("1234 5678 9\n"), Some(5678));
        assert_eq!(parse_schedstat_wait_ns("1234"), None);
    }
}
