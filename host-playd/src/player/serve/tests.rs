//! The player's checks, driven as a compromised guest-facing process would
//! drive them, over the null TEST backend on a FAKE clock.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};

use secure_tunnel_protocol::{SampleFormat, StreamSpec};

use super::*;
use crate::backend::null::NullBackend;
use crate::clock::HostClock;

fn clock() -> (&'static AtomicU64, HostClock) {
    let now: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(1_000_000)));
    (now, HostClock::fake(now))
}

fn limits() -> PlayerLimits {
    PlayerLimits {
        max_streams: 3,
        min_latency_usec: 10_000,
        max_latency_usec: 500_000,
    }
}

fn spec() -> StreamSpec {
    StreamSpec {
        format: SampleFormat::S16Le,
        rate: 48_000,
        channel_map: vec![1, 2],
    }
}

fn open(id: StreamId, tlength_bytes: u32) -> Request {
    Request::Open {
        id,
        spec: spec(),
        tlength_bytes,
        volume_cap: NO_VOLUME_CAP,
        name: "guest".to_owned(),
    }
}

fn player() -> (&'static AtomicU64, Player<NullBackend>) {
    let (now, clock) = clock();
    (now, Player::new(NullBackend::new(clock, 0), limits()))
}

/// Opens `id` and returns the buffer the backend reported.
fn opened(p: &mut Player<NullBackend>, id: StreamId, tlength: u32) -> u32 {
    p.handle(0, open(id, tlength));
    p.collect_events();
    match p.take_outbox().as_slice() {
        [Report::Opened {
            id: got,
            buffer_bytes,
        }] if *got == id => *buffer_bytes,
        other => panic!("{other:?}"),
    }
}

/// The status the player would push at the fake clock's time.
fn status_now(p: &mut Player<NullBackend>, now: &AtomicU64) -> Option<Report> {
    p.status(now.load(Ordering::SeqCst))
}

