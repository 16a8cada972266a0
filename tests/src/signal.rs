//! Test signals and the comparisons made on recordings. Everything is
//! interleaved s16 stereo; positions are in samples unless named frames.

use crate::CHANNELS;

/// Deterministic noise from a xorshift32 generator. Every sample is at least
/// 256 away from zero so a run of silence can never be mistaken for it and
/// `find_offset` cannot lock onto the silence before the signal.
pub fn pseudo_random(seed: u32, frames: usize) -> Vec<i16> {
    let mut state = seed.max(1);
    (0..frames * CHANNELS)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let v = (state >> 16) as u16 as i16;
            if v.unsigned_abs() < 256 {
                v.wrapping_add(if v < 0 { -256 } else { 256 })
            } else {
                v
            }
        })
        .collect()
}

/// `frames` of digital silence.
pub fn silence(frames: usize) -> Vec<i16> {
    vec![0; frames * CHANNELS]
}

/// Silence with a burst of `burst_frames` at `amplitude` every
/// `period_frames`, the first one after one period (so a recorder catches the
/// silence before it).
pub fn impulse_train(
    frames: usize,
    period_frames: usize,
    burst_frames: usize,
    amplitude: i16,
) -> Vec<i16> {
    let mut s = silence(frames);
    let mut start = period_frames;
    while start + burst_frames <= frames {
        s[start * CHANNELS..(start + burst_frames) * CHANNELS].fill(amplitude);
        start += period_frames;
    }
    s
}

/// Frame indices where an impulse starts: the first frame whose magnitude
/// reaches `threshold` after at least `min_silence_frames` quieter frames.
pub fn detect_impulses(samples: &[i16], threshold: i16, min_silence_frames: usize) -> Vec<usize> {
    let mut found = Vec::new();
    let mut quiet = 0usize;
    for (frame, f) in samples.chunks_exact(CHANNELS).enumerate() {
        let loud = f
            .iter()
            .any(|s| s.unsigned_abs() >= threshold.unsigned_abs());
        if loud {
            if quiet >= min_silence_frames {
                found.push(frame);
            }
            quiet = 0;
        } else {
            quiet += 1;
        }
    }
    found
}

/// Little-endian bytes of `samples`.
pub fn to_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// Samples of little-endian `bytes` (a trailing odd byte is ignored).
pub fn from_bytes(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// Sample index (frame aligned) where `needle` starts in `haystack`.
pub fn find_offset(haystack: &[i16], needle: &[i16]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    (0..=haystack.len() - needle.len())
        .step_by(CHANNELS)
        .find(|&i| haystack[i] == needle[0] && haystack[i..i + needle.len()] == *needle)
}

/// The first index where `expected` and `actual` differ, with both values
/// (`None` for the shorter side). `None` if they are identical.
pub fn first_mismatch(
    expected: &[i16],
    actual: &[i16],
) -> Option<(usize, Option<i16>, Option<i16>)> {
    let n = expected.len().max(actual.len());
    (0..n)
        .map(|i| (i, expected.get(i).copied(), actual.get(i).copied()))
        .find(|(_, e, a)| e != a)
}

/// Checks that `played` appears bit-exact in `recording`. Locates it by its
/// first `prefix_frames`; returns the sample offset where it starts.
pub fn locate_bit_exact(
    recording: &[i16],
    played: &[i16],
    prefix_frames: usize,
) -> Result<usize, String> {
    let prefix = &played[..(prefix_frames * CHANNELS).min(played.len())];
    let offset = find_offset(recording, prefix).ok_or_else(|| {
        format!(
            "the first {prefix_frames} frames of the played signal are nowhere in the {} recorded frames \
             (recording has {} non-zero samples)",
            recording.len() / CHANNELS,
            recording.iter().filter(|&&s| s != 0).count()
        )
    })?;
    let end = (offset + played.len()).min(recording.len());
    match first_mismatch(played, &recording[offset..end]) {
        None => Ok(offset),
        Some((i, e, a)) => Err(format!(
            "signal found at sample {offset} but differs at played sample {i} (frame {}): \
             expected {e:?}, recorded {a:?}; {} of {} samples recorded after the offset",
            i / CHANNELS,
            end - offset,
            played.len()
        )),
    }
}

/// The median of `values` (`None` when empty).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_deterministic_and_never_near_zero() {
        let a = pseudo_random(7, 48_000);
        assert_eq!(a, pseudo_random(7, 48_000));
        assert_ne!(a, pseudo_random(8, 48_000));
        assert!(a.iter().all(|s| s.unsigned_abs() >= 256));
    }

    #[test]
    fn finds_a_signal_after_silence_and_reports_a_mismatch() {
        let played = pseudo_random(1, 1000);
        let mut rec = silence(300);
        rec.extend_from_slice(&played);
        rec.extend(silence(10));
        assert_eq!(locate_bit_exact(&rec, &played, 64), Ok(600));
        rec[600 + 777] ^= 1;
        let err = locate_bit_exact(&rec, &played, 64).expect_err("a flipped bit");
        assert!(err.contains("played sample 777"), "{err}");
    }

    #[test]
    fn truncated_recording_is_a_mismatch() {
        let played = pseudo_random(1, 100);
        let rec = played[..150].to_vec();
        let err = locate_bit_exact(&rec, &played, 10).expect_err("a short recording");
        assert!(err.contains("played sample 150"), "{err}");
    }

    #[test]
    fn impulses_are_found_where_they_were_put() {
        let s = impulse_train(48_000 * 2, 24_000, 48, 20_000);
        assert_eq!(
            detect_impulses(&s, 8_000, 2_400),
            vec![24_000, 48_000, 72_000]
        );
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
