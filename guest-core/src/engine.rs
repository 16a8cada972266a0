//! What the sink's IO thread does, in safe Rust: when to render, where the
//! audio goes, what the latency is, and the life of the connection. The thin
//! FFI layer in `pulse/` calls it with the current time.
//!
//! Two modes:
//! - **connected**: a [`TunnelSession`] decides (render what the host
//!   granted, so the guest follows the host's clock; latency from the host's
//!   clock reports; cork when idle);
//! - **disconnected**: behave like a null sink, consuming audio at real time,
//!   so guest applications never hang; reconnect every
//!   `reconnect_interval_msec`.

use secure_tunnel_protocol::{
    Accept, GuestMessage, Hello, RejectReason, StreamSpec, MAGIC, MAX_AUDIO_CHUNK,
    MAX_TARGET_LATENCY_USEC, PROTOCOL_VERSION, REWIND_PROTOCOL_VERSION,
};

use crate::config::TunnelConfig;
use crate::session::{Activity, Notice, TunnelSession};
use crate::transport::{Connection, PendingConnect, TransportError};

/// Rendering block while disconnected.
const NULL_BLOCK_USEC: u64 = 10_000;
/// Most bytes rendered in one IO-thread wake-up.
const MAX_RENDER_PER_WAKE: u64 = 4 * MAX_AUDIO_CHUNK as u64;
/// Most bytes kept queued for a slow socket before rendering pauses.
const MAX_BACKLOG: usize = 512 * 1024;
/// Longest sleep of the IO thread when nothing is due.
const MAX_SLEEP_USEC: u64 = 1_000_000;

/// The latency target announced to the host for an application's request
/// (`None`: no request): at least `min_usec`, at most `cap_usec` (the
/// configured `latency_msec`) and the protocol's maximum.
///
/// Why the cap is `latency_msec` and not the client's request: the host's
/// buffer is there to ride out network and scheduling jitter, which is a
/// property of the link (what `latency_msec` is configured for), not of the
/// client. Audio handed to the host can no longer be rewritten by the guest,
/// starts playing only once the host holds its target (`prebuf`), and is
/// pulled from the guest faster than real time while the host fills up. So
/// the host holds `latency_msec`, and a client's larger buffer stays in the
/// guest's sink-input queue, exactly as with a local sound card whose
/// hardware buffer is smaller than the client's request (module-tunnel-sink-new
/// does the same with a fixed 200 ms cap).
pub fn host_target_usec(requested_usec: Option<u64>, min_usec: u64, cap_usec: u64) -> u32 {
    let cap = cap_usec.max(min_usec);
    let wanted = requested_usec
        .unwrap_or(cap)
        .clamp(min_usec, cap)
        .min(u64::from(MAX_TARGET_LATENCY_USEC));
    u32::try_from(wanted).unwrap_or(MAX_TARGET_LATENCY_USEC)
}

/// Something worth a line in PulseAudio's log or a sink property, produced
/// only on transitions so the IO thread never floods either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Connected {
        buffer_bytes: u32,
        /// Whether the host takes rewinds (protocol version 3).
        rewinds: bool,
    },
    /// The host does not speak protocol version 3: the next attempts
    /// offer version 1, without rewinds.
    NoRewinds,
    ConnectFailed(String),
    Disconnected(String),
    /// The host reported `new` more underruns.
    Underruns {
        new: u32,
    },
}

/// Counters published as sink properties.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub connected: bool,
    /// Successful connections after the first.
    pub reconnects: u32,
    /// Host underruns over all connections.
    pub underruns: u32,
}

#[derive(Debug)]
enum Link {
    Idle { next_attempt: u64 },
    Connecting(PendingConnect),
    Up(Box<(Connection, TunnelSession)>),
}

