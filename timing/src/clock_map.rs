use std::collections::VecDeque;

/// How many recent round trips are kept: with one ping every 250 ms, sixteen
/// seconds, long enough to measure a rate difference between the clocks.
const WINDOW: usize = 64;
/// The window is cut into segments of this many trips; the fastest trip of
/// each segment (the least delayed, the NTP rule) is one point of the fit.
const SEGMENT: usize = 4;
/// A fitted rate difference beyond this is not a clock, it is a bug or an
/// attack: fall back to the plain offset.
const MAX_SKEW: f64 = 0.005;
/// The fit needs samples spread over at least this much guest time.
const MIN_FIT_SPAN_USEC: i128 = 1_000_000;
/// A fit point whose round trip exceeds the median of the points' round
/// trips by more than this factor (plus [`RTT_OUTLIER_SLACK_USEC`]) is left
/// out: a trip delayed on one side (a stalled or loaded host reads the ping
/// late) is off by up to half its extra delay, and one such point at the end
/// of the window bent the whole line for the window's 16 s (issue 14: +56 ms
/// after a host underrun, decaying by ~3.7 ms/s).
const RTT_OUTLIER_FACTOR: u64 = 2;
/// See [`RTT_OUTLIER_FACTOR`]: ordinary jitter on a quiet link stays below.
const RTT_OUTLIER_SLACK_USEC: u64 = 2_000;

#[derive(Debug, Clone, Copy)]
struct Sample {
    rtt: u64,
    /// Guest time half-way through the round trip.
    guest_mid: i128,
    /// Host clock minus guest clock at `guest_mid`.
    offset: i128,
}

/// Maps the host's monotonic clock onto the guest's from ping/pong round
/// trips. The clocks share no epoch and need not tick at the same rate.
///
/// Each round trip gives one measurement of (host − guest) at the midpoint
/// of the trip, exact if the two directions took equally long. The mapper
/// keeps the least delayed trip of every two seconds (the NTP rule) and fits
/// a line through their offsets against guest time: its intercept is the
/// offset, its slope the rate difference. With fewer than three such points,
/// or all within a second, it uses the fastest trip's offset alone.
#[derive(Debug, Default, Clone)]
pub struct ClockMapper {
    samples: VecDeque<Sample>,
}

/// offset(g) = offset + skew * (g - at)
#[derive(Debug, Clone, Copy, PartialEq)]
struct Line {
    at: i128,
    offset: f64,
    skew: f64,
}

impl Line {
    fn offset_at(&self, guest: i128) -> f64 {
        self.offset + self.skew * (guest - self.at) as f64
    }
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
        let guest_mid = i128::from(guest_sent) + i128::from(rtt / 2);
        if self.samples.len() == WINDOW {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            rtt,
            guest_mid,
            offset: i128::from(host_time) - guest_mid,
        });
    }

    fn best(&self) -> Option<Sample> {
        self.samples.iter().copied().min_by_key(|s| s.rtt)
    }

    fn line(&self) -> Option<Line> {
        let best = self.best()?;
        let plain = Line {
            at: best.guest_mid,
            offset: best.offset as f64,
            skew: 0.0,
        };
        // The fastest trip of each segment, oldest first.
        let samples: Vec<Sample> = self.samples.iter().copied().collect();
        let good: Vec<Sample> = samples
            .chunks(SEGMENT)
            .filter_map(|seg| seg.iter().copied().min_by_key(|s| s.rtt))
            .collect();
        let good = without_delayed_trips(good);
        let (first, last) = (good.first()?, good.last()?);
        if good.len() < 3 || last.guest_mid - first.guest_mid < MIN_FIT_SPAN_USEC {
            return Some(plain);
        }
        // Least squares on centred values (f64 keeps full precision for
        // differences of hours in microseconds).
        let n = good.len() as f64;
        let at = last.guest_mid;
        let xs: Vec<f64> = good.iter().map(|s| (s.guest_mid - at) as f64).collect();
        let base = best.offset;
        let ys: Vec<f64> = good.iter().map(|s| (s.offset - base) as f64).collect();
        let mx = xs.iter().sum::<f64>() / n;
        let my = ys.iter().sum::<f64>() / n;
        let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
        let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
        if sxx <= 0.0 {
            return Some(plain);
        }
        let skew = sxy / sxx;
        if !skew.is_finite() || skew.abs() > MAX_SKEW {
            return Some(plain);
        }
        Some(Line {
            at,
            offset: base as f64 + my - skew * mx,
            skew,
        })
    }

    /// The smallest round trip in the window, in microseconds.
    pub fn rtt(&self) -> Option<u64> {
        self.best().map(|s| s.rtt)
    }

    /// Host time minus guest time at the latest round trip, if any.
    pub fn offset(&self) -> Option<i128> {
        let line = self.line()?;
        Some(line.offset.round() as i128)
    }

    /// Host clock rate relative to the guest's, minus one (e.g. 0.001 when
    /// the host clock runs 1000 ppm fast); zero until it can be measured.
    pub fn skew(&self) -> f64 {
        self.line().map_or(0.0, |l| l.skew)
    }

    /// The guest time at which the host clock read `host_time`.
    pub fn host_to_guest(&self, host_time: u64) -> Option<u64> {
        let line = self.line()?;
        let host = i128::from(host_time);
        // guest = host - offset(guest): two fixed-point steps suffice for
        // any plausible skew (the error shrinks by the skew each step).
        let mut guest = host - line.offset.round() as i128;
        for _ in 0..2 {
            guest = host - line.offset_at(guest).round() as i128;
        }
        u64::try_from(guest.max(0)).ok()
    }

    /// Forgets everything (a new connection has a new host epoch).
    pub fn reset(&mut self) {
        self.samples.clear();
    }
}

