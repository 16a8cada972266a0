//! The engine driven by commands on a FAKE clock, with the null backend:
//! deadlines, budgets and per-identity state, hours simulated in
//! milliseconds.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::AtomicU64;

use secure_tunnel_protocol::{Hello, SampleFormat, StreamSpec, MAGIC};

use super::*;
use crate::admission::HandshakeSlots;
use crate::backend::null::NullBackend;
use crate::io::IoChannel;
use crate::policy::StreamLimits;

const SEC: u64 = 1_000_000;

struct Rig {
    engine: Engine<NullBackend>,
    io: IoChannel,
    now: &'static AtomicU64,
}

impl Rig {
    fn new(idle: Option<Duration>, limits: StreamLimits) -> Rig {
        let now: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(SEC)));
        let clock = HostClock::fake(now);
        let config = EngineConfig {
            max_clients: 4,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: idle,
            policy: Arc::new(Policy {
                default_limits: limits,
                ..Policy::default()
            }),
            capture_source: None,
        };
        Rig {
            engine: Engine::new(NullBackend::new(clock, 0), clock, config),
            io: IoChannel::new().unwrap(),
            now,
        }
    }

    fn at(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    fn advance(&mut self, usec: u64) {
        self.now.fetch_add(usec, Ordering::SeqCst);
        self.engine.backend_events();
        self.engine.poll_sessions();
    }

    fn connect(&mut self, id: ClientId, uid: u32, slot: Option<HandshakeSlot>) {
        self.engine.command(Command::Connect {
            id,
            peer: format!("test peer {id}"),
            listener: "unix:/test/guest.sock".to_owned(),
            identity: PeerIdentity::Unix {
                uid,
                gid: uid,
                pid: 1,
            },
            outgoing: self.io.outgoing(id),
            slot,
        });
    }

    fn send(&mut self, id: ClientId, message: GuestMessage) {
        let at_usec = self.at();
        self.engine.command(Command::Message {
            id,
            message,
            at_usec,
        });
        self.engine.backend_events();
    }

    fn hello(&mut self, id: ClientId, target_latency_usec: u32) {
        self.send(
            id,
            GuestMessage::Hello(Hello {
                magic: MAGIC,
                version: secure_tunnel_protocol::PROTOCOL_VERSION,
                spec: StreamSpec {
                    format: SampleFormat::S16Le,
                    rate: 48_000,
                    channel_map: vec![1, 2],
                },
                target_latency_usec,
                stream_name: "guest".into(),
            }),
        );
    }

    fn sent(&self) -> Vec<(ClientId, Option<HostMessage>)> {
        self.io.sent()
    }
}

fn accepted(sent: &[(ClientId, Option<HostMessage>)], id: ClientId) -> Option<u32> {
    sent.iter().find_map(|(who, m)| match m {
        Some(HostMessage::Accept(a)) if *who == id => Some(a.buffer_bytes),
        _ => None,
    })
}

fn closed(sent: &[(ClientId, Option<HostMessage>)], id: ClientId) -> bool {
    sent.iter().any(|(who, m)| *who == id && m.is_none())
}

#[test]
fn a_silent_connection_is_closed_at_its_handshake_timeout_and_frees_its_slot() {
    let mut rig = Rig::new(None, StreamLimits::default());
    let slots = HandshakeSlots::new(1, 8);
    let slot = slots.acquire(IdentityKey::Uid(1000)).unwrap();
    rig.connect(1, 1000, Some(slot));
    assert!(slots.acquire(IdentityKey::Uid(1000)).is_err(), "slot held");
    rig.advance(4 * SEC + 900_000);
    assert!(!closed(&rig.sent(), 1), "not before 5 s");
    rig.advance(200_000);
    assert!(closed(&rig.sent(), 1), "closed at 5 s");
    assert_eq!(slots.held(), (0, 0), "slot and identity entry gone");
    assert!(rig.engine.clients.is_empty());
    assert!(
        rig.engine.connections.is_empty(),
        "no per-identity state left"
    );
}

