use crate::USEC_PER_SEC;

/// At most this much audio is skipped after one underrun: a host that was
/// dry for longer is reconnected to (the guest gives up after 2 s of
/// silence), and skipping more would only empty the guest's own inputs.
const MAX_SKIP_USEC: u64 = USEC_PER_SEC;
/// A playing report this far behind the schedule, with no underrun reported
/// (yet), does not become the schedule at once: the underrun may show in a
/// later report (issue 14: host-playd's first report after a stop read
/// "playing" at a stale position 74 ms behind, the underrun in the next).
const BEHIND_USEC: u64 = 5_000;
/// ... but after this long without an underrun the host's position is the
/// schedule again.
const HOLD_USEC: u64 = 500_000;

#[derive(Debug, Clone, Copy)]
struct Point {
    /// Guest time at which the host had played `played` bytes.
    at: u64,
    played: u64,
}

/// How far a host underrun set the host's playback back against the
/// schedule it kept before, so that the guest can skip as much audio and
/// every later sample is heard when it would have been without the underrun.
///
/// Why skip: while the host stream is dry its sound card plays silence in
/// place of the guest's audio, so everything after is heard that much later
/// (issue 14: 65 ms after host-playd was stopped for 100 ms). The sink's
/// latency says so within a report or two, but a guest application's own
/// clock does not follow: libpulse's smoother (`INTERPOLATE_TIMING`, what
/// video players use) fits the stream's position over seconds and re-anchors
/// only when that stream itself underruns or is corked, so the player was
/// 65 ms off for 2 s and still 10–15 ms off 6 s later. A sound card that runs
/// dry does not move its clock back either: what arrived late is late. So
/// the guest consumes the slip from its inputs without sending it, and its
/// inputs' clocks stay true. Nothing else changes: skipped bytes are never
/// sent, so the sink's latency (sent − heard) is the same with or without.
///
/// The slip is measured between the last report while playing before the
/// underrun and the first report while playing after it, at the host's rate;
/// reports while the host is not playing (dry, prebuffering) are waited out.
/// A cork, flush or reconnection has no schedule to keep: [`reset`].
///
/// [`reset`]: UnderrunSlip::reset
#[derive(Debug, Clone)]
pub struct UnderrunSlip {
    bytes_per_sec: u64,
    frame_size: u64,
    /// The last report while playing, with no underrun since.
    schedule: Option<Point>,
    /// The host's underrun counter as last seen.
    underruns: u32,
    /// An underrun happened after `schedule`: measure at the next playing
    /// report.
    pending: bool,
}

impl UnderrunSlip {
    /// `bytes_per_sec` and `frame_size` of the stream; zero is treated as one.
    pub fn new(bytes_per_sec: u64, frame_size: u64) -> Self {
        Self {
            bytes_per_sec: bytes_per_sec.max(1),
            frame_size: frame_size.max(1),
            schedule: None,
            underruns: 0,
            pending: false,
        }
    }

    /// Applies a clock report: `played` bytes heard at guest time `at`, the
    /// host `playing` or not, its underrun counter at `underruns`;
    /// `rate_ratio` is the host's clock rate over the guest's. Returns the
    /// bytes (whole frames) the guest should skip now: non-zero only on the
    /// first playing report after an underrun.
    pub fn on_report(
        &mut self,
        at: u64,
        played: u64,
        playing: bool,
        underruns: u32,
        rate_ratio: f64,
    ) -> u64 {
        if underruns != self.underruns {
            // A counter that went down is a new stream: nothing to compare.
            self.pending = underruns > self.underruns && self.schedule.is_some();
            if !self.pending {
                self.schedule = None;
            }
            self.underruns = underruns;
        }
        if !playing {
            return 0;
        }
        let behind = self
            .schedule
            .map(|s| (s, self.behind(s, at, played, rate_ratio)));
        let mut slip = 0;
        if self.pending {
            self.pending = false;
            if let Some((_, behind)) = behind {
                let cap = self.bytes_per_sec.saturating_mul(MAX_SKIP_USEC) / USEC_PER_SEC;
                let behind = behind.min(cap);
                slip = behind - behind % self.frame_size;
            }
        } else if let Some((s, behind)) = behind {
            let limit = self.bytes_per_sec.saturating_mul(BEHIND_USEC) / USEC_PER_SEC;
            if behind > limit && at.saturating_sub(s.at) < HOLD_USEC {
                return 0;
            }
        }
        self.schedule = Some(Point { at, played });
        slip
    }

