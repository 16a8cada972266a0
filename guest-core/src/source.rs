//! What the capture source's IO thread does (`module-secure-tunnel-source`),
//! in safe Rust with the time injected: the life of the capture connection,
//! which audio the source posts next, and its latency.
//!
//! The source is clocked by whoever produces its audio (docs/design.md,
//! "Capture"):
//! - **attached** (the host says it records for us): the host's microphone
//!   is the clock; every byte that arrives is posted as it arrives, nothing
//!   is inserted, so what the guest records is bit-exact what the host's
//!   source produced;
//! - **otherwise** (disconnected, denied, awaiting a grant, the host's source
//!   unavailable, or the host not yet recording): the source posts silence
//!   at real time by the local clock, like a null source, so recording
//!   applications never stall. The `secure_tunnel.capture` property says
//!   which, so "detached" is never mistaken for "silent room".

use secure_tunnel_protocol::{CaptureState, GuestMessage, StreamSpec};

use crate::capture::{CaptureSession, MicState};
use crate::config::CaptureConfig;
use crate::transport::{Connection, PendingDial};

/// Silence is posted in blocks of this much audio.
pub const SILENCE_BLOCK_USEC: u64 = 10_000;
/// Longest sleep of the IO thread when nothing is due.
const MAX_SLEEP_USEC: u64 = 1_000_000;

/// One block for the source to post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    /// Audio recorded by the host (whole frames).
    Audio(Vec<u8>),
    /// This many bytes (whole frames) of silence.
    Silence(usize),
}

/// Something worth a log line or a property update, produced only on
/// transitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    Connected,
    ConnectFailed(String),
    Disconnected(String),
    /// The microphone's state changed (the `secure_tunnel.capture` property).
    State(MicState),
}

/// Counters published as source properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceStats {
    pub connected: bool,
    /// Successful connections after the first.
    pub reconnects: u32,
    pub mic: MicState,
    /// Bytes the host dropped on this connection because the guest did not
    /// take them in time.
    pub dropped_bytes: u64,
}

#[derive(Debug)]
enum Link {
    Idle { next_attempt: u64 },
    Dialing(PendingDial),
    Up(Box<(Connection, CaptureSession)>),
}

/// The capture source's IO-thread state.
#[derive(Debug)]
pub struct SourceEngine {
    config: CaptureConfig,
    spec: StreamSpec,
    link: Link,
    recording: bool,
    /// Local silence clock: (start, frames posted since start).
    silence: Option<(u64, u64)>,
    mic: MicState,
    connections: u32,
    last_connect_error: Option<String>,
    events: Vec<SourceEvent>,
}

impl SourceEngine {
    pub fn new(config: CaptureConfig, spec: StreamSpec) -> Self {
        Self {
            config,
            spec,
            link: Link::Idle { next_attempt: 0 },
            recording: false,
            silence: None,
            mic: MicState::Disconnected,
            connections: 0,
            last_connect_error: None,
            events: Vec::new(),
        }
    }

    pub fn spec(&self) -> &StreamSpec {
        &self.spec
    }

    pub fn source_name(&self) -> &str {
        &self.config.source_name
    }

    /// The transitions since the last call.
    pub fn take_events(&mut self) -> Vec<SourceEvent> {
        std::mem::take(&mut self.events)
    }

    pub fn stats(&self) -> SourceStats {
        let (connected, dropped_bytes) = match &self.link {
            Link::Up(up) => (true, up.1.dropped()),
            _ => (false, 0),
        };
        SourceStats {
            connected,
            reconnects: self.connections.saturating_sub(1),
            mic: self.mic,
            dropped_bytes,
        }
    }

    fn frame(&self) -> u64 {
        u64::from(self.spec.frame_size().max(1))
    }

    /// Whether the host is the clock now: it says it records for us.
    fn host_clocked(&self) -> bool {
        matches!(&self.link, Link::Up(up) if up.1.state() == CaptureState::Attached)
    }

    /// Whether a source-output records from the source (the source is
    /// running): the host is asked to record only then.
    pub fn set_recording(&mut self, on: bool, now: u64) {
        if on == self.recording {
            return;
        }
        self.recording = on;
        self.silence = None;
        if let Link::Up(up) = &mut self.link {
            up.1.set_recording(on);
        }
        if let Err(reason) = self.send_queued().and_then(|()| self.flush_link()) {
            self.drop_link(reason, now);
        }
    }

