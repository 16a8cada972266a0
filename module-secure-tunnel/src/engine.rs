//! What the sink's IO thread does, in safe Rust: when to render, where the
//! audio goes, what the latency is, and the life of the connection. The thin
//! FFI layer in `pulse/` calls it with the current time and the poll results.
//!
//! Two modes:
//! - **connected**: render exactly what the host has granted (flow control),
//!   so the guest follows the host's clock; latency comes from the host's
//!   clock reports.
//! - **disconnected**: behave like a null sink, consuming audio at real time,
//!   so guest applications never hang; reconnect every
//!   `reconnect_interval_msec`.

use secure_tunnel_protocol::{
    Accept, GuestMessage, Hello, HostMessage, StreamSpec, MAGIC, MAX_AUDIO_CHUNK, PROTOCOL_VERSION,
};
use secure_tunnel_timing::{ClockMapper, Credit, PlaybackEstimator};

use crate::config::TunnelConfig;
use crate::transport::{Connection, PendingConnect, TransportError};

/// Round-trip probes, for mapping host time onto guest time.
const PING_INTERVAL_USEC: u64 = 250_000;
/// A connected host that says nothing for this long is considered gone (it
/// sends clock reports several times a second even when idle).
const STALL_TIMEOUT_USEC: u64 = 2_000_000;
/// Rendering block while disconnected.
const NULL_BLOCK_USEC: u64 = 10_000;
/// Most bytes rendered in one IO-thread wake-up.
const MAX_RENDER_PER_WAKE: u64 = 4 * MAX_AUDIO_CHUNK as u64;
/// Most bytes kept queued for a slow socket before rendering pauses.
const MAX_BACKLOG: usize = 512 * 1024;

/// Something worth a line in PulseAudio's log, produced only on transitions
/// so the IO thread never floods it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Connected { buffer_bytes: u32 },
    ConnectFailed(String),
    Disconnected(String),
    HostGoodbye(String),
}

#[derive(Debug)]
enum Link {
    Idle { next_attempt: u64 },
    Connecting(PendingConnect),
    Up(Box<Session>),
}

#[derive(Debug)]
struct Session {
    conn: Connection,
    credit: Credit,
    clock: ClockMapper,
    playback: PlaybackEstimator,
    /// Bytes rendered into this connection (equals bytes queued as Audio).
    rendered: u64,
    last_rx: u64,
    next_ping: u64,
    corked: bool,
    latency_sent: u32,
}

/// The IO thread's state.
#[derive(Debug)]
pub struct Engine {
    config: TunnelConfig,
    spec: StreamSpec,
    link: Link,
    /// Null-sink pacing: the time up to which audio has been consumed.
    null_clock: Option<u64>,
    opened: bool,
    target_latency_usec: u32,
    last_connect_error: Option<String>,
    events: Vec<Event>,
}

impl Engine {
    pub fn new(config: TunnelConfig, spec: StreamSpec) -> Self {
        let target_latency_usec = config.latency_msec.saturating_mul(1000);
        Self {
            config,
            spec,
            link: Link::Idle { next_attempt: 0 },
            null_clock: None,
            opened: false,
            target_latency_usec,
            last_connect_error: None,
            events: Vec::new(),
        }
    }

    pub fn spec(&self) -> &StreamSpec {
        &self.spec
    }

    pub fn sink_name(&self) -> &str {
        &self.config.sink_name
    }

    /// Lowest latency the sink offers applications: the configured target.
    pub fn min_latency_usec(&self) -> u64 {
        u64::from(self.config.latency_msec) * 1000
    }

    pub fn is_connected(&self) -> bool {
        matches!(self.link, Link::Up(_))
    }

