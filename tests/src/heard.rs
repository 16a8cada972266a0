//! What a recording holds of a played pseudo-random signal: which frames
//! of the signal were heard, which more than once, and in which runs. Two
//! consecutive frames of the signal identify their position, so a recording
//! can be mapped back frame by frame whatever silence or gaps it holds.

use std::collections::HashMap;

use crate::{Recording, CHANNELS, RATE};

const FRAMES_PER_SEC: usize = RATE as usize;

/// Where each recorded frame came from in the played signal: for every
/// frame of `recording` whose next two frames equal two frames of `played`
/// (a pseudo-random signal, so two frames identify a position), that
/// position. Silence and partial frames map to nothing.
pub fn source_positions(played: &[i16], recording: &[i16]) -> Vec<(usize, usize)> {
    let key = |s: &[i16]| -> u64 {
        s.iter()
            .take(2 * CHANNELS)
            .fold(0u64, |k, &v| (k << 16) | u64::from(v as u16))
    };
    let frames = played.len() / CHANNELS;
    let mut index = HashMap::with_capacity(frames);
    for f in 0..frames.saturating_sub(1) {
        index.insert(key(&played[f * CHANNELS..]), f);
    }
    (0..(recording.len() / CHANNELS).saturating_sub(1))
        .filter_map(|r| index.get(&key(&recording[r * CHANNELS..])).map(|&p| (r, p)))
        .collect()
}

/// What a recording holds of a played signal.
#[derive(Debug)]
pub struct Heard {
    /// Frames of the signal heard at least once.
    pub frames: usize,
    /// Frames of the signal heard more than once.
    pub repeated: usize,
    /// Runs of consecutive signal positions, as (first, last) frames.
    pub segments: Vec<(usize, usize)>,
}

pub fn analyse(played: &[i16], recording: &Recording) -> Heard {
    let positions = source_positions(played, &recording.samples());
    let mut count: HashMap<usize, u32> = HashMap::new();
    let mut segments: Vec<(usize, usize)> = Vec::new();
    for &(_, p) in &positions {
        *count.entry(p).or_default() += 1;
        match segments.last_mut() {
            Some((_, last)) if p == *last + 1 => *last = p,
            _ => segments.push((p, p)),
        }
    }
    Heard {
        frames: count.len(),
        repeated: count.values().filter(|&&n| n > 1).count(),
        segments,
    }
}

pub fn secs(frames: usize) -> f64 {
    frames as f64 / FRAMES_PER_SEC as f64
}

pub fn segments_ms(h: &Heard) -> String {
    h.segments
        .iter()
        .filter(|(a, b)| b - a > 48)
        .map(|(a, b)| {
            format!(
                "{}..{} ms",
                a * 1000 / FRAMES_PER_SEC,
                b * 1000 / FRAMES_PER_SEC
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
