//! The impulse train, coded so every impulse can be told apart from its
//! neighbours: impulse `i` has amplitude `BASE + (i % CODES) * STEP`. A
//! tunnel 800 ms late (pipe-sink) is still paired with the right write,
//! because the code repeats only every `CODES` periods.

use crate::pa::RATE;

const BASE: i16 = 6_000;
const STEP: i16 = 1_500;
/// Below this magnitude a sample is silence.
const THRESHOLD: u16 = 3_000;
/// An impulse starts after this much silence.
const MIN_SILENCE_FRAMES: u64 = RATE as u64 / 10;

/// Spacing and length of the impulses.
#[derive(Debug, Clone, Copy)]
pub struct Coder {
    /// Frames from one impulse's start to the next.
    pub period_frames: u64,
    /// Frames of each burst.
    pub burst_frames: u64,
}

impl Coder {
    /// Distinct amplitudes.
    pub const CODES: u64 = 16;

    /// Impulses every `period_ms`, 1 ms long.
    pub fn every_ms(period_ms: u64) -> Self {
        Self {
            period_frames: period_ms * u64::from(RATE) / 1000,
            burst_frames: u64::from(RATE) / 1000,
        }
    }

    /// The amplitude that codes impulse `index`.
    pub fn amplitude(index: u64) -> i16 {
        BASE + (index % Self::CODES) as i16 * STEP
    }

    /// The code of a burst of amplitude `amplitude`, if it is one.
    pub fn code(amplitude: i16) -> Option<u64> {
        let steps = (f64::from(amplitude) - f64::from(BASE)) / f64::from(STEP);
        let code = steps.round();
        ((steps - code).abs() < 0.2 && (0.0..Self::CODES as f64).contains(&code))
            .then_some(code as u64)
    }

    /// Appends `frames` frames of the train starting at `first` (s16le
    /// stereo) to `out`; returns (index, frame) of every impulse starting in
    /// them. The first impulse comes one period in.
    pub fn render(&self, first: u64, frames: usize, out: &mut Vec<u8>) -> Vec<(u64, u64)> {
        let mut starts = Vec::new();
        out.reserve(frames * 4);
        for f in first..first + frames as u64 {
            let (n, phase) = (f / self.period_frames, f % self.period_frames);
            let sample = if n >= 1 && phase < self.burst_frames {
                if phase == 0 {
                    starts.push((n - 1, f));
                }
                Self::amplitude(n - 1)
            } else {
                0
            };
            let b = sample.to_le_bytes();
            out.extend_from_slice(&[b[0], b[1], b[0], b[1]]);
        }
        starts
    }
}

/// Finds impulses in a stream of s16le stereo fragments.
#[derive(Debug)]
pub struct Detector {
    quiet: u64,
    current: Option<(u64, i16)>,
}

impl Default for Detector {
    fn default() -> Self {
        Self::new()
    }
}

impl Detector {
    /// A detector that has heard enough silence to catch an impulse at once.
    pub fn new() -> Self {
        Self {
            quiet: MIN_SILENCE_FRAMES,
            current: None,
        }
    }

    /// A gap in the recording: counts as silence.
    pub fn skip(&mut self, frames: usize) {
        self.quiet += frames as u64;
    }

    /// Scans `data` whose first frame is `first`; returns every impulse
    /// (start frame, peak magnitude) that ended in it.
    pub fn feed(&mut self, first: u64, data: &[u8]) -> Vec<(u64, i16)> {
        let mut done = Vec::new();
        for (i, f) in data.chunks_exact(4).enumerate() {
            let l = i16::from_le_bytes([f[0], f[1]]);
            let r = i16::from_le_bytes([f[2], f[3]]);
            let peak = l.unsigned_abs().max(r.unsigned_abs());
            if peak >= THRESHOLD {
                if let Some((_, max)) = self.current.as_mut() {
                    *max = (*max).max(peak.min(i16::MAX as u16) as i16);
                } else if self.quiet >= MIN_SILENCE_FRAMES {
                    self.current = Some((first + i as u64, peak.min(i16::MAX as u16) as i16));
                }
                self.quiet = 0;
            } else {
                self.quiet += 1;
                done.extend(self.current.take());
            }
        }
        done
    }
}

/// An impulse as the recorder heard it.
#[derive(Debug, Clone, Copy)]
pub struct Impulse {
    /// First frame in the recording.
    pub frame: u64,
    /// Peak magnitude (the code).
    pub amplitude: i16,
    /// When it was heard, seconds on the shared epoch.
    pub heard: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_reject_noise() {
        for i in 0..40 {
            assert_eq!(Coder::code(Coder::amplitude(i)), Some(i % Coder::CODES));
        }
        assert_eq!(Coder::code(BASE + STEP / 2), None);
        assert_eq!(Coder::code(i16::MAX), None);
    }

    #[test]
    fn detector_finds_what_render_wrote_across_fragments() {
        let coder = Coder::every_ms(300);
        let mut bytes = Vec::new();
        let written = coder.render(0, RATE as usize * 2, &mut bytes);
        let mut detector = Detector::new();
        let mut found = Vec::new();
        for (n, chunk) in bytes.chunks(4 * 37).enumerate() {
            found.extend(detector.feed(n as u64 * 37, chunk));
        }
        let expect: Vec<(u64, i16)> = written
            .iter()
            .map(|&(i, f)| (f, Coder::amplitude(i)))
            .collect();
        assert_eq!(found, expect);
        assert_eq!(written.len(), 6);
    }
}