/// `points` less those whose round trip is far above the median one (see
/// [`RTT_OUTLIER_FACTOR`]); the order is kept.
fn without_delayed_trips(points: Vec<Sample>) -> Vec<Sample> {
    let mut rtts: Vec<u64> = points.iter().map(|s| s.rtt).collect();
    rtts.sort_unstable();
    let Some(&median) = rtts.get(rtts.len() / 2) else {
        return points;
    };
    let limit = median
        .saturating_mul(RTT_OUTLIER_FACTOR)
        .saturating_add(RTT_OUTLIER_SLACK_USEC);
    points.into_iter().filter(|s| s.rtt <= limit).collect()
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

    #[test]
    fn measures_a_rate_difference_and_maps_through_it() {
        let mut map = ClockMapper::new();
        // host = 1.001 * guest + 3 s, symmetric 1 ms trips every 250 ms.
        let host_at = |g: u64| 3_000_000 + g + g / 1000;
        for i in 0..40u64 {
            let sent = 100_000_000 + i * 250_000;
            map.on_pong(sent, host_at(sent + 500), sent + 1_000);
        }
        assert!((map.skew() - 0.001).abs() < 1e-6, "skew {}", map.skew());
        // 2 s after the last trip the mapping is still exact to a few usec.
        let guest = 100_000_000 + 40 * 250_000 + 2_000_000;
        let mapped = map.host_to_guest(host_at(guest)).unwrap();
        assert!(mapped.abs_diff(guest) <= 3, "{mapped} vs {guest}");
    }

    #[test]
    fn a_host_stall_does_not_bend_the_fit() {
        // host = 1.001 * guest + 3 s, symmetric 2 ms trips every 250 ms,
        // except that for 1.5 s the host reads each ping 100 ms late (a
        // stalled or overloaded host-playd): those trips say the offset is
        // ~50 ms larger than it is.
        let host_at = |g: u64| 3_000_000 + g + g / 1000;
        let mut map = ClockMapper::new();
        let mut last = 0;
        for i in 0..64u64 {
            let sent = 100_000_000 + i * 250_000;
            let stalled = (56..62).contains(&i);
            let (host, received) = if stalled {
                (host_at(sent + 101_000), sent + 102_000)
            } else {
                (host_at(sent + 1_000), sent + 2_000)
            };
            map.on_pong(sent, host, received);
            last = received;
        }
        let guest = last + 1_000_000;
        let mapped = map.host_to_guest(host_at(guest)).unwrap();
        assert!(
            mapped.abs_diff(guest) <= 50,
            "mapped {mapped} vs {guest}: off by {} us",
            mapped.abs_diff(guest)
        );
        assert!((map.skew() - 0.001).abs() < 1e-5, "skew {}", map.skew());
    }

    #[test]
    fn absurd_rates_fall_back_to_the_plain_offset() {
        let mut map = ClockMapper::new();
        for i in 0..10u64 {
            let sent = i * 1_000_000;
            // host clock running 10 % fast: no real clock does that
            map.on_pong(sent, sent + sent / 10, sent);
        }
        assert_eq!(map.skew(), 0.0);
    }
}
