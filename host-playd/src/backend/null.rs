//! The null backend: a TEST backend that plays nothing.
//!
//! It stands in for a sound card whose clock runs at the nominal rate times
//! `1 + skew_ppm / 1e6`, so the daemon's flow control and clock reports can be
//! tested (and a skewed host simulated) without PulseAudio. Its buffer holds
//! `tlength` bytes, it consumes whole frames from the host clock, and reports
//! a device latency of zero. The arithmetic lives in [`NullClock`], which takes
//! the time as an argument so hours can be simulated in a unit test.
#![forbid(unsafe_code)]

use std::collections::HashMap;

use super::{AudioBackend, BackendError, StreamEvent, StreamId, StreamParams, StreamStatus};
use crate::clock::HostClock;

/// The timing core of one null stream: a queue drained by a skewed clock.
#[derive(Debug, Clone)]
pub struct NullClock {
    rate: u64,
    frame_size: u64,
    skew_ppm: i64,
    tlength_bytes: u64,
    /// Host time from which `anchor_ticks` counts on.
    anchor_usec: u64,
    /// Device frames elapsed up to `anchor_usec`.
    anchor_ticks: u64,
    /// Device frames elapsed up to the last update.
    ticks: u64,
    written: u64,
    played: u64,
    corked: bool,
    started: bool,
    starved: bool,
    underruns: u32,
}

impl NullClock {
    /// A stream opened at `now_usec`.
    pub fn new(
        rate: u32,
        frame_size: u32,
        skew_ppm: i32,
        tlength_bytes: u32,
        now_usec: u64,
    ) -> Self {
        NullClock {
            rate: u64::from(rate),
            frame_size: u64::from(frame_size).max(1),
            skew_ppm: i64::from(skew_ppm),
            tlength_bytes: u64::from(tlength_bytes),
            anchor_usec: now_usec,
            anchor_ticks: 0,
            ticks: 0,
            written: 0,
            played: 0,
            corked: false,
            started: false,
            starved: false,
            underruns: 0,
        }
    }

    /// Device frames the skewed clock ticks in `usec` microseconds, rounded
    /// down: `usec * rate * (1e6 + ppm) / 1e12`.
    pub fn ticks_in(&self, usec: u64) -> u64 {
        let factor = (1_000_000i128 + i128::from(self.skew_ppm)).max(0);
        let ticks = i128::from(usec) * i128::from(self.rate) * factor / 1_000_000_000_000;
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }

    /// Brings the queue up to `now_usec`: the frames the clock ticked since
    /// the last update leave the queue while there are any.
    pub fn advance(&mut self, now_usec: u64) {
        let now_usec = now_usec.max(self.anchor_usec);
        if self.corked {
            // A corked device does not tick; time resumes from the uncork.
            self.anchor_usec = now_usec;
            self.anchor_ticks = self.ticks;
            return;
        }
        let ticks = self
            .anchor_ticks
            .saturating_add(self.ticks_in(now_usec - self.anchor_usec));
        if ticks <= self.ticks {
            return;
        }
        let elapsed = ticks - self.ticks;
        self.ticks = ticks;
        let queued_frames = self.queued() / self.frame_size;
        let consumed = elapsed.min(queued_frames);
        self.played += consumed * self.frame_size;
        if elapsed > queued_frames && self.started && !self.starved {
            self.starved = true;
            self.underruns = self.underruns.saturating_add(1);
        }
    }

    /// Queues `bytes` at `now_usec`.
    pub fn write(&mut self, now_usec: u64, bytes: u64) {
        self.advance(now_usec);
        self.written = self.written.saturating_add(bytes);
        if bytes > 0 {
            self.started = true;
            self.starved = false;
        }
    }

    /// Pauses or resumes the device clock at `now_usec`.
    pub fn set_corked(&mut self, now_usec: u64, corked: bool) {
        self.advance(now_usec);
        self.corked = corked;
        self.anchor_usec = now_usec.max(self.anchor_usec);
        self.anchor_ticks = self.ticks;
    }