    /// Bytes `played` at `at` is behind schedule `s` (0 if ahead).
    fn behind(&self, s: Point, at: u64, played: u64, rate_ratio: f64) -> u64 {
        let elapsed = at.saturating_sub(s.at) as f64;
        let expected = s.played as f64
            + elapsed * self.bytes_per_sec as f64 * rate_ratio / USEC_PER_SEC as f64;
        (expected - played as f64).max(0.0).round() as u64
    }

    /// Forgets the schedule (corked, flushed, new connection).
    pub fn reset(&mut self) {
        self.schedule = None;
        self.pending = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 48 kHz stereo s16: 192 bytes per millisecond.
    const BPS: u64 = 48_000 * 4;
    const MS: u64 = 1_000;

    /// Reports every 20 ms of a host that plays from `from` ms on, at
    /// `played_at(ms)` bytes, with `underruns(ms)` and `playing(ms)`.
    fn feed(
        slip: &mut UnderrunSlip,
        ms: std::ops::Range<u64>,
        played_at: impl Fn(u64) -> u64,
        playing: impl Fn(u64) -> bool,
        underruns: impl Fn(u64) -> u32,
    ) -> Vec<(u64, u64)> {
        ms.step_by(20)
            .map(|t| {
                let skip = slip.on_report(t * MS, played_at(t), playing(t), underruns(t), 1.0);
                (t, skip)
            })
            .filter(|&(_, skip)| skip > 0)
            .collect()
    }

    #[test]
    fn a_dry_host_is_skipped_by_exactly_its_silence() {
        // The shape of issue 14's run: the host plays on schedule, runs dry
        // at 1000 ms, plays silence for 65.2 ms (12 516 bytes, PulseAudio's
        // underrun_for), reports "not playing" meanwhile, then plays again
        // 65.2 ms behind its old schedule.
        let dry = 12_516;
        let played = |t: u64| {
            if t < 1000 {
                t * 192
            } else if t < 1080 {
                1000 * 192 // dry, and then prebuffering
            } else {
                t * 192 - dry
            }
        };
        let mut slip = UnderrunSlip::new(BPS, 4);
        let skips = feed(
            &mut slip,
            0..3000,
            played,
            |t| !(1000..1080).contains(&t),
            |t| u32::from(t >= 1000),
        );
        assert_eq!(skips, vec![(1080, dry)]);
    }

    #[test]
    fn a_stale_playing_report_before_the_underrun_count_does_not_hide_it() {
        // As host-playd's reports were before it learnt to call a stale
        // position "not playing": after a 100 ms stop, first a "playing"
        // report at the last position extrapolated by 40 ms, then the
        // underrun, then playing again 65 ms behind the old schedule.
        let mut slip = UnderrunSlip::new(BPS, 4);
        for t in (0..=1000u64).step_by(20) {
            assert_eq!(slip.on_report(t * MS, t * 192, true, 0, 1.0), 0);
        }
        assert_eq!(slip.on_report(1108 * MS, 1040 * 192, true, 0, 1.0), 0);
        assert_eq!(slip.on_report(1109 * MS, 1050 * 192, false, 1, 1.0), 0);
        assert_eq!(
            slip.on_report(1130 * MS, 1065 * 192, true, 1, 1.0),
            65 * 192
        );
    }

    #[test]
    fn a_host_that_falls_behind_without_an_underrun_is_followed_after_a_while() {
        let mut slip = UnderrunSlip::new(BPS, 4);
        for t in (0..=1000u64).step_by(20) {
            slip.on_report(t * MS, t * 192, true, 0, 1.0);
        }
        // 30 ms behind from 1020 ms on, no underrun counted: after 500 ms
        // that is the schedule, and a later underrun is measured against it.
        for t in (1020..=2000u64).step_by(20) {
            assert_eq!(slip.on_report(t * MS, (t - 30) * 192, true, 0, 1.0), 0);
        }
        assert_eq!(slip.on_report(2020 * MS, 1990 * 192, false, 1, 1.0), 0);
        assert_eq!(
            slip.on_report(2040 * MS, 2000 * 192, true, 1, 1.0),
            10 * 192
        );
    }

    #[test]
    fn no_underrun_no_skip_whatever_the_jitter() {
        // Reports jitter by up to ±1 ms of position, never an underrun.
        let mut slip = UnderrunSlip::new(BPS, 4);
        let skips = feed(
            &mut slip,
            0..10_000,
            |t| t * 192 + (t * 7919 % 385),
            |_| true,
            |_| 0,
        );
        assert!(skips.is_empty(), "{skips:?}");
    }

    #[test]
    fn the_slip_is_measured_at_the_host_rate() {
        // The host clock runs 1000 ppm fast; it loses 10 ms in an underrun
        // 10 s in: the schedule it lost against is its own.
        let mut slip = UnderrunSlip::new(BPS, 4);
        let mut skips = Vec::new();
        for t in (0..20_000u64).step_by(20) {
            let fast = |t: u64| t * 192 + t * 192 / 1000;
            let played = if t < 10_000 { fast(t) } else { fast(t) - 1920 };
            let skip = slip.on_report(t * MS, played, true, u32::from(t >= 10_000), 1.001);
            if skip > 0 {
                skips.push(skip);
            }
        }
        assert_eq!(skips.len(), 1);
        assert!(skips[0].abs_diff(1920) <= 4, "{skips:?}");
    }

    #[test]
    fn a_cork_or_reset_keeps_no_schedule() {
        // The host ran dry after a drain, and the stream was corked: the
        // time it spent corked is not a slip.
        let mut slip = UnderrunSlip::new(BPS, 4);
        assert_eq!(slip.on_report(0, 0, true, 0, 1.0), 0);
        assert_eq!(slip.on_report(100 * MS, 19_200, true, 0, 1.0), 0);
        assert_eq!(slip.on_report(200 * MS, 19_200, false, 1, 1.0), 0);
        slip.reset();
        assert_eq!(slip.on_report(5_000 * MS, 19_200, true, 1, 1.0), 0);
        assert_eq!(slip.on_report(5_100 * MS, 38_400, true, 1, 1.0), 0);
    }

    #[test]
    fn an_underrun_before_any_schedule_or_a_new_stream_skips_nothing() {
        let mut slip = UnderrunSlip::new(BPS, 4);
        assert_eq!(slip.on_report(0, 0, false, 1, 1.0), 0);
        assert_eq!(slip.on_report(100 * MS, 0, true, 1, 1.0), 0);
        // counter back to zero: another stream
        assert_eq!(slip.on_report(5_000 * MS, 0, true, 0, 1.0), 0);
        assert_eq!(slip.on_report(5_100 * MS, 19_200, true, 0, 1.0), 0);
    }

    #[test]
    fn a_skip_is_whole_frames_and_at_most_a_second() {
        let mut slip = UnderrunSlip::new(BPS, 4);
        slip.on_report(0, 0, true, 0, 1.0);
        // 1.5 s dry and 3 bytes: capped, in frames.
        assert_eq!(slip.on_report(2_000 * MS, 500 * 192 - 3, true, 1, 1.0), BPS);
        slip.on_report(2_100 * MS, 600 * 192, true, 1, 1.0);
        assert_eq!(slip.on_report(2_200 * MS, 700 * 192 - 3, true, 2, 1.0), 0);
    }
}
