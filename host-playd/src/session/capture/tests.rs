//! The capture state machine on a fake clock: host times are plain numbers
//! passed in, so an hour of recording runs in milliseconds.
#![allow(clippy::unwrap_used)]

use super::*;
use secure_tunnel_protocol::SampleFormat;

const MS: u64 = 1_000;
const SEC: u64 = 1_000_000;
/// 48 kHz stereo s16.
const BYTES_PER_MS: usize = 192;

fn spec() -> StreamSpec {
    StreamSpec {
        format: SampleFormat::S16Le,
        rate: 48_000,
        channel_map: vec![1, 2],
    }
}

fn capture(permitted: bool, quantum_usec: u64) -> Capture {
    Capture::new(spec(), "mic".into(), 40 * MS, permitted, quantum_usec)
}

fn chunk(at: u64, ms: usize) -> Captured {
    Captured {
        host_time_usec: at,
        delay_usec: 5_000,
        data: vec![7; ms * BYTES_PER_MS],
    }
}

fn states(out: &[Action]) -> Vec<CaptureState> {
    out.iter()
        .filter_map(|a| match a {
            Action::Send(HostMessage::CaptureState { state }) => Some(*state),
            _ => None,
        })
        .collect()
}

fn opens(out: &[Action]) -> usize {
    out.iter()
        .filter(|a| matches!(a, Action::OpenCapture(_)))
        .count()
}

fn closes(out: &[Action]) -> usize {
    out.iter()
        .filter(|a| matches!(a, Action::CloseCapture))
        .count()
}

fn data_bytes(out: &[Action]) -> usize {
    out.iter()
        .map(|a| match a {
            Action::Send(HostMessage::CaptureData(d)) => d.len(),
            _ => 0,
        })
        .sum()
}