    fn update_mic(&mut self) {
        let mic = match &self.link {
            Link::Up(up) if up.1.window() > 0 => MicState::Host(up.1.state()),
            _ => MicState::Disconnected,
        };
        if mic != self.mic {
            self.mic = mic;
            self.events.push(SourceEvent::State(mic));
        }
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
            Link::Dialing(_) => at = at.min(now + 5_000),
            Link::Idle { next_attempt } => at = at.min(*next_attempt),
        }
        if self.recording && !self.host_clocked() {
            at = at.min(match self.silence {
                // Start the silence clock at once.
                None => now,
                Some((start, frames)) => {
                    let block = self.spec.usec_to_bytes(SILENCE_BLOCK_USEC) / self.frame();
                    start + self.frames_to_usec(frames + block.max(1))
                }
            });
        }
        at.max(now)
    }

    fn frames_to_usec(&self, frames: u64) -> u64 {
        self.spec.bytes_to_usec(frames * self.frame())
    }

    /// Drives the connection: attempts, reading and writing, timers.
    pub fn poll_io(&mut self, now: u64) {
        match &mut self.link {
            Link::Idle { next_attempt } if now >= *next_attempt => {
                match PendingDial::dial(self.config.server.clone()) {
                    Ok(p) => self.link = Link::Dialing(p),
                    Err(e) => self.connect_failed(e.to_string(), now),
                }
            }
            Link::Idle { .. } => {}
            Link::Dialing(p) => match p.poll() {
                None => {}
                Some(Ok(conn)) => self.connected(conn, now),
                Some(Err(e)) => self.connect_failed(e.to_string(), now),
            },
            Link::Up(_) => {
                if let Err(reason) = self.pump(now) {
                    self.drop_link(reason, now);
                }
            }
        }
        self.update_mic();
    }

    /// Takes a connected socket with nothing sent yet, exactly as if a dial
    /// had just succeeded. For the fuzz harness and tests, which play the
    /// host on the other end of a socket pair. The module never calls it.
    #[doc(hidden)]
    pub fn attach(&mut self, conn: Connection, now: u64) {
        self.connected(conn, now);
        self.update_mic();
    }

    fn connect_failed(&mut self, error: String, now: u64) {
        if self.last_connect_error.as_deref() != Some(&error) {
            self.events.push(SourceEvent::ConnectFailed(error.clone()));
            self.last_connect_error = Some(error);
        }
        self.link = Link::Idle {
            next_attempt: now + u64::from(self.config.reconnect_interval_msec) * 1000,
        };
    }

    fn connected(&mut self, conn: Connection, now: u64) {
        self.last_connect_error = None;
        self.connections = self.connections.saturating_add(1);
        self.events.push(SourceEvent::Connected);
        let mut session = CaptureSession::new(
            self.spec.clone(),
            now,
            self.config.latency_msec.saturating_mul(1000),
            &self.config.source_name,
        );
        session.set_recording(self.recording);
        self.link = Link::Up(Box::new((conn, session)));
        if let Err(reason) = self.send_queued().and_then(|()| self.flush_link()) {
            self.drop_link(reason, now);
        }
    }

    fn drop_link(&mut self, reason: String, now: u64) {
        if matches!(self.link, Link::Up(_)) {
            self.events.push(SourceEvent::Disconnected(reason));
        }
        self.link = Link::Idle {
            next_attempt: now + u64::from(self.config.reconnect_interval_msec) * 1000,
        };
        self.silence = None;
        self.update_mic();
    }

    fn send_queued(&mut self) -> Result<(), String> {
        let Link::Up(up) = &mut self.link else {
            return Ok(());
        };
        let (conn, session) = &mut **up;
        for msg in session.drain_outgoing() {
            conn.queue(&msg).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn flush_link(&mut self) -> Result<(), String> {
        match &mut self.link {
            Link::Up(up) => up.0.flush().map_err(|e| e.to_string()),
            _ => Ok(()),
        }
    }

    /// One round of reading and writing on an established connection.
    fn pump(&mut self, now: u64) -> Result<(), String> {
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
        session.poll(now)?;
        self.send_queued()?;
        self.flush_link()
    }

    /// The next block to post, at most `max` bytes (rounded down to whole
    /// frames), or `None` when nothing is due. Call until `None`.
    pub fn next_block(&mut self, now: u64, max: usize) -> Option<Block> {
        let frame = self.frame() as usize;
        let max = max - max % frame;
        if max == 0 {
            return None;
        }
        if let Link::Up(up) = &mut self.link {
            if up.1.queued() > 0 {
                self.silence = None;
                let audio = up.1.take(max);
                // Taking grants credit: send it now, not at the next wake-up.
                if let Err(reason) = self.send_queued().and_then(|()| self.flush_link()) {
                    self.drop_link(reason, now);
                }
                return (!audio.is_empty()).then_some(Block::Audio(audio));
            }
        }
        if !self.recording || self.host_clocked() {
            self.silence = None;
            return None;
        }
        let (start, frames) = *self.silence.get_or_insert((now, 0));
        let due_frames = self.spec.usec_to_bytes(now.saturating_sub(start)) / frame as u64;
        let n = (due_frames.saturating_sub(frames) as usize).min(max / frame);
        if n == 0 {
            return None;
        }
        self.silence = Some((start, frames + n as u64));
        Some(Block::Silence(n * frame))
    }

    /// The source's latency at `now` (usec): from the host's capture clock
    /// while it records for us, 0 while the source posts its own silence.
    pub fn latency_usec(&self, now: u64) -> u64 {
        match &self.link {
            Link::Up(up) if up.1.state() == CaptureState::Attached || up.1.queued() > 0 => {
                up.1.latency_usec(now)
            }
            _ => 0,
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
mod tests;
