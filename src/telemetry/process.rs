//! Process figures from `/proc/self` (Linux). Elsewhere `sample` returns None
//! and the process_* metrics are simply absent.

pub struct ProcessSample {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub start_time_seconds: f64,
}

#[cfg(target_os = "linux")]
pub fn sample() -> Option<ProcessSample> {
    // sysconf values for Linux on every architecture collabd targets.
    const CLOCK_TICKS: f64 = 100.0;
    let page_size = 4096u64;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let rss_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which may contain spaces, closed by ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let start_ticks: f64 = fields.get(19)?.parse().ok()?;
    let boot_time: f64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()?
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(0);
    Some(ProcessSample {
        rss_bytes: rss_pages * page_size,
        cpu_seconds: (utime + stime) / CLOCK_TICKS,
        open_fds,
        max_fds,
        start_time_seconds: boot_time + start_ticks / CLOCK_TICKS,
    })
}

#[cfg(not(target_os = "linux"))]
pub fn sample() -> Option<ProcessSample> {
    None
}

/// Hands pages the allocator holds free back to the system. glibc keeps
/// what a burst of sockets freed in its arenas for reuse, so without this a
/// replica's RSS stays at its peak long after the load has gone.
pub fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes the allocator's own locks; it may be called
    // from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn the_sample_is_plausible() {
        let s = super::sample().unwrap();
        assert!(s.rss_bytes > 1024 * 1024);
        assert!(s.open_fds >= 3);
        assert!(s.max_fds >= s.open_fds);
        assert!(s.start_time_seconds > 1_600_000_000.0);
    }
}