fn failed(p: &mut Player<NullBackend>) -> Vec<(StreamId, String)> {
    p.collect_events();
    p.take_outbox()
        .into_iter()
        .filter_map(|r| match r {
            Report::Failed { id, reason } => Some((id, reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_valid_stream_opens_plays_and_reports_what_it_received() {
    let (now, mut p) = player();
    assert_eq!(opened(&mut p, 1, 19_200), 19_200);
    p.handle(
        0,
        Request::Write {
            id: 1,
            data: vec![0; 4_800],
        },
    );
    now.fetch_add(10_000, Ordering::SeqCst);
    let Some(Report::Status(entries)) = status_now(&mut p, now) else {
        panic!("no status")
    };
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].received_bytes, 4_800);
    assert!(entries[0].status.played_bytes > 0);
    p.handle(0, Request::Close { id: 1 });
    assert_eq!(p.streams(), 0);
    assert_eq!(p.next_status_usec(), None);
    now.fetch_add(STATUS_INTERVAL_USEC, Ordering::SeqCst);
    assert!(status_now(&mut p, now).is_none());
}

#[test]
fn buffers_are_clamped_to_the_policy_s_floor_and_cap() {
    let (_, mut p) = player();
    // 1 ms asked: raised to the 10 ms floor (1,920 bytes at 48 kHz s16 x2).
    assert_eq!(opened(&mut p, 1, 192), 1_920);
    // 10 s asked: cut to 500 ms.
    assert_eq!(opened(&mut p, 2, 1_920_000), 96_000);
    // An odd byte count comes back in whole frames.
    assert_eq!(opened(&mut p, 3, 20_003) % 4, 0);
}

#[test]
fn an_id_in_use_is_refused_and_others_open_in_any_order() {
    let (_, mut p) = player();
    opened(&mut p, 5, 19_200);
    p.handle(0, open(5, 19_200));
    let refused = failed(&mut p);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].1.contains("in use"), "{refused:?}");
    assert_eq!(p.streams(), 1);
    // Guests send their Hello in any order: ids need not grow.
    assert_eq!(opened(&mut p, 4, 19_200), 19_200);
    // A closed id may come back (it holds nothing any more).
    p.handle(0, Request::Close { id: 5 });
    assert_eq!(opened(&mut p, 5, 19_200), 19_200);
}

#[test]
fn invalid_streams_are_refused_before_the_backend_sees_them() {
    let (_, mut p) = player();
    let mut bad = spec();
    bad.rate = 1;
    p.handle(
        0,
        Request::Open {
            id: 1,
            spec: bad,
            tlength_bytes: 4_000,
            volume_cap: NO_VOLUME_CAP,
            name: String::new(),
        },
    );
    p.handle(
        0,
        Request::Open {
            id: 2,
            spec: spec(),
            tlength_bytes: 4_000,
            volume_cap: 101,
            name: String::new(),
        },
    );
    let mut none = spec();
    none.channel_map.clear();
    p.handle(
        0,
        Request::Open {
            id: 3,
            spec: none,
            tlength_bytes: 4_000,
            volume_cap: NO_VOLUME_CAP,
            name: String::new(),
        },
    );
    let refused = failed(&mut p);
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert_eq!(p.streams(), 0);
    assert_eq!(p.counters().refused, 3);
}

#[test]
fn no_more_streams_than_the_limit() {
    let (_, mut p) = player();
    for id in 1..=3 {
        opened(&mut p, id, 19_200);
    }
    p.handle(0, open(4, 19_200));
    let refused = failed(&mut p);
    assert_eq!(refused.len(), 1);
    assert!(refused[0].1.contains("maximum"), "{refused:?}");
    p.handle(0, Request::Close { id: 1 });
    assert_eq!(opened(&mut p, 5, 19_200), 19_200);
}

#[test]
fn opens_are_rate_limited() {
    let (now, clock) = clock();
    let mut p = Player::new(
        NullBackend::new(clock, 0),
        PlayerLimits {
            max_streams: 10_000,
            ..limits()
        },
    );
    let t = now.load(Ordering::SeqCst);
    for id in 1..=u64::from(OPENS_BURST) + 10 {
        p.handle(t, open(id, 19_200));
        p.handle(t, Request::Close { id });
    }
    let refused = failed(&mut p);
    assert_eq!(refused.len(), 10, "{refused:?}");
    // A second later the bucket has refilled.
    p.handle(t + 1_000_000, open(100_000, 19_200));
    assert!(failed(&mut p).is_empty());
}

#[test]
fn audio_must_be_whole_frames_after_open_within_the_credit() {
    let (_, mut p) = player();
    // Before Opened was reported: the stream fails.
    p.handle(0, open(1, 19_200));
    p.handle(
        0,
        Request::Write {
            id: 1,
            data: vec![0; 4],
        },
    );
    let f = failed(&mut p);
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].1.contains("before the stream opened"), "{f:?}");
    assert_eq!(p.streams(), 0);

    opened(&mut p, 2, 19_200);
    p.handle(
        0,
        Request::Write {
            id: 2,
            data: vec![0; 6],
        },
    );
    let f = failed(&mut p);
    assert!(f[0].1.contains("whole frames"), "{f:?}");

    // Far ahead of what was played: 2 buffers plus a chunk at most.
    opened(&mut p, 3, 19_200);
    let limit = 2 * 19_200 + MAX_AUDIO_CHUNK;
    let mut sent = 0;
    while sent + 4_800 <= limit {
        p.handle(
            0,
            Request::Write {
                id: 3,
                data: vec![0; 4_800],
            },
        );
        sent += 4_800;
    }
    assert!(failed(&mut p).is_empty(), "within the bound");
    p.handle(
        0,
        Request::Write {
            id: 3,
            data: vec![0; 4_800],
        },
    );
    let f = failed(&mut p);
    assert!(f[0].1.contains("ahead of what was played"), "{f:?}");
    // Later audio for the failed stream is dropped and counted.
    p.handle(
        0,
        Request::Write {
            id: 3,
            data: vec![0; 4],
        },
    );
    assert!(failed(&mut p).is_empty());
    assert!(p.counters().unknown_stream >= 1);
}

#[test]
fn a_control_flood_fails_only_the_flooded_stream() {
    let (now, mut p) = player();
    opened(&mut p, 1, 19_200);
    opened(&mut p, 2, 19_200);
    let t = now.load(Ordering::SeqCst);
    for i in 0..u64::from(CONTROL_BURST) + 1 {
        p.handle(
            t,
            Request::Cork {
                id: 1,
                corked: i % 2 == 0,
            },
        );
    }
    let f = failed(&mut p);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].0, 1);
    assert!(f[0].1.contains("control requests"), "{f:?}");
    // The other stream plays on.
    p.handle(
        t,
        Request::Write {
            id: 2,
            data: vec![0; 4_800],
        },
    );
    assert!(failed(&mut p).is_empty());
    assert_eq!(p.streams(), 1);
}

#[test]
fn requests_for_streams_it_does_not_hold_do_nothing() {
    let (_, mut p) = player();
    for request in [
        Request::Write {
            id: 9,
            data: vec![0; 4],
        },
        Request::Cork {
            id: 9,
            corked: true,
        },
        Request::Flush { id: 9 },
        Request::SetBuffer {
            id: 9,
            tlength_bytes: 1,
        },
        Request::Close { id: 9 },
    ] {
        p.handle(0, request);
    }
    assert!(failed(&mut p).is_empty());
    assert_eq!(p.counters().unknown_stream, 5);
}

