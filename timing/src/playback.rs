use crate::USEC_PER_SEC;

#[derive(Debug, Clone, Copy)]
struct Anchor {
    /// Guest time at which `played` was true.
    at: u64,
    played: u64,
    playing: bool,
}

/// Estimates how much of the stream the host has played by a given guest
/// time, from the host's clock reports, and from that the sink latency.
///
/// Between reports the position advances at the nominal byte rate while the
/// host says it is playing; it never runs past what was sent, and it never
/// goes backwards, so latency readings are smooth and never negative.
#[derive(Debug, Clone)]
pub struct PlaybackEstimator {
    bytes_per_sec: u64,
    frame_size: u64,
    anchor: Option<Anchor>,
    floor: u64,
    /// Host clock rate over guest clock rate, as measured by the mapper.
    rate_ratio: f64,
}

impl PlaybackEstimator {
    /// `bytes_per_sec` and `frame_size` of the stream; zero is treated as one.
    pub fn new(bytes_per_sec: u64, frame_size: u64) -> Self {
        Self {
            bytes_per_sec: bytes_per_sec.max(1),
            frame_size: frame_size.max(1),
            anchor: None,
            floor: 0,
            rate_ratio: 1.0,
        }
    }

    /// Applies a report: `played` bytes had been heard at guest time `at`.
    /// `now` bounds `at` (a report cannot describe the future).
    pub fn on_report(&mut self, at: u64, now: u64, played: u64, playing: bool) {
        self.anchor = Some(Anchor {
            at: at.min(now),
            played,
            playing,
        });
    }

    /// The host's device consumes `ratio` times the nominal rate as seen on
    /// the guest clock (1 + the mapper's skew). Values outside 0.99..=1.01
    /// are not clocks and are ignored.
    pub fn set_rate_ratio(&mut self, ratio: f64) {
        if (0.99..=1.01).contains(&ratio) {
            self.rate_ratio = ratio;
        }
    }

    /// Bytes heard by guest time `now`, never more than `sent`.
    pub fn played_at(&mut self, now: u64, sent: u64) -> u64 {
        let estimate = match self.anchor {
            None => 0,
            Some(a) => {
                let elapsed = if a.playing {
                    now.saturating_sub(a.at)
                } else {
                    0
                };
                let advanced = (elapsed as f64 * self.bytes_per_sec as f64 * self.rate_ratio
                    / USEC_PER_SEC as f64)
                    .round() as u64;
                let advanced = advanced - advanced % self.frame_size;
                a.played.saturating_add(advanced)
            }
        };
        self.floor = self.floor.max(estimate.min(sent));
        self.floor
    }

    /// Time until a byte rendered now (after `rendered` bytes in total) is
    /// heard on the host, in microseconds.
    pub fn latency_usec(&mut self, now: u64, rendered: u64) -> u64 {
        let queued = rendered.saturating_sub(self.played_at(now, rendered));
        (u128::from(queued) * u128::from(USEC_PER_SEC) / u128::from(self.bytes_per_sec)) as u64
    }

    /// Forgets the host's position (a new connection starts from zero).
    pub fn reset(&mut self) {
        self.anchor = None;
        self.floor = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BPS: u64 = 48_000 * 4;

    #[test]
    fn extrapolates_between_reports_at_the_nominal_rate() {
        let mut est = PlaybackEstimator::new(BPS, 4);
        est.on_report(1_000_000, 1_000_000, 19_200, true);
        // 10 ms later: 1920 more bytes played.
        assert_eq!(est.played_at(1_010_000, 1_000_000), 21_120);
        // 40 ms sent beyond what was played at the report.
        let rendered = 19_200 + 40 * 192;
        assert_eq!(est.latency_usec(1_010_000, rendered), 30_000);
    }

    #[test]
    fn stops_when_host_not_playing_and_never_passes_sent_or_goes_back() {
        let mut est = PlaybackEstimator::new(BPS, 4);
        est.on_report(0, 0, 1000, false);
        assert_eq!(est.played_at(5_000_000, 10_000), 1000);
        est.on_report(0, 0, 1000, true);
        assert_eq!(est.played_at(5_000_000, 10_000), 10_000);
        // A later report that is behind the extrapolation does not go back.
        est.on_report(5_000_000, 5_000_000, 9_000, true);
        assert_eq!(est.played_at(5_000_000, 10_000), 10_000);
        assert_eq!(est.latency_usec(5_000_000, 10_000), 0);
    }

    #[test]
    fn extrapolates_at_the_host_rate() {
        let mut est = PlaybackEstimator::new(BPS, 4);
        est.set_rate_ratio(1.001);
        est.on_report(0, 0, 0, true);
        // one guest second at a host clock 1000 ppm fast: 192192 bytes
        assert_eq!(est.played_at(1_000_000, u64::MAX), 192_192);
        est.set_rate_ratio(2.0); // ignored
        assert_eq!(est.played_at(2_000_000, u64::MAX), 384_384);
    }

    #[test]
    fn reports_from_the_future_are_clamped_to_now() {
        let mut est = PlaybackEstimator::new(BPS, 4);
        est.on_report(2_000_000, 1_000_000, 0, true);
        assert_eq!(est.played_at(1_000_000, u64::MAX), 0);
    }
}
