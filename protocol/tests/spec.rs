//! `StreamSpec` arithmetic.

use secure_tunnel_protocol::{SampleFormat, StreamSpec};

fn spec(format: SampleFormat, rate: u32, channels: usize) -> StreamSpec {
    StreamSpec {
        format,
        rate,
        channel_map: (1..=channels as u8).collect(),
    }
}

#[test]
fn sample_sizes_and_names() {
    assert_eq!(SampleFormat::S16Le.sample_size(), 2);
    assert_eq!(SampleFormat::S32Le.sample_size(), 4);
    assert_eq!(SampleFormat::F32Le.sample_size(), 4);
    assert_eq!(SampleFormat::S16Le.pulse_name(), "s16le");
    assert_eq!(SampleFormat::S32Le.pulse_name(), "s32le");
    assert_eq!(SampleFormat::F32Le.pulse_name(), "float32le");
}

#[test]
fn frame_size_and_rate() {
    let s = spec(SampleFormat::S16Le, 48_000, 2);
    assert_eq!(s.channels(), 2);
    assert_eq!(s.frame_size(), 4);
    assert_eq!(s.bytes_per_second(), 192_000);

    let s = spec(SampleFormat::F32Le, 44_100, 6);
    assert_eq!(s.channels(), 6);
    assert_eq!(s.frame_size(), 24);
    assert_eq!(s.bytes_per_second(), 1_058_400);

    let s = spec(SampleFormat::S32Le, 192_000, 8);
    assert_eq!(s.frame_size(), 32);
    assert_eq!(s.bytes_per_second(), 6_144_000);
}

#[test]
fn usec_to_bytes_rounds_down_to_whole_frames() {
    let s = spec(SampleFormat::S16Le, 48_000, 2);
    assert_eq!(s.usec_to_bytes(0), 0);
    assert_eq!(s.usec_to_bytes(1_000_000), 192_000);
    assert_eq!(s.usec_to_bytes(20_000), 3_840);
    // 48 kHz: one frame lasts 20.83 us, so 20 us is no frame, 21 us is one.
    assert_eq!(s.usec_to_bytes(20), 0);
    assert_eq!(s.usec_to_bytes(21), 4);
    assert_eq!(s.usec_to_bytes(41), 4);
    assert_eq!(s.usec_to_bytes(42), 8);

    // 44.1 kHz, 6 x f32: 1 ms is 44.1 frames, i.e. 44 whole frames.
    let s = spec(SampleFormat::F32Le, 44_100, 6);
    assert_eq!(s.usec_to_bytes(1_000), 44 * 24);
    for usec in [1, 7, 999, 12_345, 1_000_001] {
        assert_eq!(s.usec_to_bytes(usec) % 24, 0, "{usec} us");
    }
}

#[test]
fn bytes_to_usec_rounds_down() {
    let s = spec(SampleFormat::S16Le, 48_000, 2);
    assert_eq!(s.bytes_to_usec(0), 0);
    assert_eq!(s.bytes_to_usec(192_000), 1_000_000);
    assert_eq!(s.bytes_to_usec(3_840), 20_000);
    assert_eq!(s.bytes_to_usec(4), 20); // 20.83 us
    assert_eq!(s.bytes_to_usec(1), 5); // 5.2 us
    let s = spec(SampleFormat::F32Le, 44_100, 6);
    assert_eq!(s.bytes_to_usec(1_058_400 * 3), 3_000_000);
}

#[test]
fn conversions_are_consistent() {
    let s = spec(SampleFormat::S32Le, 44_100, 2);
    for usec in [0u64, 1, 999, 20_000, 1_000_000, 3_600_000_000] {
        let bytes = s.usec_to_bytes(usec);
        let back = s.bytes_to_usec(bytes);
        assert!(back <= usec, "{usec} -> {bytes} -> {back}");
        // Less than one frame is lost.
        assert!(usec - back <= 1_000_000 / 44_100 + 1, "{usec} -> {back}");
    }
}

#[test]
fn extreme_inputs_saturate_instead_of_wrapping() {
    let s = spec(SampleFormat::S16Le, 8_000, 1);
    assert_eq!(s.bytes_to_usec(u64::MAX), u64::MAX);
    // Just past 2^64 frames at an (unvalidated) absurd rate: a wrapping cast
    // would give 4293 frames.
    let s = spec(SampleFormat::S16Le, u32::MAX, 1);
    assert_eq!(s.usec_to_bytes(4_294_967_297_000_001), u64::MAX);
    let s = spec(SampleFormat::S32Le, 192_000, 8);
    assert_eq!(s.usec_to_bytes(u64::MAX), u64::MAX);
    // An unvalidated spec with no channels must not divide by zero.
    let empty = spec(SampleFormat::S16Le, 48_000, 0);
    assert_eq!(empty.frame_size(), 0);
    assert_eq!(empty.bytes_to_usec(10), 10_000_000);
    assert_eq!(empty.usec_to_bytes(10), 0);
}