#[test]
fn a_flush_counts_the_dropped_audio_as_played() {
    let (_, mut p) = player();
    opened(&mut p, 1, 19_200);
    let limit = 2 * 19_200 + MAX_AUDIO_CHUNK;
    let mut sent = 0;
    while sent + 4_800 <= limit {
        p.handle(
            0,
            Request::Write {
                id: 1,
                data: vec![0; 4_800],
            },
        );
        sent += 4_800;
    }
    p.handle(0, Request::Flush { id: 1 });
    p.handle(
        0,
        Request::Write {
            id: 1,
            data: vec![0; 4_800],
        },
    );
    assert!(failed(&mut p).is_empty());
}

#[test]
fn status_goes_out_when_the_stream_can_take_more_or_when_due() {
    let (now, mut p) = player();
    opened(&mut p, 1, 19_200);
    // The first snapshot: the whole buffer is writable.
    let first = now.load(Ordering::SeqCst);
    assert!(status_now(&mut p, now).is_some());
    assert_eq!(p.next_status_usec(), Some(first + STATUS_INTERVAL_USEC));
    // Nothing changed: only the periodic one, once its period is up.
    assert!(status_now(&mut p, now).is_none());
    now.fetch_add(STATUS_INTERVAL_USEC - 1, Ordering::SeqCst);
    assert!(status_now(&mut p, now).is_none());
    now.fetch_add(1, Ordering::SeqCst);
    assert!(status_now(&mut p, now).is_some());
    // Audio written and then played out: room again, sent at once, well
    // within the period.
    p.handle(
        0,
        Request::Write {
            id: 1,
            data: vec![0; 4_800],
        },
    );
    assert!(
        status_now(&mut p, now).is_none(),
        "writing only shrinks the room"
    );
    now.fetch_add(10_000, Ordering::SeqCst);
    assert!(status_now(&mut p, now).is_some());
    // A status sent for room restarts the stream's period.
    let sent = now.load(Ordering::SeqCst);
    assert_eq!(p.next_status_usec(), Some(sent + STATUS_INTERVAL_USEC));
}

#[test]
fn between_periodic_snapshots_only_streams_with_more_room_are_sent() {
    let (now, mut p) = player();
    opened(&mut p, 1, 19_200);
    opened(&mut p, 2, 19_200);
    assert!(matches!(status_now(&mut p, now), Some(Report::Status(e)) if e.len() == 2));
    p.handle(
        0,
        Request::Write {
            id: 1,
            data: vec![0; 960],
        },
    );
    now.fetch_add(10_000, Ordering::SeqCst);
    match status_now(&mut p, now) {
        Some(Report::Status(e)) => assert_eq!(e.iter().map(|e| e.id).collect::<Vec<_>>(), [1]),
        other => panic!("{other:?}"),
    }
    // Each stream keeps its own period: stream 2 falls due 20 ms after its
    // last status; stream 1 (its 5 ms played out, no more room) 10 ms later.
    now.fetch_add(STATUS_INTERVAL_USEC - 10_000, Ordering::SeqCst);
    match status_now(&mut p, now) {
        Some(Report::Status(e)) => assert_eq!(e.iter().map(|e| e.id).collect::<Vec<_>>(), [2]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_rewind_takes_the_received_position_back_within_the_rules() {
    let (now, mut p) = player();
    opened(&mut p, 1, 19_200);
    let write = |p: &mut Player<NullBackend>, n: usize| {
        p.handle(
            0,
            Request::Write {
                id: 1,
                data: vec![0; n],
            },
        );
    };
    write(&mut p, 9_600);
    write(&mut p, 9_600);
    p.handle(
        0,
        Request::Rewind {
            id: 1,
            bytes: 9_600,
        },
    );
    now.fetch_add(1_000, Ordering::SeqCst);
    let Some(Report::Status(entries)) = status_now(&mut p, now) else {
        panic!("no status")
    };
    assert_eq!(entries[0].received_bytes, 9_600);
    assert!(failed(&mut p).is_empty());
    // Part of a frame, or more than was received: the stream fails.
    p.handle(0, Request::Rewind { id: 1, bytes: 2 });
    assert_eq!(failed(&mut p).len(), 1);
    opened(&mut p, 2, 19_200);
    p.handle(
        0,
        Request::Write {
            id: 2,
            data: vec![0; 400],
        },
    );
    p.handle(0, Request::Rewind { id: 2, bytes: 404 });
    let failures = failed(&mut p);
    assert_eq!(failures.len(), 1);
    assert!(failures[0].1.contains("rewind"), "{failures:?}");
}

#[test]
fn a_rewind_flood_fails_only_the_flooded_stream() {
    let (_, mut p) = player();
    opened(&mut p, 1, 19_200);
    opened(&mut p, 2, 19_200);
    for _ in 0..(CONTROL_BURST + 1) {
        p.handle(0, Request::Rewind { id: 1, bytes: 0 });
    }
    let failures = failed(&mut p);
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].0, 1);
    assert_eq!(p.streams(), 1);
}