    /// Drops the queue; the dropped bytes count as played.
    pub fn flush(&mut self, now_usec: u64) {
        self.advance(now_usec);
        self.played = self.written;
    }

    /// Withdraws the last `bytes` written: the unplayed part leaves the
    /// queue, and positions go back by `bytes` (what was played of them is
    /// not undone; the position never goes below it).
    pub fn rewind(&mut self, now_usec: u64, bytes: u64) {
        self.advance(now_usec);
        self.written = self.written.saturating_sub(bytes);
        self.played = self.played.min(self.written);
    }

    /// Changes the buffer size.
    pub fn set_tlength(&mut self, tlength_bytes: u32) {
        self.tlength_bytes = u64::from(tlength_bytes);
    }

    /// Bytes written but not yet played.
    pub fn queued(&self) -> u64 {
        self.written - self.played
    }

    /// The stream as seen at `now_usec`.
    pub fn status(&mut self, now_usec: u64) -> StreamStatus {
        self.advance(now_usec);
        let writable = self.tlength_bytes.saturating_sub(self.queued());
        StreamStatus {
            host_time_usec: now_usec,
            writable_bytes: writable - writable % self.frame_size,
            played_bytes: self.played,
            device_latency_usec: 0,
            underruns: self.underruns,
            playing: !self.corked && self.queued() > 0,
        }
    }
}

/// The null test backend: one [`NullClock`] per stream, driven by the host
/// clock.
#[derive(Debug)]
pub struct NullBackend {
    clock: HostClock,
    skew_ppm: i32,
    streams: HashMap<StreamId, NullClock>,
    events: Vec<(StreamId, StreamEvent)>,
    volume_caps: HashMap<StreamId, u8>,
}

impl NullBackend {
    /// A backend whose device clocks run `skew_ppm` parts per million fast.
    pub fn new(clock: HostClock, skew_ppm: i32) -> Self {
        log::warn!("using the null TEST backend (skew {skew_ppm} ppm): audio is discarded");
        NullBackend {
            clock,
            skew_ppm,
            streams: HashMap::new(),
            events: Vec::new(),
            volume_caps: HashMap::new(),
        }
    }

    fn stream(&mut self, id: StreamId) -> Result<&mut NullClock, BackendError> {
        self.streams
            .get_mut(&id)
            .ok_or(BackendError::UnknownStream(id))
    }
}

impl AudioBackend for NullBackend {
    fn open(&mut self, id: StreamId, params: StreamParams) -> Result<(), BackendError> {
        let now = self.clock.now_usec();
        let spec = &params.spec;
        let stream = NullClock::new(
            spec.rate,
            spec.frame_size(),
            self.skew_ppm,
            params.tlength_bytes,
            now,
        );
        self.streams.insert(id, stream);
        let volume = self.volume_caps.get(&id).copied().unwrap_or(100);
        log::info!(
            "null stream {id} opened: name {:?}, buffer {} bytes, volume {volume}%",
            params.name,
            params.tlength_bytes
        );
        self.events.push((
            id,
            StreamEvent::Opened {
                buffer_bytes: params.tlength_bytes,
            },
        ));
        Ok(())
    }

    fn write(&mut self, id: StreamId, data: &[u8]) -> Result<(), BackendError> {
        let now = self.clock.now_usec();
        self.stream(id)?.write(now, data.len() as u64);
        Ok(())
    }

    fn cork(&mut self, id: StreamId, corked: bool) {
        let now = self.clock.now_usec();
        if let Ok(stream) = self.stream(id) {
            stream.set_corked(now, corked);
        }
    }

    fn flush(&mut self, id: StreamId) {
        let now = self.clock.now_usec();
        if let Ok(stream) = self.stream(id) {
            stream.flush(now);
        }
    }

    fn rewind(&mut self, id: StreamId, bytes: u64) {
        let now = self.clock.now_usec();
        if let Ok(stream) = self.stream(id) {
            stream.rewind(now, bytes);
        }
    }

