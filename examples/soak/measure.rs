//! What the soak measures about its own process (RSS, open file descriptors,
//! the fd limit), and the small random numbers it needs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Resident memory of this process, in bytes (`VmRSS` of /proc/self/status).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    kib * 1024
}

/// Open file descriptors of this process (entries of /proc/self/fd, without
/// the one the listing itself holds).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|dir| dir.count().saturating_sub(1))
        .unwrap_or(0)
}

/// The fd limit before and after raising the soft limit to the hard one.
pub struct FdLimit {
    pub was: u64,
    pub now: u64,
}

/// Raises RLIMIT_NOFILE's soft limit to its hard limit.
pub fn raise_fd_limit() -> FdLimit {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write one rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return FdLimit { was: 0, now: 0 };
        }
        let was = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return FdLimit { was, now: was };
        }
        FdLimit {
            was,
            now: lim.rlim_cur,
        }
    }
}

pub const MIB: f64 = 1024.0 * 1024.0;

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB)
}

/// xorshift64: enough to spread the peers' delays.
pub struct Random(u64);

impl Random {
    pub fn new() -> Random {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Random(nanos | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A duration between zero and `max`, in whole microseconds.
    pub fn below(&mut self, max: Duration) -> Duration {
        let us = max.as_micros() as u64;
        Duration::from_micros(self.next() % (us + 1))
    }
}
