//! One measurement: play coded impulses for a while, pair each prediction
//! with what the recorder heard.

use std::{thread, time::Duration};

use anyhow::Result;

use crate::{
    clock,
    impulses::{Coder, Impulse},
    pa::{PlayConfig, PlayProbe, Prediction, RecordProbe},
};

/// Half-width of the recorder's smoothing window, in seconds.
const SMOOTHING_S: f64 = 0.5;

/// How long each part of a measurement lasts, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct Phases {
    /// Played but not counted (connection, buffers filling).
    pub warmup: f64,
    /// Impulses written in this window are counted.
    pub measure: f64,
    /// Played after the window so nothing counted stays stuck in a buffer.
    pub tail: f64,
    /// Waited after the player stopped, for the last impulses to arrive.
    pub settle: f64,
}

/// An impulse the player wrote, and when it was heard.
#[derive(Debug, Clone, Copy)]
pub struct Pair {
    /// What the player wrote and predicted.
    pub prediction: Prediction,
    /// When it was heard (seconds on the shared epoch).
    pub heard: f64,
}

impl Pair {
    /// heard − predicted, in milliseconds.
    pub fn error_ms(&self) -> f64 {
        (self.heard - self.prediction.predicted) * 1e3
    }

    /// heard − the prediction from the last timing update without
    /// libpulse's interpolation ([`Prediction::raw_predicted`]), in ms.
    pub fn raw_error_ms(&self) -> Option<f64> {
        self.prediction
            .raw_predicted
            .map(|raw| (self.heard - raw) * 1e3)
    }

    /// heard − written, in milliseconds: how long the sample took from the
    /// application's write to the ear.
    pub fn delay_ms(&self) -> f64 {
        (self.heard - self.prediction.written) * 1e3
    }
}

/// The outcome of one measurement.
#[derive(Debug, Clone, Default)]
pub struct Measurement {
    /// Impulses written (with a latency) inside the window.
    pub played: usize,
    /// Those found in the recording.
    pub pairs: Vec<Pair>,
    /// Impulses the recorder heard between start and end of the run.
    pub detected: usize,
    /// Start and end of the counted window, seconds on the shared epoch.
    pub window: (f64, f64),
}

impl Measurement {
    /// Prediction errors in milliseconds.
    pub fn errors_ms(&self) -> Vec<f64> {
        self.pairs.iter().map(Pair::error_ms).collect()
    }

    /// Write-to-heard delays in milliseconds.
    pub fn delays_ms(&self) -> Vec<f64> {
        self.pairs.iter().map(Pair::delay_ms).collect()
    }

    /// Latencies the player was told, in milliseconds.
    pub fn reported_ms(&self) -> Vec<f64> {
        self.pairs
            .iter()
            .map(|p| p.prediction.reported * 1e3)
            .collect()
    }
}

/// Plays impulses per `config` for `phases`, calling `during` about every
/// second of it with the time elapsed (for sampling `pactl`), and pairs.
pub fn measure(
    recorder: &mut RecordProbe,
    config: PlayConfig,
    phases: Phases,
    mut during: impl FnMut(f64) -> Result<()>,
) -> Result<Measurement> {
    let coder = config.coder;
    let start = clock::now();
    let player = PlayProbe::start(config)?;
    let total = phases.warmup + phases.measure + phases.tail;
    loop {
        let elapsed = clock::now() - start;
        if elapsed >= total {
            break;
        }
        recorder.check()?;
        during(elapsed)?;
        thread::sleep(Duration::from_secs_f64((total - elapsed).clamp(0.0, 1.0)));
    }
    let predictions = player.stop()?;
    thread::sleep(Duration::from_secs_f64(phases.settle));
    recorder.check()?;
    let end = clock::now();
    let window = (
        start + phases.warmup,
        start + phases.warmup + phases.measure,
    );
    let counted: Vec<Prediction> = predictions
        .into_iter()
        .filter(|p| p.written >= window.0 && p.written < window.1)
        .collect();
    let heard: Vec<Impulse> = recorder
        .impulses(SMOOTHING_S)
        .into_iter()
        .filter(|i| i.heard >= start && i.heard <= end)
        .collect();
    Ok(Measurement {
        played: counted.len(),
        pairs: pair(&counted, &heard, &coder),
        detected: heard.len(),
        window,
    })
}

/// For each prediction, the heard impulse with its code closest in time.
/// Codes repeat every `CODES` periods, so the search reaches half that far.
pub fn pair(predictions: &[Prediction], heard: &[Impulse], coder: &Coder) -> Vec<Pair> {
    let reach = (Coder::CODES * coder.period_frames) as f64 / f64::from(crate::pa::RATE) / 2.0;
    predictions
        .iter()
        .filter_map(|p| {
            let code = p.index % Coder::CODES;
            heard
                .iter()
                .filter(|i| Coder::code(i.amplitude) == Some(code))
                .map(|i| (i.heard, (i.heard - p.predicted).abs()))
                .filter(|(_, d)| *d < reach)
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(heard, _)| Pair {
                    prediction: *p,
                    heard,
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_by_code_even_when_late_by_more_than_a_period() {
        let coder = Coder::every_ms(300);
        let predictions: Vec<Prediction> = (0..10)
            .map(|i| Prediction {
                index: i,
                written: i as f64 * 0.3,
                reported: 0.0,
                predicted: i as f64 * 0.3,
                raw_predicted: None,
            })
            .collect();
        // Everything 0.8 s late, impulse 4 lost.
        let heard: Vec<Impulse> = (0..10)
            .filter(|&i| i != 4)
            .map(|i| Impulse {
                frame: 0,
                amplitude: Coder::amplitude(i),
                heard: i as f64 * 0.3 + 0.8,
            })
            .collect();
        let pairs = pair(&predictions, &heard, &coder);
        assert_eq!(pairs.len(), 9);
        assert!(pairs.iter().all(|p| (p.error_ms() - 800.0).abs() < 1e-6));
    }
}