    fn set_buffer(&mut self, id: StreamId, tlength_bytes: u32) {
        if let Ok(stream) = self.stream(id) {
            stream.set_tlength(tlength_bytes);
        }
    }

    fn close(&mut self, id: StreamId) {
        self.streams.remove(&id);
        self.volume_caps.remove(&id);
    }

    fn set_volume_cap(&mut self, id: StreamId, percent: u8) {
        // Nothing is audible; the cap is recorded and logged at open.
        self.volume_caps.insert(id, percent);
    }

    fn take_events(&mut self, out: &mut Vec<(StreamId, StreamEvent)>) {
        out.append(&mut self.events);
    }

    fn status(&mut self, id: StreamId) -> Option<StreamStatus> {
        let now = self.clock.now_usec();
        self.streams.get_mut(&id).map(|s| s.status(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_USEC: u64 = 3_600_000_000;

    #[test]
    fn one_hour_at_plus_1000_ppm_consumes_exactly() {
        // 48 kHz stereo s16: 4-byte frames, a buffer of 100 ms.
        let tlength = 19_200;
        let mut clock = NullClock::new(48_000, 4, 1000, tlength, 0);
        let mut now = 0;
        let mut step = 0u64;
        // Keep the buffer full at uneven intervals (1..=30 ms) for an hour.
        while now < HOUR_USEC {
            let status = clock.status(now);
            clock.write(now, status.writable_bytes);
            step = (step * 7919 + 13) % 30_000;
            now = (now + 1_000 + step).min(HOUR_USEC);
        }
        let status = clock.status(HOUR_USEC);
        // 3600 s * 48000 * 1.001 frames of 4 bytes.
        assert_eq!(status.played_bytes, 172_972_800 * 4);
        assert_eq!(status.underruns, 0);
    }

    #[test]
    fn negative_skew_runs_slow() {
        let mut clock = NullClock::new(44_100, 4, -500, u32::MAX, 0);
        clock.write(0, 1 << 40);
        let status = clock.status(HOUR_USEC);
        // 3600 * 44100 * 0.9995 = 158_680_620 frames.
        assert_eq!(status.played_bytes, 158_680_620 * 4);
    }

    #[test]
    fn starving_counts_one_underrun_per_episode() {
        let mut clock = NullClock::new(48_000, 4, 0, 19_200, 0);
        assert_eq!(clock.status(50_000).underruns, 0, "not started yet");
        clock.write(50_000, 400); // 100 frames = 2.083 ms
        let status = clock.status(60_000);
        assert_eq!(status.played_bytes, 400);
        assert_eq!(status.underruns, 1);
        assert!(!status.playing);
        assert_eq!(clock.status(80_000).underruns, 1);
        clock.write(80_000, 400);
        assert_eq!(clock.status(100_000).underruns, 2);
    }

    #[test]
    fn cork_stops_the_clock_and_flush_counts_as_played() {
        let mut clock = NullClock::new(48_000, 4, 0, 19_200, 0);
        clock.write(0, 19_200); // 100 ms
        assert_eq!(clock.status(10_000).played_bytes, 480 * 4);
        clock.set_corked(10_000, true);
        let corked = clock.status(60_000);
        assert_eq!(corked.played_bytes, 480 * 4);
        assert!(!corked.playing);
        assert_eq!(corked.writable_bytes, 480 * 4);
        clock.set_corked(60_000, false);
        assert_eq!(clock.status(70_000).played_bytes, 960 * 4);
        clock.flush(70_000);
        let flushed = clock.status(70_000);
        assert_eq!(flushed.played_bytes, 19_200);
        assert_eq!(flushed.writable_bytes, 19_200);
    }

    #[test]
    fn played_never_exceeds_written_and_time_never_runs_backwards() {
        let mut clock = NullClock::new(8_000, 2, 200_000, 1_600, 1_000);
        clock.write(1_000, 1_600);
        let late = clock.status(10_000_000);
        assert_eq!(late.played_bytes, 1_600);
        // An earlier time than the last update changes nothing.
        assert_eq!(clock.status(5_000).played_bytes, 1_600);
    }
}