/// The IO thread's state.
#[derive(Debug)]
pub struct Engine {
    config: TunnelConfig,
    spec: StreamSpec,
    link: Link,
    /// Null-sink pacing: the time up to which audio has been consumed.
    null_clock: Option<u64>,
    activity: Activity,
    target_latency_usec: u32,
    last_connect_error: Option<String>,
    events: Vec<Event>,
    stats: Stats,
    connections: u32,
    /// Underruns of earlier connections.
    underruns_before: u32,
    /// The version the next Hello offers: 3 (rewinds) until a host refuses
    /// it, then 1.
    offer_version: u16,
}

impl Engine {
    pub fn new(config: TunnelConfig, spec: StreamSpec) -> Self {
        let target_latency_usec = config.latency_msec.saturating_mul(1000);
        Self {
            config,
            spec,
            link: Link::Idle { next_attempt: 0 },
            null_clock: None,
            activity: Activity::Suspended,
            target_latency_usec,
            last_connect_error: None,
            events: Vec::new(),
            stats: Stats::default(),
            connections: 0,
            underruns_before: 0,
            offer_version: REWIND_PROTOCOL_VERSION,
        }
    }

    /// The counters as they stand.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn spec(&self) -> &StreamSpec {
        &self.spec
    }

    pub fn sink_name(&self) -> &str {
        &self.config.sink_name
    }

    pub fn is_connected(&self) -> bool {
        matches!(self.link, Link::Up(_))
    }

    /// The latency range offered to applications, in microseconds.
    pub fn latency_range_usec(&self) -> (u64, u64) {
        (
            u64::from(self.config.min_latency_msec) * 1000,
            u64::from(self.config.max_latency_msec) * 1000,
        )
    }

    /// The current end-to-end latency target.
    pub fn target_latency_usec(&self) -> u32 {
        self.target_latency_usec
    }

    /// Log-worthy transitions since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    fn hello(&self) -> Hello {
        Hello {
            magic: MAGIC,
            version: self.offer_version,
            spec: self.spec.clone(),
            target_latency_usec: self.target_latency_usec,
            stream_name: self.config.sink_name.clone(),
        }
    }

    fn round_down_to_frames(&self, bytes: u64) -> u64 {
        let frame = u64::from(self.spec.frame_size().max(1));
        bytes - bytes % frame
    }

    /// The sink's state (re-asserting the same state is harmless).
    pub fn set_activity(&mut self, activity: Activity, now: u64) {
        let was_opened = self.activity != Activity::Suspended;
        let opened = activity != Activity::Suspended;
        self.activity = activity;
        if opened != was_opened {
            self.null_clock = opened.then_some(now);
        }
        if let Link::Up(up) = &mut self.link {
            up.1.set_activity(activity, now);
        }
    }

    /// An application asked for a latency (`None`: no request, so the
    /// configured `latency_msec`). The host buffers at most `latency_msec`
    /// whatever is asked: a larger request (a default client asks ~1–2 s)
    /// stays in the guest's own queues, where the sound server can still
    /// rewrite it, instead of sizing the host's buffer and start threshold
    /// (see [`host_target_usec`] and docs/design.md, "Start-up").
    pub fn set_requested_latency(&mut self, usec: Option<u64>) {
        let (min, _) = self.latency_range_usec();
        let cap = u64::from(self.config.latency_msec) * 1000;
        self.target_latency_usec = host_target_usec(usec, min, cap);
    }

    /// How many bytes to render now.
    pub fn render_budget(&mut self, now: u64) -> usize {
        if self.activity == Activity::Suspended {
            return 0;
        }
        let bytes = match &self.link {
            Link::Up(up) => {
                if up.0.backlog() > MAX_BACKLOG {
                    0
                } else {
                    up.1.render_budget().min(MAX_RENDER_PER_WAKE)
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

    /// Audio that was just rendered: sent when connected (less what is
    /// skipped after a host underrun), dropped otherwise.
    pub fn consume(&mut self, data: &[u8], now: u64) {
        let Link::Up(up) = &mut self.link else {
            return;
        };
        let (conn, session) = &mut **up;
        // After a host underrun, what the host played silence for is
        // skipped rather than sent (TunnelSession::take_skip).
        let skip = usize::try_from(session.take_skip(data.len() as u64)).unwrap_or(data.len());
        let data = data.get(skip..).unwrap_or_default();
        for chunk in data.chunks(MAX_AUDIO_CHUNK) {
            if let Err(e) = conn.queue_audio(chunk) {
                self.drop_link(format!("cannot queue audio: {e}"), now);
                return;
            }
            session.on_rendered(chunk.len() as u64);
        }
    }

    /// The sound server asks to rewrite the last `requested` bytes rendered
    /// (a stream moved away or started, a volume changed). Returns how many
    /// to rewind, whole frames: what the host surely has not played yet
    /// ([`TunnelSession::rewind`]), withdrawn from it with a `Rewind` sent
    /// before any audio rendered after this call. 0 while disconnected
    /// (what was consumed then is gone) or when the host cannot rewind.
    pub fn rewind(&mut self, requested: u64, now: u64) -> u64 {
        let Link::Up(up) = &mut self.link else {
            return 0;
        };
        let bytes = up.1.rewind(requested, now);
        if bytes > 0 {
            if let Err(reason) = self.send_queued() {
                self.drop_link(reason, now);
                return 0;
            }
        }
        bytes
    }

    /// Latency of the sink now, in microseconds: how long until a sample
    /// rendered now is heard.
    pub fn latency_usec(&mut self, now: u64) -> i64 {
        let usec = match &mut self.link {
            Link::Up(up) => up.1.latency_usec(now),
            _ => self.null_clock.map_or(0, |c| c.saturating_sub(now)),
        };
        i64::try_from(usec).unwrap_or(i64::MAX)
    }

    /// The socket to poll and whether to poll it for writing.
    pub fn poll_interest(&self) -> Option<(std::os::fd::RawFd, bool)> {
        match &self.link {
            Link::Up(up) => Some((up.0.fd(), up.0.backlog() > 0)),
            _ => None,
        }
    }

    /// When the IO thread must wake up at the latest (absolute, usec).
    pub fn next_wakeup(&self, now: u64) -> u64 {
        let mut at = now + MAX_SLEEP_USEC;
        match &self.link {
            Link::Up(up) => at = at.min(up.1.next_deadline()),
            Link::Connecting(_) => at = at.min(now + 5_000),
            Link::Idle { next_attempt } => at = at.min(*next_attempt),
        }
        if self.activity != Activity::Suspended && !self.is_connected() {
            if let Some(c) = self.null_clock {
                at = at.min(c);
            }
        }
        at.max(now)
    }

    fn drop_link(&mut self, reason: String, now: u64) {
        self.events.push(Event::Disconnected(reason));
        self.underruns_before = self.stats.underruns;
        self.stats.connected = false;
        self.link = Link::Idle {
            next_attempt: now + u64::from(self.config.reconnect_interval_msec) * 1000,
        };
        self.null_clock = (self.activity != Activity::Suspended).then_some(now);
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
                Some(Err(TransportError::Rejected {
                    reason: RejectReason::UnsupportedVersion,
                    ..
                })) if self.offer_version != PROTOCOL_VERSION => {
                    // A host older than rewinds: offer version 1 at once.
                    self.offer_version = PROTOCOL_VERSION;
                    self.events.push(Event::NoRewinds);
                    self.link = Link::Idle { next_attempt: now };
                }
                Some(Err(e)) => self.connect_failed(e.to_string(), now),
            },
            Link::Up(_) => {
                if let Err(reason) = self.pump(now) {
                    self.drop_link(reason, now);
                }
            }
        }
    }

    /// Takes a connection whose handshake the caller already did (see
    /// [`Connection::from_unix_stream`]), exactly as if a connection attempt
    /// had just succeeded with `accept`. For the fuzz harness and tests: no
    /// helper thread, no listener. The module never calls it.
    #[doc(hidden)]
    pub fn attach(&mut self, conn: Connection, accept: Accept, now: u64) {
        self.connected(conn, accept, now);
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
        let rewinds = accept.version == REWIND_PROTOCOL_VERSION;
        self.events.push(Event::Connected {
            buffer_bytes: accept.buffer_bytes,
            rewinds,
        });
        self.connections += 1;
        self.stats.connected = true;
        self.stats.reconnects = self.connections - 1;
        let mut session = TunnelSession::new(
            self.spec.clone(),
            now,
            self.target_latency_usec,
            self.activity,
        );
        if rewinds {
            session.enable_rewinds();
        }
        self.link = Link::Up(Box::new((conn, session)));
        if let Err(reason) = self.send_queued() {
            self.drop_link(reason, now);
        }
    }

    fn send_queued(&mut self) -> Result<(), String> {
        let Link::Up(up) = &mut self.link else {
            return Ok(());
        };
        let (conn, session) = &mut **up;
        for msg in session.drain_outgoing() {
            conn.queue(&msg).map_err(|e| e.to_string())?;
        }
        for notice in session.take_notices() {
            match notice {
                Notice::Underruns { total } => {
                    let cumulative = self.underruns_before.saturating_add(total);
                    let new = cumulative.saturating_sub(self.stats.underruns);
                    self.stats.underruns = cumulative;
                    self.events.push(Event::Underruns { new });
                }
            }
        }
        Ok(())
    }

    /// One round of reading and writing on an established connection.
    fn pump(&mut self, now: u64) -> Result<(), String> {
        let target = self.target_latency_usec;
        let Link::Up(up) = &mut self.link else {
            return Ok(());
        };
        let (conn, session) = &mut **up;
        let mut failure = None;
        let received = conn.receive(|msg| {
            if failure.is_none() {
                failure = session.on_message(msg, now).err();
            }
        });
        if let Some(reason) = failure {
            return Err(reason);
        }
        received.map_err(|e| e.to_string())?;
        session.poll(now, target)?;
        self.send_queued()?;
        self.flush_link()
    }

    fn flush_link(&mut self) -> Result<(), String> {
        match &mut self.link {
            Link::Up(up) => up.0.flush().map_err(|e| e.to_string()),
            _ => Ok(()),
        }
    }

    /// Sends what rendering just queued, without waiting for another wake-up.
    pub fn flush(&mut self, now: u64) {
        if let Err(reason) = self.flush_link() {
            self.drop_link(reason, now);
        }
    }

    /// Says goodbye to the host (module unload); best effort, never blocks.
    pub fn shutdown(&mut self, reason: &str) {
        if let Link::Up(up) = &mut self.link {
            let _ = up.0.queue(&GuestMessage::Goodbye {
                reason: reason.to_owned(),
            });
            let _ = up.0.flush();
        }
        self.link = Link::Idle {
            next_attempt: u64::MAX,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::host_target_usec;

    #[test]
    fn the_host_never_buffers_more_than_latency_msec() {
        // A default client (~2 s) gets the configured 60 ms.
        assert_eq!(host_target_usec(Some(2_000_000), 60_000, 60_000), 60_000);
        // No request: the configured latency.
        assert_eq!(host_target_usec(None, 60_000, 60_000), 60_000);
        // Smaller requests are honoured down to min_latency_msec.
        assert_eq!(host_target_usec(Some(15_000), 10_000, 60_000), 15_000);
        assert_eq!(host_target_usec(Some(1_000), 10_000, 60_000), 10_000);
        // Never beyond the protocol's maximum.
        let max = secure_tunnel_protocol::MAX_TARGET_LATENCY_USEC;
        assert_eq!(host_target_usec(Some(u64::MAX), 0, u64::MAX), max);
    }
}