    /// Log-worthy transitions since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    fn hello(&self) -> Hello {
        Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            spec: self.spec.clone(),
            target_latency_usec: self.target_latency_usec,
            stream_name: self.config.sink_name.clone(),
        }
    }

    fn round_down_to_frames(&self, bytes: u64) -> u64 {
        let frame = u64::from(self.spec.frame_size().max(1));
        bytes - bytes % frame
    }

    /// The sink was opened (RUNNING/IDLE) or closed (SUSPENDED).
    pub fn set_opened(&mut self, opened: bool, now: u64) {
        if opened == self.opened {
            return;
        }
        self.opened = opened;
        self.null_clock = opened.then_some(now);
        if let Link::Up(s) = &mut self.link {
            let msg = if opened {
                GuestMessage::Uncork
            } else {
                GuestMessage::Cork
            };
            s.corked = !opened;
            if s.conn.queue(&msg).is_err() {
                self.drop_link("cannot queue cork state".into(), now);
            }
        }
    }

    /// An application asked for a latency (`None`: no request); the target
    /// follows, never below the configured `latency_msec`.
    pub fn set_requested_latency(&mut self, usec: Option<u64>) {
        let floor = self.config.latency_msec.saturating_mul(1000);
        let wanted = usec
            .map(|u| u32::try_from(u).unwrap_or(u32::MAX))
            .unwrap_or(floor)
            .clamp(floor, secure_tunnel_protocol::MAX_TARGET_LATENCY_USEC);
        self.target_latency_usec = wanted;
    }

    /// How many bytes to render now.
    pub fn render_budget(&mut self, now: u64) -> usize {
        if !self.opened {
            return 0;
        }
        let bytes = match &self.link {
            Link::Up(s) => {
                if s.conn.backlog() > MAX_BACKLOG {
                    0
                } else {
                    s.credit.available().min(MAX_RENDER_PER_WAKE)
                }
            }
            _ => {
                let clock = self.null_clock.get_or_insert(now);
                if now.saturating_sub(*clock) > 1_000_000 {
                    *clock = now; // we were not scheduled for a while: skip
                }
                if *clock > now {
                    0
                } else {
                    *clock += NULL_BLOCK_USEC;
                    self.spec.usec_to_bytes(NULL_BLOCK_USEC)
                }
            }
        };
        usize::try_from(self.round_down_to_frames(bytes)).unwrap_or(0)
    }

    /// Audio that was just rendered: sent when connected, dropped otherwise.
    pub fn consume(&mut self, data: &[u8], now: u64) {
        let Link::Up(s) = &mut self.link else {
            return;
        };
        let mut failed = false;
        for chunk in data.chunks(MAX_AUDIO_CHUNK) {
            if s.conn.queue(&GuestMessage::Audio(chunk.to_vec())).is_err() {
                failed = true;
                break;
            }
            s.credit.spend(chunk.len() as u64);
            s.rendered += chunk.len() as u64;
        }
        if failed {
            self.drop_link("cannot queue audio".into(), now);
        }
    }

    /// Latency of the sink now, in microseconds: how long until a sample
    /// rendered now is heard.
    pub fn latency_usec(&mut self, now: u64) -> i64 {
        let usec = match &mut self.link {
            Link::Up(s) => s.playback.latency_usec(now, s.rendered),
            _ => self.null_clock.map_or(0, |c| c.saturating_sub(now)),
        };
        i64::try_from(usec).unwrap_or(i64::MAX)
    }

    /// The socket to poll and whether to poll it for writing.
    pub fn poll_interest(&self) -> Option<(std::os::fd::RawFd, bool)> {
        match &self.link {
            Link::Up(s) => Some((s.conn.fd(), s.conn.backlog() > 0)),
            _ => None,
        }
    }

    /// When the IO thread must wake up at the latest (absolute, usec).
    pub fn next_wakeup(&self, now: u64) -> u64 {
        let mut at = now + PING_INTERVAL_USEC;
        match &self.link {
            Link::Up(s) => at = at.min(s.next_ping).min(s.last_rx + STALL_TIMEOUT_USEC),
            Link::Connecting(_) => at = at.min(now + 5_000),
            Link::Idle { next_attempt } => at = at.min(*next_attempt),
        }
        if self.opened && !self.is_connected() {
            if let Some(c) = self.null_clock {
                at = at.min(c);
            }
        }
        at.max(now)
    }

    fn drop_link(&mut self, reason: String, now: u64) {
        self.events.push(Event::Disconnected(reason));
        self.link = Link::Idle {
            next_attempt: now + u64::from(self.config.reconnect_interval_msec) * 1000,
        };
        self.null_clock = self.opened.then_some(now);
    }

    /// Drives the connection: attempts, handshakes, reading and writing.
    pub fn poll_io(&mut self, now: u64) {
        match &mut self.link {
            Link::Idle { next_attempt } if now >= *next_attempt => {
                match PendingConnect::start(self.config.server.clone(), self.hello()) {
                    Ok(p) => self.link = Link::Connecting(p),
                    Err(e) => self.connect_failed(e.to_string(), now),
                }
            }
            Link::Idle { .. } => {}
            Link::Connecting(p) => match p.poll() {
                None => {}
                Some(Ok((conn, accept))) => self.connected(conn, accept, now),
                Some(Err(e)) => self.connect_failed(e.to_string(), now),
            },
            Link::Up(_) => {
                if let Err(reason) = self.pump(now) {
                    self.drop_link(reason, now);
                }
            }
        }
    }

    fn connect_failed(&mut self, error: String, now: u64) {
        if self.last_connect_error.as_deref() != Some(&error) {
            self.events.push(Event::ConnectFailed(error.clone()));
            self.last_connect_error = Some(error);
        }
        self.link = Link::Idle {
            next_attempt: now + u64::from(self.config.reconnect_interval_msec) * 1000,
        };
    }

    fn connected(&mut self, conn: Connection, accept: Accept, now: u64) {
        self.last_connect_error = None;
        self.events.push(Event::Connected {
            buffer_bytes: accept.buffer_bytes,
        });
        let mut session = Session {
            conn,
            credit: Credit::new(),
            clock: ClockMapper::new(),
            playback: PlaybackEstimator::new(
                self.spec.bytes_per_second(),
                u64::from(self.spec.frame_size()),
            ),
            rendered: 0,
            last_rx: now,
            next_ping: now,
            corked: false,
            latency_sent: self.target_latency_usec,
        };
        let mut ok = true;
        if !self.opened {
            session.corked = true;
            ok = session.conn.queue(&GuestMessage::Cork).is_ok();
        }
        self.link = Link::Up(Box::new(session));
        if !ok {
            self.drop_link("cannot queue cork state".into(), now);
        }
    }

    /// One round of reading and writing on an established connection.
    fn pump(&mut self, now: u64) -> Result<(), String> {
        let target = self.target_latency_usec;
        let Link::Up(s) = &mut self.link else {
            return Ok(());
        };
        let mut goodbye = None;
        let mut messages = Vec::new();
        let received = s.conn.receive(|m| messages.push(m));
        if !messages.is_empty() {
            s.last_rx = now;
        }
        for msg in messages {
            match msg {
                HostMessage::Credit { limit_bytes } => s.credit.grant(limit_bytes),
                HostMessage::Clock(report) => {
                    let at = s.clock.host_to_guest(report.host_time_usec).unwrap_or(now);
                    s.playback
                        .on_report(at, now, report.played_bytes, report.playing);
                }
                HostMessage::Pong {
                    guest_time_usec,
                    host_time_usec,
                } => s.clock.on_pong(guest_time_usec, host_time_usec, now),
                HostMessage::Goodbye { reason } => goodbye = Some(reason),
                HostMessage::Accept(_) | HostMessage::Reject { .. } => {
                    goodbye = Some("host sent a second handshake reply".into());
                }
            }
        }
        if let Some(reason) = goodbye {
            self.events.push(Event::HostGoodbye(reason.clone()));
            return Err(format!("host said goodbye: {reason}"));
        }
        received.map_err(|e| e.to_string())?;
        if now.saturating_sub(s.last_rx) >= STALL_TIMEOUT_USEC {
            return Err(format!(
                "host silent for {} ms",
                now.saturating_sub(s.last_rx) / 1000
            ));
        }
        if now >= s.next_ping {
            s.next_ping = now + PING_INTERVAL_USEC;
            s.conn
                .queue(&GuestMessage::Ping {
                    guest_time_usec: now,
                })
                .map_err(|e| e.to_string())?;
        }
        if target != s.latency_sent {
            s.latency_sent = target;
            s.conn
                .queue(&GuestMessage::SetLatency {
                    target_latency_usec: target,
                })
                .map_err(|e| e.to_string())?;
        }
        s.conn.flush().map_err(|e: TransportError| e.to_string())
    }

    /// Sends what rendering just queued, without waiting for another wake-up.
    pub fn flush(&mut self, now: u64) {
        if let Link::Up(s) = &mut self.link {
            if let Err(e) = s.conn.flush() {
                self.drop_link(e.to_string(), now);
            }
        }
    }

    /// Says goodbye to the host (module unload); best effort, never blocks.
    pub fn shutdown(&mut self, reason: &str) {
        if let Link::Up(s) = &mut self.link {
            let _ = s.conn.queue(&GuestMessage::Goodbye {
                reason: reason.to_owned(),
            });
            let _ = s.conn.flush();
        }
        self.link = Link::Idle {
            next_attempt: u64::MAX,
        };
    }
}