#[test]
fn the_slot_is_freed_once_the_stream_opens() {
    let mut rig = Rig::new(None, StreamLimits::default());
    let slots = HandshakeSlots::new(1, 8);
    rig.connect(
        1,
        1000,
        Some(slots.acquire(IdentityKey::Uid(1000)).unwrap()),
    );
    rig.hello(1, 20_000);
    assert!(accepted(&rig.sent(), 1).is_some());
    assert_eq!(slots.held(), (0, 0));
}

#[test]
fn a_pinging_guest_lives_for_hours_and_a_silent_one_is_closed_at_its_idle_timeout() {
    let mut rig = Rig::new(Some(Duration::from_secs(10)), StreamLimits::default());
    rig.connect(1, 1000, None);
    rig.hello(1, 20_000);
    assert!(accepted(&rig.sent(), 1).is_some());
    // Two simulated hours of pings, one a second, the guest reading.
    for _ in 0..7200 {
        rig.advance(SEC);
        let guest_time_usec = rig.at();
        rig.send(1, GuestMessage::Ping { guest_time_usec });
        assert!(!closed(&rig.sent(), 1), "a pinging guest is not idle");
    }
    rig.advance(9 * SEC);
    assert!(!closed(&rig.sent(), 1));
    rig.advance(SEC);
    let sent = rig.sent();
    assert!(closed(&sent, 1), "closed after 10 s of silence");
    assert!(sent.iter().any(|(_, m)| matches!(
        m,
        Some(HostMessage::Goodbye { reason }) if reason.contains("idle")
    )));
}

#[test]
fn tiny_latency_requests_are_raised_to_the_floor() {
    let mut rig = Rig::new(None, StreamLimits::default());
    rig.connect(1, 1000, None);
    rig.hello(1, 1_000);
    // 10 ms of 48 kHz stereo s16.
    assert_eq!(accepted(&rig.sent(), 1), Some(1_920));
    let mut rig = Rig::new(
        None,
        StreamLimits {
            min_latency_usec: Some(25_000),
            ..StreamLimits::default()
        },
    );
    rig.connect(1, 1000, None);
    rig.hello(1, 1_000);
    assert_eq!(accepted(&rig.sent(), 1), Some(4_800));
}

#[test]
fn streams_per_identity_are_capped_and_counts_go_with_the_last_connection() {
    let limits = StreamLimits {
        max_streams: Some(1),
        ..StreamLimits::default()
    };
    let mut rig = Rig::new(None, limits);
    rig.connect(1, 1000, None);
    rig.hello(1, 20_000);
    rig.connect(2, 1000, None);
    rig.hello(2, 20_000);
    rig.connect(3, 1001, None);
    rig.hello(3, 20_000);
    let sent = rig.sent();
    assert!(accepted(&sent, 1).is_some());
    assert!(sent.iter().any(|(who, m)| *who == 2
        && matches!(
            m,
            Some(HostMessage::Reject {
                reason: RejectReason::TooManyClients,
                ..
            })
        )));
    assert!(accepted(&sent, 3).is_some(), "another identity still plays");
    assert_eq!(rig.engine.connections.len(), 2);
    for id in [1, 3] {
        rig.engine.command(Command::Disconnected { id });
    }
    assert!(rig.engine.clients.is_empty());
    assert!(rig.engine.connections.is_empty());
}

#[test]
fn an_over_budget_guest_is_told_why_and_closed() {
    let mut rig = Rig::new(None, StreamLimits::default());
    rig.connect(1, 1000, None);
    rig.hello(1, 20_000);
    rig.engine.command(Command::OverBudget {
        id: 1,
        reason: "over budget: more than 20 control messages per second".into(),
    });
    let sent = rig.sent();
    assert!(sent.iter().any(|(_, m)| matches!(
        m,
        Some(HostMessage::Goodbye { reason }) if reason.contains("over budget")
    )));
    assert!(closed(&sent, 1));
}
