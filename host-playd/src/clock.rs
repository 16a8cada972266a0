//! The host's monotonic clock in microseconds, and a log rate limiter.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Host monotonic time in microseconds since the daemon started. Every
/// timestamp the daemon sends (Accept, Clock, Pong) comes from one of these,
/// so they share an epoch.
#[derive(Debug, Clone, Copy)]
pub struct HostClock {
    source: Source,
}

#[derive(Debug, Clone, Copy)]
enum Source {
    Real {
        epoch: Instant,
    },
    /// A FAKE clock for deterministic tests: the time is whatever the test
    /// stored.
    Fake(&'static AtomicU64),
}

impl HostClock {
    pub fn new() -> Self {
        HostClock {
            source: Source::Real {
                epoch: Instant::now(),
            },
        }
    }

    /// The clock of another process of this daemon: the same epoch, given
    /// as a `CLOCK_MONOTONIC` reading (see [`HostClock::epoch_monotonic_usec`]),
    /// so that host times from both processes can be compared.
    pub fn from_epoch_monotonic(epoch_usec: u64) -> Self {
        let now = Instant::now();
        let since = monotonic_usec().saturating_sub(epoch_usec);
        let epoch = now.checked_sub(Duration::from_micros(since)).unwrap_or(now);
        HostClock {
            source: Source::Real { epoch },
        }
    }

    /// This clock's epoch as a `CLOCK_MONOTONIC` reading in microseconds
    /// (`Instant` is that clock on Linux); `None` for a fake clock.
    pub fn epoch_monotonic_usec(&self) -> Option<u64> {
        match self.source {
            Source::Real { .. } => Some(monotonic_usec().saturating_sub(self.now_usec())),
            Source::Fake(_) => None,
        }
    }

    /// A fake clock for deterministic tests: it reads `now_usec`, which the
    /// test advances (leak one `AtomicU64` per test).
    pub fn fake(now_usec: &'static AtomicU64) -> Self {
        HostClock {
            source: Source::Fake(now_usec),
        }
    }

    /// Microseconds since the epoch.
    pub fn now_usec(&self) -> u64 {
        match self.source {
            Source::Real { .. } => self.usec_at(Instant::now()),
            Source::Fake(now) => now.load(Ordering::SeqCst),
        }
    }

    /// Microseconds from the epoch to `at` (zero before the epoch); a fake
    /// clock answers its current time.
    pub fn usec_at(&self, at: Instant) -> u64 {
        match self.source {
            Source::Real { epoch } => {
                let usec = at.saturating_duration_since(epoch).as_micros();
                u64::try_from(usec).unwrap_or(u64::MAX)
            }
            Source::Fake(now) => now.load(Ordering::SeqCst),
        }
    }
}

impl Default for HostClock {
    fn default() -> Self {
        Self::new()
    }
}

/// Lets through at most `budget` events per `window`, and says how many it
/// held back, so a flood of peer-triggered events cannot flood the log.
#[derive(Debug)]
pub struct RateLimit {
    window: Duration,
    budget: u32,
    window_start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl RateLimit {
    pub fn new(budget: u32, window: Duration) -> Self {
        RateLimit {
            window,
            budget,
            window_start: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether an event at `now` may be logged; `Some(n)` says yes, after
    /// `n` events were suppressed since the last one let through.
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        let fresh = match self.window_start {
            None => true,
            Some(start) => now.saturating_duration_since(start) >= self.window,
        };
        if fresh {
            self.window_start = Some(now);
            self.used = 0;
        }
        if self.used < self.budget {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_counts_what_it_held_back() {
        let mut limit = RateLimit::new(2, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(limit.check(t0), Some(0));
        assert_eq!(limit.check(t0), Some(0));
        assert_eq!(limit.check(t0), None);
        assert_eq!(limit.check(t0 + Duration::from_millis(500)), None);
        assert_eq!(limit.check(t0 + Duration::from_secs(1)), Some(2));
    }

    #[test]
    fn host_clock_is_monotonic() {
        let clock = HostClock::new();
        let a = clock.now_usec();
        let b = clock.now_usec();
        assert!(b >= a);
    }
}

/// `CLOCK_MONOTONIC` in microseconds.
fn monotonic_usec() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        let usec = i128::from(t.tv_sec()) * 1_000_000 + i128::from(t.tv_nsec()) / 1_000;
        u64::try_from(usec).unwrap_or(0)
    })
}

#[cfg(test)]
mod epoch_tests {
    use super::*;

    #[test]
    fn a_clock_rebuilt_from_its_epoch_reads_the_same_time() {
        let clock = HostClock::new();
        std::thread::sleep(Duration::from_millis(20));
        let epoch = clock.epoch_monotonic_usec().unwrap_or(0);
        let other = HostClock::from_epoch_monotonic(epoch);
        let (a, b) = (clock.now_usec(), other.now_usec());
        assert!(a.abs_diff(b) < 1_000, "{a} vs {b}");
        assert!(a >= 20_000);
    }
}