fn clocks(out: &[Action]) -> Vec<CaptureReport> {
    out.iter()
        .filter_map(|a| match a {
            Action::Send(HostMessage::CaptureClock(r)) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

/// Asks, and the recording stream opens.
fn attached(c: &mut Capture, now: u64, out: &mut Vec<Action>) {
    c.ask(now, true, out);
    assert_eq!(opens(out), 1, "{out:?}");
    c.opened(now + MS, out);
    assert_eq!(c.state(), Some(CaptureState::Attached));
}

#[test]
fn nothing_is_recorded_until_the_guest_asks() {
    let mut c = capture(true, 0);
    let mut out = Vec::new();
    c.start(0, &mut out);
    assert_eq!(states(&out), [CaptureState::Idle]);
    for t in 1..100 {
        c.tick(t * 10 * MS, &mut out);
    }
    assert_eq!(opens(&out), 0);
    assert!(!c.recording());
    // Audio the backend might still deliver is not forwarded.
    c.captured(chunk(SEC, 10), &mut out);
    assert_eq!(data_bytes(&out), 0);
}

#[test]
fn asking_opens_and_cork_closes_at_once() {
    let mut c = capture(true, 0);
    let mut out = Vec::new();
    c.start(0, &mut out);
    attached(&mut c, 10 * MS, &mut out);
    assert_eq!(
        states(&out),
        [CaptureState::Idle, CaptureState::Attached],
        "Attached only once the stream is open"
    );
    out.clear();
    c.ask(SEC, false, &mut out);
    assert_eq!(closes(&out), 1);
    assert_eq!(states(&out), [CaptureState::Idle]);
    assert!(!c.recording());
}

#[test]
fn under_grant_nothing_opens_until_granted_and_a_revoke_closes_at_once() {
    let mut c = capture(false, 0);
    let mut out = Vec::new();
    c.start(0, &mut out);
    c.ask(MS, true, &mut out);
    assert_eq!(opens(&out), 0);
    assert_eq!(c.state(), Some(CaptureState::AwaitingGrant));
    for t in 1..50 {
        c.tick(t * 20 * MS, &mut out);
    }
    assert_eq!(opens(&out), 0, "recording without a grant");

    out.clear();
    c.permit(SEC, true, &mut out);
    assert_eq!(opens(&out), 1);
    c.opened(SEC + MS, &mut out);
    assert_eq!(c.state(), Some(CaptureState::Attached));

    out.clear();
    c.permit(2 * SEC, false, &mut out);
    assert_eq!(closes(&out), 1, "a revoke closes in the same step");
    assert_eq!(states(&out), [CaptureState::AwaitingGrant]);
    // Audio still in flight from the closed stream goes nowhere.
    c.captured(chunk(2 * SEC, 10), &mut out);
    assert_eq!(data_bytes(&out), 0);
}

#[test]
fn a_grant_during_opening_then_revoked_closes_the_half_open_stream() {
    let mut c = capture(true, 0);
    let mut out = Vec::new();
    c.start(0, &mut out);
    c.ask(MS, true, &mut out);
    assert_eq!(opens(&out), 1);
    c.permit(2 * MS, false, &mut out);
    assert_eq!(closes(&out), 1);
    // The late Opened of the stream that was closed changes nothing.
    out.clear();
    c.opened(3 * MS, &mut out);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(c.state(), Some(CaptureState::AwaitingGrant));
}

#[test]
fn audio_goes_out_only_within_credit_and_the_queue_holds_the_stall_slack() {
    let mut c = capture(true, 0);
    let mut out = Vec::new();
    c.start(0, &mut out);
    attached(&mut c, 0, &mut out);
    out.clear();
    // No credit: everything waits, at most one buffer (40 ms here) or the
    // stall slack (500 ms), whichever is longer.
    for i in 0..100 {
        c.captured(chunk(10 * MS + i * 10 * MS, 10), &mut out);
    }
    assert_eq!(data_bytes(&out), 0);
    let dropped = c.dropped_bytes() as usize;
    assert_eq!(dropped, 1000 * BYTES_PER_MS - 500 * BYTES_PER_MS);
    // Credit for 25 ms: exactly that goes out, in whole frames.
    c.credit(25 * BYTES_PER_MS as u64, &mut out).unwrap();
    assert_eq!(data_bytes(&out), 25 * BYTES_PER_MS);
    // Stale credit cannot shrink it, a repeat cannot inflate it.
    out.clear();
    c.credit(BYTES_PER_MS as u64, &mut out).unwrap();
    c.credit(25 * BYTES_PER_MS as u64, &mut out).unwrap();
    assert_eq!(data_bytes(&out), 0);
    assert!(c.credit(25 * BYTES_PER_MS as u64 + 2, &mut out).is_err());
    // A credit far beyond what exists sends what exists, nothing more.
    c.credit(u64::MAX / 4 * 4, &mut out).unwrap();
    assert_eq!(data_bytes(&out), 475 * BYTES_PER_MS);
    assert_eq!(c.sent_bytes(), 500 * BYTES_PER_MS as u64);
}

#[test]
fn credit_raised_a_frame_at_a_time_gets_fragments_not_a_message_per_frame() {
    let mut c = capture(true, 0);
    let mut out = Vec::new();
    c.start(0, &mut out);
    attached(&mut c, 0, &mut out);
    out.clear();
    c.captured(chunk(10 * MS, 40), &mut out);
    for i in 1..=(40 * BYTES_PER_MS as u64 / 4) {
        c.credit(i * 4, &mut out).unwrap();
    }
    let messages = out
        .iter()
        .filter(|a| matches!(a, Action::Send(HostMessage::CaptureData(_))))
        .count();
    assert_eq!(data_bytes(&out), 40 * BYTES_PER_MS);
    // 40 ms in 10 ms fragments.
    assert_eq!(messages, 4, "{messages} messages for 1,920 credits");
}

#[test]
fn clock_reports_come_every_20_ms_while_attached_and_say_when_the_source_stalls() {
    let mut c = capture(true, 0);
    let mut out = Vec::new();
    c.start(0, &mut out);
    attached(&mut c, 0, &mut out);
    c.credit(1 << 40, &mut out).unwrap();
    out.clear();
    let mut t = 10 * MS;
    while t < 2 * SEC {
        c.captured(chunk(t, 10), &mut out);
        c.tick(t + 5 * MS, &mut out);
        t += 10 * MS;
    }
    let reports = clocks(&out);
    assert!(reports.len() >= 95, "{} reports in 2 s", reports.len());
    for pair in reports.windows(2) {
        assert!(pair[1].host_time_usec >= pair[0].host_time_usec);
        assert!(pair[1].sent_bytes >= pair[0].sent_bytes);
        assert!(pair[1].host_time_usec - pair[0].host_time_usec <= 20 * MS + 5 * MS);
    }
    assert!(reports.iter().all(|r| r.running));
    // The source goes quiet: one report says it stopped, then silence.
    out.clear();
    for i in 1..100 {
        c.tick(t + i * 10 * MS, &mut out);
    }
    let reports = clocks(&out);
    assert_eq!(
        reports.iter().filter(|r| !r.running).count(),
        1,
        "{reports:?}"
    );
    assert!(reports.last().is_some_and(|r| !r.running));
}

#[test]
fn the_delay_counts_the_device_and_what_waits_for_credit() {
    let mut c = capture(true, 0);
    let mut out = Vec::new();
    c.start(0, &mut out);
    attached(&mut c, 0, &mut out);
    out.clear();
    // 20 ms queued (no credit) plus the device's 5 ms.
    c.captured(chunk(100 * MS, 20), &mut out);
    let r = clocks(&out).last().unwrap().clone();
    assert_eq!(r.host_time_usec, 100 * MS);
    assert_eq!(r.sent_bytes, 0);
    assert_eq!(r.delay_usec, 25_000);
    assert!(r.running);
}

#[test]
fn a_failed_source_is_unavailable_and_retried_later_or_when_asked_again() {
    let mut c = capture(true, 0);
    let mut out = Vec::new();
    c.start(0, &mut out);
    c.ask(0, true, &mut out);
    c.failed(MS, &mut out);
    assert_eq!(c.state(), Some(CaptureState::Unavailable));
    out.clear();
    c.tick(RETRY_USEC / 2, &mut out);
    assert_eq!(opens(&out), 0, "retried too soon");
    c.tick(MS + RETRY_USEC, &mut out);
    assert_eq!(opens(&out), 1, "not retried");
    c.failed(MS + RETRY_USEC + MS, &mut out);
    // Cork and Uncork again: a retry now (past the reopen interval).
    out.clear();
    c.ask(RETRY_USEC + SEC, false, &mut out);
    c.ask(RETRY_USEC + SEC, true, &mut out);
    assert_eq!(opens(&out), 1);
}

#[test]
fn a_cork_uncork_flood_opens_the_recording_stream_at_most_four_times_a_second() {
    let mut c = capture(true, 0);
    let mut out = Vec::new();
    c.start(0, &mut out);
    // 10,000 toggles in 1 s, the stream opening at once each time.
    for i in 0..10_000u64 {
        let now = i * 100;
        c.ask(now, i % 2 == 0, &mut out);
        if c.recording() {
            c.opened(now, &mut out);
        }
        c.tick(now, &mut out);
    }
    let opened = opens(&out);
    assert!((1..=5).contains(&opened), "{opened} opens in 1 s");
    assert_eq!(closes(&out), opened, "every open closed");
    // The last wish wins once the interval has passed.
    out.clear();
    c.ask(SEC, true, &mut out);
    c.tick(SEC + MIN_REOPEN_USEC, &mut out);
    assert!(c.recording());
    assert_eq!(opens(&out), 1);
}

#[test]
fn privacy_rounding_moves_the_capture_head_by_less_than_a_quantum() {
    let q = 10 * MS;
    let mut c = capture(true, q);
    let mut out = Vec::new();
    c.start(0, &mut out);
    attached(&mut c, 0, &mut out);
    c.credit(1 << 40, &mut out).unwrap();
    let mut t = 3_217;
    for _ in 0..500 {
        c.captured(
            Captured {
                host_time_usec: t,
                delay_usec: 4_321,
                data: vec![1; 10 * BYTES_PER_MS],
            },
            &mut out,
        );
        c.tick(t + 3_000, &mut out);
        t += 10_013;
    }
    let reports = clocks(&out);
    assert!(!reports.is_empty());
    for r in &reports {
        assert_eq!(r.host_time_usec % q, 0, "{r:?}");
        assert_eq!(u64::from(r.delay_usec) % q, 0, "{r:?}");
    }
}

#[test]
fn an_hour_of_recording_loses_nothing_when_the_guest_keeps_up() {
    let mut c = capture(true, 0);
    let mut out = Vec::new();
    c.start(0, &mut out);
    attached(&mut c, 0, &mut out);
    let mut given = 0u64;
    let mut recorded = 0u64;
    let mut last_report = 0u64;
    let mut longest_gap = 0u64;
    let mut t = 0u64;
    while t < 3_600 * SEC {
        out.clear();
        // The guest reads what it got and grants 80 ms ahead.
        c.credit(given + 80 * BYTES_PER_MS as u64, &mut out)
            .unwrap();
        c.captured(chunk(t, 10), &mut out);
        recorded += 10 * BYTES_PER_MS as u64;
        c.tick(t + 5 * MS, &mut out);
        given += data_bytes(&out) as u64;
        for r in clocks(&out) {
            longest_gap = longest_gap.max(r.host_time_usec - last_report);
            last_report = r.host_time_usec;
        }
        t += 10 * MS;
    }
    assert_eq!(c.dropped_bytes(), 0);
    assert_eq!(given, recorded);
    assert_eq!(c.sent_bytes(), given);
    assert!(longest_gap <= 20 * MS, "{longest_gap} µs between reports");
}
