//! What both ends of `scripts/vm-test.sh` share: the signal the guest plays,
//! the control protocol's words, and the pure arithmetic that relates the
//! guest's clock to the host's (a timestamp echo).
//!
//! Times are milliseconds since each side's own start, as `f64`: the guest's
//! monotonic clock and the host's have nothing in common (they differ by the
//! VM's boot time and more), so nothing but these numbers crosses.

use crate::signal::{pseudo_random, silence};

/// The vsock port the guest connects to on the host (CID 2).
pub const VSOCK_PORT: u32 = 5000;
/// The module arguments besides `server` and `sink_name`.
pub const MODULE_ARGS: &str = "format=s16le rate=48000 channels=2 latency_msec=150";
/// Period of the coded impulses of the latency probe, in milliseconds.
pub const IMPULSE_PERIOD_MS: u64 = 300;
/// Seconds the latency probe plays; impulses written in the first
/// [`PROBE_WARMUP_S`] are not counted.
pub const PROBE_SECONDS: f64 = 8.0;
/// See [`PROBE_SECONDS`].
pub const PROBE_WARMUP_S: f64 = 2.0;
/// Seed of the noise whose bit-exact arrival is checked.
pub const NOISE_SEED: u32 = 14;

/// The noise the host must find bit-exact: 1 s.
pub fn noise() -> Vec<i16> {
    pseudo_random(NOISE_SEED, crate::RATE as usize)
}

/// What the guest plays for the bit-exact check: 0.2 s of silence, [`noise`],
/// 0.3 s of silence (so neither end of the noise is the stream's).
pub fn signal() -> Vec<i16> {
    let rate = crate::RATE as usize;
    let mut s = silence(rate / 5);
    s.extend(noise());
    s.extend(silence(rate * 3 / 10));
    s
}

/// One round of the timestamp echo: the host sent its time, the guest
/// answered with its own, the host took its time again on the answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EchoSample {
    /// Host clock when the ping left.
    pub host_sent_ms: f64,
    /// Guest clock when it answered.
    pub guest_ms: f64,
    /// Host clock when the answer arrived.
    pub host_received_ms: f64,
}

/// How to turn a guest time into a host time: `host = guest + offset_ms`,
/// known to within `±uncertainty_ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClockRelation {
    /// Host minus guest.
    pub offset_ms: f64,
    /// Half the round trip of the sample it came from: the guest answered
    /// somewhere in that window.
    pub uncertainty_ms: f64,
}

/// The relation from the round with the shortest round trip (the one whose
/// answer is pinned down best; queueing only ever adds delay), assuming the
/// answer was taken halfway. `None` without samples.
pub fn relate_clocks(samples: &[EchoSample]) -> Option<ClockRelation> {
    samples
        .iter()
        .filter(|s| s.host_received_ms >= s.host_sent_ms)
        .min_by(|a, b| {
            (a.host_received_ms - a.host_sent_ms).total_cmp(&(b.host_received_ms - b.host_sent_ms))
        })
        .map(|s| ClockRelation {
            offset_ms: (s.host_sent_ms + s.host_received_ms) / 2.0 - s.guest_ms,
            uncertainty_ms: (s.host_received_ms - s.host_sent_ms) / 2.0,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(sent: f64, guest: f64, received: f64) -> EchoSample {
        EchoSample {
            host_sent_ms: sent,
            guest_ms: guest,
            host_received_ms: received,
        }
    }

    #[test]
    fn the_shortest_round_trip_decides() {
        // The guest's clock is 700 ms behind; the second round was delayed
        // on the way back, the third is the tightest.
        let samples = [
            sample(10.0, -689.0, 12.0),
            sample(20.0, -679.5, 29.0),
            sample(30.0, -669.8, 30.4),
        ];
        let r = relate_clocks(&samples).expect("samples");
        assert!((r.offset_ms - 700.0).abs() < 1e-9, "{r:?}");
        assert!((r.uncertainty_ms - 0.2).abs() < 1e-9, "{r:?}");
        assert_eq!(relate_clocks(&[]), None);
        // A sample whose answer came before its ping is garbage, not a zero RTT.
        assert_eq!(relate_clocks(&[sample(5.0, 0.0, 4.0)]), None);
    }

    #[test]
    fn the_signal_ends_with_the_noise_and_silence() {
        let s = signal();
        let n = noise();
        let rate = crate::RATE as usize;
        let start = rate / 5 * crate::CHANNELS;
        assert!(s[..start].iter().all(|&x| x == 0));
        assert_eq!(&s[start..start + n.len()], &n[..]);
        assert!(s[start + n.len()..].iter().all(|&x| x == 0));
    }
}
