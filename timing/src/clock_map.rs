use std::collections::VecDeque;

/// How many recent round trips are kept. With one ping every 250 ms this
/// spans two seconds: short enough that a 1000 ppm rate difference moves the
/// offset by at most 2 ms within the window, long enough to find a round trip
/// that was not delayed by scheduling.
const WINDOW: usize = 8;

#[derive(Debug, Clone, Copy)]
struct Sample {
    rtt: u64,
    /// host clock minus guest clock at the sample.
    offset: i128,
}

/// Maps the host's monotonic clock onto the guest's from ping/pong round
/// trips. The round trip with the smallest delay in a recent window gives the
/// best offset estimate (the NTP rule), assuming symmetric paths.
#[derive(Debug, Default, Clone)]
pub struct ClockMapper {
    samples: VecDeque<Sample>,
}

impl ClockMapper {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a round trip: a ping sent at `guest_sent`, answered with the
    /// host time `host_time`, received at `guest_received` (guest clock).
    /// Answers that arrive before they were sent are ignored.
    pub fn on_pong(&mut self, guest_sent: u64, host_time: u64, guest_received: u64) {
        let Some(rtt) = guest_received.checked_sub(guest_sent) else {
            return;
        };
        let midpoint = i128::from(guest_sent) + i128::from(rtt / 2);
        if self.samples.len() == WINDOW {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            rtt,
            offset: i128::from(host_time) - midpoint,
        });
    }

    fn best(&self) -> Option<Sample> {
        self.samples.iter().copied().min_by_key(|s| s.rtt)
    }

    /// The smallest round trip in the window, in microseconds.
    pub fn rtt(&self) -> Option<u64> {
        self.best().map(|s| s.rtt)
    }

    /// Host time minus guest time, if any round trip has been seen.
    pub fn offset(&self) -> Option<i128> {
        self.best().map(|s| s.offset)
    }

    /// The guest time at which the host clock read `host_time`.
    pub fn host_to_guest(&self, host_time: u64) -> Option<u64> {
        let guest = i128::from(host_time) - self.offset()?;
        u64::try_from(guest.max(0)).ok()
    }

    /// Forgets everything (a new connection has a new host epoch).
    pub fn reset(&mut self) {
        self.samples.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_with_an_offset_between_epochs() {
        let mut map = ClockMapper::new();
        // host clock = guest clock + 5 s; 2 ms each way.
        map.on_pong(1_000_000, 6_002_000, 1_004_000);
        assert_eq!(map.offset(), Some(5_000_000));
        assert_eq!(map.host_to_guest(7_000_000), Some(2_000_000));
        assert_eq!(map.rtt(), Some(4_000));
    }

    #[test]
    fn negative_offset_and_best_round_trip_wins() {
        let mut map = ClockMapper::new();
        // host clock = guest clock - 1 s; a delayed answer then a prompt one.
        map.on_pong(10_000_000, 9_030_000, 10_050_000); // asymmetric, slow
        map.on_pong(11_000_000, 10_000_500, 11_001_000); // fast
        assert_eq!(map.rtt(), Some(1_000));
        assert_eq!(map.offset(), Some(-1_000_000));
        assert_eq!(map.host_to_guest(10_500_000), Some(11_500_000));
    }

    #[test]
    fn ignores_time_travel_and_forgets_old_samples() {
        let mut map = ClockMapper::new();
        map.on_pong(5, 100, 4);
        assert_eq!(map.offset(), None);
        map.on_pong(0, 1_000, 0); // rtt 0, offset 1000
        for i in 1..=WINDOW as u64 {
            map.on_pong(i * 1000, i * 1000 + 2_000 + 50, i * 1000 + 100);
        }
        // the rtt-0 sample fell out of the window
        assert_eq!(map.rtt(), Some(100));
        assert_eq!(map.offset(), Some(2_000));
    }
}
