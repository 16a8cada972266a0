//! Latency observed between two recordings of the same impulse train: one
//! taken before a stage (the guest sink's monitor), one after it (the host
//! sink's monitor). Both go through the same `parec` pipeline, so its own
//! delay cancels out of the difference. One delay does not: a sink that
//! can rewind (`max_rewind` > 0, as the tunnel sink since protocol 3) holds
//! back what its monitor's recorders get by as much as it could still
//! rewind (PulseAudio's source-output delay queue), so the guest monitor's
//! arrivals are late by that queue; [`measure_sink_latency`] reads it from
//! the recorder's `Buffer Latency` and adds it back.

use std::{
    thread,
    time::{Duration, Instant},
};

use crate::{
    find_sink,
    signal::{detect_impulses, impulse_train, median, to_bytes},
    HarnessError, Player, PulseDaemon, Recorder, Recording, HOST_SINK, RATE,
};

/// Magnitude above which a sample belongs to an impulse.
pub const IMPULSE_THRESHOLD: i16 = 8_000;

/// For every impulse in `before`, the delay in milliseconds until the same
/// impulse arrived in `after`. Impulses are paired by arrival time: the
/// first one in `after` no earlier than `-slack_ms` and no later than
/// `max_ms` after it; unpaired impulses are left out.
pub fn impulse_latencies_ms(
    before: &Recording,
    after: &Recording,
    slack_ms: f64,
    max_ms: f64,
) -> Vec<f64> {
    let arrivals = |rec: &Recording| -> Vec<Instant> {
        let min_silence = RATE as usize / 10;
        detect_impulses(&rec.samples(), IMPULSE_THRESHOLD, min_silence)
            .into_iter()
            .filter_map(|f| rec.arrival_of_frame(f))
            .collect()
    };
    let downstream = arrivals(after);
    arrivals(before)
        .into_iter()
        .filter_map(|b| {
            downstream
                .iter()
                .map(|a| signed_ms(*a, b))
                .find(|d| *d >= -slack_ms && *d <= max_ms)
        })
        .collect()
}

/// `a - b` in milliseconds, negative when `a` is earlier.
fn signed_ms(a: Instant, b: Instant) -> f64 {
    if a >= b {
        (a - b).as_secs_f64() * 1e3
    } else {
        -((b - a).as_secs_f64() * 1e3)
    }
}

/// What [`measure_sink_latency`] saw.
#[derive(Debug, Clone, Default)]
pub struct LatencyReport {
    /// `Latency:` of the sink in ms, sampled while it was RUNNING.
    pub reported_ms: Vec<f64>,
    /// Per-impulse delay from the guest sink's monitor to the host sink's.
    pub observed_ms: Vec<f64>,
    /// The sink's `Flags:` at the last sample.
    pub flags: Vec<String>,
    /// Impulses found on the guest sink's monitor.
    pub guest_impulses: usize,
    /// Impulses found on the host sink's monitor.
    pub host_impulses: usize,
    /// The guest monitor recorder's `Buffer Latency` in ms (its delay
    /// queue), sampled while the sink ran; its median is added to each
    /// observed delay.
    pub monitor_delay_ms: Vec<f64>,
}

impl LatencyReport {
    /// Median reported latency.
    pub fn reported_median(&self) -> Option<f64> {
        median(&self.reported_ms)
    }

    /// Median observed latency.
    pub fn observed_median(&self) -> Option<f64> {
        median(&self.observed_ms)
    }
}

/// Plays 5 s of impulses (one every 500 ms) into `guest_sink`, records its
/// monitor and the host sink's monitor, and samples `pactl list sinks` on
/// the guest every 400 ms meanwhile.
pub fn measure_sink_latency(
    guest: &PulseDaemon,
    guest_sink: &str,
    host: &PulseDaemon,
) -> Result<LatencyReport, HarnessError> {
    let guest_rec = Recorder::start(guest, &format!("{guest_sink}.monitor"))?;
    let mut host_rec = Recorder::start(host, &format!("{HOST_SINK}.monitor"))?;
    host_rec.wait_live(Duration::from_secs(5))?;
    // The first impulse comes one period in, after both recorders connected.
    let frames = RATE as usize;
    let train = impulse_train(5 * frames, frames / 2, 48, 30_000);
    let player = Player::start(guest, guest_sink, to_bytes(&train))?;
    let mut report = LatencyReport::default();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(4500) {
        thread::sleep(Duration::from_millis(400));
        let sink = find_sink(guest, guest_sink)?;
        if sink.state == "RUNNING" {
            report
                .reported_ms
                .push(sink.latency_usec.unwrap_or(0) as f64 / 1e3);
            if let Some(usec) = guest
                .pactl_ok(&["list", "source-outputs"])
                .ok()
                .as_deref()
                .and_then(buffer_latency_usec)
            {
                report.monitor_delay_ms.push(usec as f64 / 1e3);
            }
        }
        report.flags = sink.flags;
    }
    player.wait(Duration::from_secs(20))?;
    // The last impulse still has to cross.
    thread::sleep(Duration::from_millis(600));
    let (before, after) = (guest_rec.stop(), host_rec.stop());
    let count = |r: &Recording| detect_impulses(&r.samples(), IMPULSE_THRESHOLD, frames / 10).len();
    report.guest_impulses = count(&before);
    report.host_impulses = count(&after);
    let held_back = median(&report.monitor_delay_ms).unwrap_or(0.0);
    report.observed_ms = impulse_latencies_ms(&before, &after, 20.0 + held_back, 450.0)
        .into_iter()
        .map(|ms| ms + held_back)
        .collect();
    Ok(report)
}

/// The first source output's `Buffer Latency` in `pactl list
/// source-outputs` (the measurement's only recorder on the guest).
fn buffer_latency_usec(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        line.trim()
            .strip_prefix("Buffer Latency:")?
            .trim()
            .strip_suffix("usec")?
            .trim()
            .parse()
            .ok()
    })
}
