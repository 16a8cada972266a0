//! The engine thread: owns the audio backend and every client's [`Session`],
//! and is the only place where the two meet.
//!
//! Connection threads send it [`Command`]s through a bounded channel and poke
//! a wake-up socket, so the engine sleeps in the backend's own poll (the
//! PulseAudio main loop) and still answers a Ping within microseconds.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};

use crate::io::Outgoing;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use secure_tunnel_protocol::{GuestMessage, HostMessage, RejectReason};
use thiserror::Error;

use crate::admission::HandshakeSlot;
use crate::backend::{AudioBackend, Captured, StreamEvent, StreamId, StreamStatus};
use crate::clock::{HostClock, RateLimit};
use crate::control::ControlRequest;
use crate::doorbell::{self, Bell, Ringer};
use crate::policy::{Admission, CaptureMode, IdentityKey, PeerIdentity, Policy};
use crate::session::{bounded_text, Action, Event, Session};
use crate::stats::{self, ClientStats};

/// Commands queued towards the engine before connection threads block.
pub const COMMAND_QUEUE: usize = 256;
/// Engine poll period while any stream is open: bounds how late a credit or
/// a clock report can be.
pub const ACTIVE_POLL: Duration = Duration::from_millis(5);
/// Engine poll period while no stream is open (handshake deadlines).
pub const IDLE_POLL: Duration = Duration::from_millis(50);

/// The engine's name for a connection; also its stream's [`StreamId`].
pub type ClientId = StreamId;

/// What connection threads and the daemon tell the engine.
#[derive(Debug)]
pub enum Command {
    /// A guest connected; messages for it go into `outgoing`.
    Connect {
        id: ClientId,
        peer: String,
        /// The name of the listener that accepted it (`unix:/path`, ...),
        /// for the policy's `listen` rules.
        listener: String,
        /// Who the kernel says the peer is; the policy decides on it.
        identity: PeerIdentity,
        outgoing: Outgoing,
        /// Held until the session leaves its handshake.
        slot: Option<HandshakeSlot>,
    },
    /// A decoded message, with the host time at which it was read.
    Message {
        id: ClientId,
        message: GuestMessage,
        at_usec: u64,
    },
    /// The guest's bytes could not be decoded; its connection is over.
    ProtocolError { id: ClientId, error: String },
    /// The guest sent more than its budget allows (see [`crate::budget`]);
    /// nothing more is read from it.
    OverBudget { id: ClientId, reason: String },
    /// The guest's connection closed.
    Disconnected { id: ClientId },
    /// A request on the control socket; the answer goes to `reply` (text,
    /// `error: ` first when it failed).
    Control {
        request: ControlRequest,
        reply: SyncSender<String>,
    },
    /// Say goodbye to every guest and stop.
    Shutdown,
}

/// The engine stopped; nothing more can be sent to it.
#[derive(Debug, Error)]
#[error("the engine thread has stopped")]
pub struct EngineGone;

/// A wake-up both as a socket (for backends that poll descriptors) and as a
/// condition variable (precise timeouts: socket timeouts are rounded up to
/// kernel ticks of 4 ms, which would stretch 20 ms clock intervals).
#[derive(Debug, Default)]
struct WakeFlag {
    pending: Mutex<bool>,
    signal: Condvar,
}

/// A cloneable way to reach the engine from any thread.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    tx: SyncSender<Command>,
    ringer: Ringer,
    flag: Arc<WakeFlag>,
}

impl EngineHandle {
    /// Queues `command` (blocking while the queue is full) and wakes the
    /// engine.
    pub fn send(&self, command: Command) -> Result<(), EngineGone> {
        self.tx.send(command).map_err(|_| EngineGone)?;
        self.wake();
        Ok(())
    }

    /// Queues `command` without waking the engine: the caller calls
    /// [`EngineHandle::wake`] once it has queued what it had (the event loop
    /// does at the end of each turn, so the messages read from a guest in
    /// one turn cost the engine one wake-up). A full queue wakes the engine
    /// first and then waits for room, so this never blocks on an engine
    /// that was not told.
    pub fn send_batched(&self, command: Command) -> Result<(), EngineGone> {
        match self.tx.try_send(command) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(command)) => self.send(command),
            Err(TrySendError::Disconnected(_)) => Err(EngineGone),
        }
    }

    /// Wakes the engine (coalesced with any wake-up still pending).
    pub fn wake(&self) {
        self.ringer.ring();
        *self
            .flag
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.flag.signal.notify_one();
    }
}

/// The engine's end of the wake-up socket.
#[derive(Debug)]
pub struct WakeReceiver {
    bell: Bell,
    flag: Arc<WakeFlag>,
}

impl WakeReceiver {
    /// Blocks until woken or `timeout` passed, consuming pending wake-ups.
    /// For backends with no poll of their own.
    pub fn wait(&self, timeout: Duration) {
        let pending = self
            .flag
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (mut pending, _) = self
            .flag
            .signal
            .wait_timeout_while(pending, timeout, |pending| !*pending)
            .unwrap_or_else(PoisonError::into_inner);
        *pending = false;
    }

    /// Consumes pending wake-ups without blocking (the descriptor is
    /// non-blocking from the start), for backends that poll it themselves.
    /// Call it before taking the commands: see [`crate::doorbell`].
    pub fn drain(&self) {
        self.bell.answer();
    }

    /// An independent handle on the same socket.
    pub fn try_clone(&self) -> io::Result<WakeReceiver> {
        Ok(WakeReceiver {
            bell: self.bell.try_clone()?,
            flag: Arc::clone(&self.flag),
        })
    }
}

impl AsFd for WakeReceiver {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.bell.as_fd()
    }
}

impl AsRawFd for WakeReceiver {
    fn as_raw_fd(&self) -> RawFd {
        self.bell.as_raw_fd()
    }
}

/// Creates the engine's command channel and wake-up socket.
pub fn channel() -> io::Result<(EngineHandle, Receiver<Command>, WakeReceiver)> {
    let (tx, rx) = mpsc::sync_channel(COMMAND_QUEUE);
    let (ringer, bell) = doorbell::pair()?;
    let flag = Arc::new(WakeFlag::default());
    let handle = EngineHandle {
        tx,
        ringer,
        flag: Arc::clone(&flag),
    };
    Ok((handle, rx, WakeReceiver { bell, flag }))
}

/// Limits the engine enforces across sessions.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most guests with an open (or opening) stream at once.
    pub max_clients: usize,
    /// Time a guest has to send its Hello.
    pub handshake_timeout: Duration,
    /// A streaming guest that sends nothing for this long is closed.
    pub idle_timeout: Option<Duration>,
    /// Who may play, and how.
    pub policy: Arc<Policy>,
    /// The source capture guests record from (the player holds the real
    /// setting; this only tells whether anyone can record at all).
    pub capture_source: Option<String>,
}

#[derive(Debug)]
struct Client {
    session: Session,
    peer: String,
    identity: PeerIdentity,
    admission: Admission,
    outgoing: Option<Outgoing>,
    /// The handshake slot, until the session leaves the handshake.
    slot: Option<HandshakeSlot>,
    /// Host time of the last message from the guest (or of the connect).
    last_heard_usec: u64,
    /// The stream's spec once it is being opened.
    spec: Option<secure_tunnel_protocol::StreamSpec>,
    /// Host time of the connect.
    connected_usec: u64,
    /// The latest sample of the open stream, for statistics.
    last_status: Option<StreamStatus>,
    /// Connections from this peer's uid, IP address or CID so far.
    connections: u64,
    /// This guest's share of the log.
    logs: RateLimit,
    /// An administrator's live capture grant (`ctl grant-capture`), for
    /// this connection only.
    granted: bool,
}

impl Client {
    /// What the statistics say about this client at `now_usec`.
    fn stats(&self, id: ClientId, now_usec: u64) -> ClientStats {
        let (rule, mode) = match &self.admission {
            Admission::Allowed { rule, limits } => (
                rule.clone().unwrap_or_else(|| "default".to_owned()),
                limits.capture,
            ),
            Admission::Denied { .. } => ("denied".to_owned(), CaptureMode::Deny),
        };
        let capture = if !self.session.is_capture() {
            "-".to_owned()
        } else if mode == CaptureMode::Grant {
            let granted = if self.granted {
                "granted"
            } else {
                "not granted"
            };
            format!("grant ({granted})")
        } else {
            mode.name().to_owned()
        };
        if let Some(c) = self.session.capture() {
            use secure_tunnel_protocol::CaptureState as S;
            let state = match c.state() {
                Some(S::Attached) => "recording",
                Some(S::Idle) => "capture-idle",
                Some(S::AwaitingGrant) => "awaiting-grant",
                Some(S::Unavailable) => "unavailable",
                None => "opening",
            };
            return ClientStats {
                id,
                peer: self.peer.clone(),
                state,
                rule,
                capture,
                connected_for: Duration::from_micros(now_usec.saturating_sub(self.connected_usec)),
                bytes: c.sent_bytes(),
                underruns: 0,
                latency: None,
                connections: self.connections,
            };
        }
        let state = if self.session.is_streaming() {
            match self.last_status {
                Some(status) if !status.playing => "idle",
                _ => "playing",
            }
        } else if self.session.has_stream() {
            "opening"
        } else {
            "handshake"
        };
        let bytes = self.session.received_bytes();
        let latency = match (&self.spec, self.last_status) {
            (Some(spec), Some(status)) if self.session.is_streaming() => {
                let queued = bytes.saturating_sub(status.played_bytes);
                let usec = spec
                    .bytes_to_usec(queued)
                    .saturating_add(u64::from(status.device_latency_usec));
                Some(Duration::from_micros(usec))
            }
            _ => None,
        };
        ClientStats {
            id,
            peer: self.peer.clone(),
            state,
            rule,
            capture,
            connected_for: Duration::from_micros(now_usec.saturating_sub(self.connected_usec)),
            bytes,
            underruns: self.last_status.map_or(0, |s| s.underruns),
            latency,
            connections: self.connections,
        }
    }

    /// The tail of a disconnect log line: how long, how much, how well.
    fn summary(&self, now_usec: u64) -> String {
        let secs = now_usec.saturating_sub(self.connected_usec) as f64 / 1e6;
        format!(
            "after {secs:.1} s, {} bytes, {} underruns",
            self.session.received_bytes(),
            self.last_status.map_or(0, |s| s.underruns)
        )
    }
}

/// The engine's state: sessions and the backend that plays them.
#[derive(Debug)]
pub struct Engine<B: AudioBackend> {
    backend: B,
    clock: HostClock,
    config: EngineConfig,
    clients: HashMap<ClientId, Client>,
    actions: Vec<Action>,
    events: Vec<(StreamId, StreamEvent)>,
    peer_logs: RateLimit,
    shutting_down: bool,
    /// Set (by a SIGUSR1 handler) to ask for a statistics log.
    stats_request: Option<Arc<AtomicBool>>,
    /// Connections seen per uid, IP address or CID since the start.
    connections: HashMap<IdentityKey, u64>,
    /// The event loop's wake-up, rung once per engine step when messages
    /// were queued for guests (see [`Outgoing::try_queue`]).
    io_ringer: Option<Ringer>,
    io_pending: bool,
}

impl<B: AudioBackend> Engine<B> {
    pub fn new(backend: B, clock: HostClock, config: EngineConfig) -> Self {
        Engine {
            backend,
            clock,
            config,
            clients: HashMap::new(),
            actions: Vec::new(),
            events: Vec::new(),
            peer_logs: RateLimit::new(PEER_LOG_BUDGET, Duration::from_secs(1)),
            shutting_down: false,
            stats_request: None,
            connections: HashMap::new(),
            io_ringer: None,
            io_pending: false,
        }
    }

    /// Logs the statistics table whenever `flag` is found set (and clears
    /// it); `main` sets it from a SIGUSR1 handler.
    #[must_use]
    pub fn with_stats_request(mut self, flag: Arc<AtomicBool>) -> Self {
        self.stats_request = Some(flag);
        self
    }

    /// Every connected client's statistics, in id order.
    pub fn stats(&self) -> Vec<ClientStats> {
        let now = self.clock.now_usec();
        let mut all: Vec<ClientStats> = self
            .clients
            .iter()
            .map(|(&id, client)| client.stats(id, now))
            .collect();
        all.sort_by_key(|c| c.id);
        all
    }

    /// Logs [`Engine::stats`] as a table, one line per client.
    pub fn log_stats(&self) {
        for line in stats::table(&self.stats()) {
            log::info!("{line}");
        }
    }

    /// Runs until a [`Command::Shutdown`] (or every handle is dropped) and
    /// every session has said goodbye. If the backend fails for good (the
    /// player process died), every guest is told and the reason returned.
    pub fn run(mut self, commands: Receiver<Command>, wake: WakeReceiver) -> Option<String> {
        let mut failure = None;
        loop {
            loop {
                match commands.try_recv() {
                    Ok(command) => self.command(command),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.shutdown();
                        break;
                    }
                }
            }
            self.backend_events();
            self.captured();
            self.poll_sessions();
            if let Some(flag) = &self.stats_request {
                if flag.swap(false, Ordering::SeqCst) {
                    self.log_stats();
                }
            }
            if self.shutting_down && self.clients.is_empty() {
                break;
            }
            let streaming = self.clients.values().any(|c| c.session.has_stream());
            // A backend that pushes status wakes the engine itself.
            let timeout = if streaming && !self.backend.pushes_status() {
                ACTIVE_POLL
            } else {
                IDLE_POLL
            };
            self.ring_io();
            self.backend.drive(timeout, &wake);
            if failure.is_none() {
                if let Some(reason) = self.backend.failure() {
                    log::error!("{reason}: saying goodbye to every guest and stopping");
                    failure = Some(reason);
                    self.backend_events();
                    self.shutdown();
                }
            }
        }
        self.ring_io();
        log::debug!("engine stopped");
        failure
    }

    /// Wakes the event loop if this step queued anything for a guest.
    fn ring_io(&mut self) {
        if std::mem::take(&mut self.io_pending) {
            if let Some(ringer) = &self.io_ringer {
                ringer.ring();
            }
        }
    }

    /// Handles one command (public for in-process tests).
    pub fn command(&mut self, command: Command) {
        match command {
            Command::Connect {
                id,
                peer,
                listener,
                identity,
                outgoing,
                slot,
            } => {
                if self.shutting_down {
                    return;
                }
                let timeout =
                    u64::try_from(self.config.handshake_timeout.as_micros()).unwrap_or(u64::MAX);
                let now = self.clock.now_usec();
                let session = Session::new(now, timeout, &peer);
                let admission = self.config.policy.admit_on(Some(&listener), &identity);
                let connections = {
                    let seen = self.connections.entry(identity.key()).or_insert(0);
                    *seen = seen.saturating_add(1);
                    *seen
                };
                let nth = if connections > 1 {
                    let from = match identity.key() {
                        IdentityKey::Uid(uid) => format!("uid {uid}"),
                        IdentityKey::Ip(ip) => ip.to_string(),
                        IdentityKey::Cid(cid) => format!("cid {cid}"),
                        IdentityKey::Unknown => "unknown peers".to_owned(),
                    };
                    format!(" (connection {connections} from {from})")
                } else {
                    String::new()
                };
                let line = match &admission {
                    Admission::Allowed {
                        rule: Some(rule), ..
                    } => {
                        format!("client {id} connected from {peer}{nth}, allowed by rule {rule:?}")
                    }
                    Admission::Allowed { rule: None, .. } => {
                        format!("client {id} connected from {peer}{nth}, allowed by default")
                    }
                    Admission::Denied { reason } => {
                        format!("client {id} connected from {peer}{nth}, not allowed: {reason}")
                    }
                };
                self.clients.insert(
                    id,
                    Client {
                        session,
                        peer,
                        identity,
                        admission,
                        outgoing: Some(outgoing),
                        slot,
                        last_heard_usec: now,
                        spec: None,
                        connected_usec: now,
                        last_status: None,
                        connections,
                        logs: RateLimit::new(CLIENT_LOG_BUDGET, CLIENT_LOG_WINDOW),
                        granted: false,
                    },
                );
                let own = self.clients.get_mut(&id).map(|c| &mut c.logs);
                if let Some(note) = log_allowed(&mut self.peer_logs, own) {
                    log::info!("{line}{note}");
                }
            }
            Command::Message {
                id,
                message,
                at_usec,
            } => {
                if let Some(client) = self.clients.get_mut(&id) {
                    client.last_heard_usec = client.last_heard_usec.max(at_usec);
                }
                self.dispatch(id, at_usec, Event::Message(message));
            }
            Command::ProtocolError { id, error } => {
                let now = self.clock.now_usec();
                self.dispatch(id, now, Event::ProtocolError(error));
            }
            Command::OverBudget { id, reason } => {
                let now = self.clock.now_usec();
                self.dispatch(id, now, Event::ProtocolError(reason));
            }
            Command::Disconnected { id } => {
                if let Some(mut client) = self.remove_client(id) {
                    let summary = client.summary(self.clock.now_usec());
                    if let Some(note) = log_allowed(&mut self.peer_logs, Some(&mut client.logs)) {
                        log::info!("client {id} ({}) disconnected {summary}{note}", client.peer);
                    }
                }
            }
            Command::Control { request, reply } => {
                let answer = self.control(request);
                // The control thread waits a bounded time; if it gave up,
                // the answer is simply dropped.
                let _ = reply.try_send(answer);
            }
            Command::Shutdown => self.shutdown(),
        }
    }

    /// Answers one control request (administrator only: the control
    /// socket is mode 0600 and checks its peer).
    fn control(&mut self, request: ControlRequest) -> String {
        match request {
            ControlRequest::Status => self.status_text(),
            ControlRequest::GrantCapture(id) | ControlRequest::RevokeCapture(id) => {
                let grant = matches!(request, ControlRequest::GrantCapture(_));
                let Some(client) = self.clients.get_mut(&id) else {
                    return format!("error: no client {id}");
                };
                let mode = match &client.admission {
                    Admission::Allowed { limits, .. } => limits.capture,
                    Admission::Denied { .. } => CaptureMode::Deny,
                };
                if !client.session.is_capture() {
                    return format!("error: client {id} is not a capture connection");
                }
                match mode {
                    CaptureMode::Deny => {
                        return format!("error: the policy denies client {id} capture");
                    }
                    CaptureMode::Allow => {
                        return format!(
                            "error: client {id} needs no grant: its rule allows capture                              (capture = \"allow\")"
                        );
                    }
                    CaptureMode::Grant => {}
                }
                client.granted = grant;
                let peer = client.peer.clone();
                let verb = if grant { "granted" } else { "revoked" };
                log::info!("client {id} ({peer}): capture {verb} by the administrator");
                let now = self.clock.now_usec();
                self.dispatch(id, now, Event::CapturePermission(grant));
                format!("capture {verb} for client {id} ({peer})")
            }
        }
    }

    /// `ctl status`: a header, then one line per client.
    fn status_text(&self) -> String {
        let mut lines = stats::table(&self.stats());
        for line in &mut lines {
            if let Some(rest) = line.strip_prefix("stats: ") {
                *line = rest.to_owned();
            }
        }
        lines.join("\n")
    }

    fn shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        log::info!("saying goodbye to {} client(s)", self.clients.len());
        let now = self.clock.now_usec();
        let ids: Vec<ClientId> = self.clients.keys().copied().collect();
        for id in ids {
            self.dispatch(id, now, Event::Shutdown);
        }
    }

    fn backend_events(&mut self) {
        let mut events = std::mem::take(&mut self.events);
        self.backend.take_events(&mut events);
        for (id, event) in events.drain(..) {
            let event = match event {
                StreamEvent::Opened { buffer_bytes } => Event::StreamOpened { buffer_bytes },
                StreamEvent::Failed { reason } => {
                    self.log_capture_failure(id, &reason);
                    Event::StreamFailed { reason }
                }
            };
            let now = self.clock.now_usec();
            self.dispatch(id, now, event);
        }
        self.events = events;
    }

    /// A capture session's recording stream failed: the session only
    /// retries, so the reason (say, a monitor refused) is logged here.
    fn log_capture_failure(&mut self, id: ClientId, reason: &str) {
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        if !client.session.is_capture() {
            return;
        }
        let peer = client.peer.clone();
        if let Some(note) = log_allowed(&mut self.peer_logs, Some(&mut client.logs)) {
            let reason = bounded_text(reason);
            log::warn!("client {id} ({peer}): capture unavailable: {reason}{note}");
        }
    }

    /// Hands what the backend recorded to its capture sessions.
    fn captured(&mut self) {
        let mut captured: Vec<(StreamId, Captured)> = Vec::new();
        self.backend.take_captured(&mut captured);
        for (id, c) in captured {
            let now = self.clock.now_usec();
            self.dispatch(id, now, Event::Captured(c));
        }
    }

    fn poll_sessions(&mut self) {
        let ids: Vec<ClientId> = self.clients.keys().copied().collect();
        for id in ids {
            let Some(client) = self.clients.get(&id) else {
                continue;
            };
            if let Some(idle) = self.config.idle_timeout {
                let idle_usec = u64::try_from(idle.as_micros()).unwrap_or(u64::MAX);
                let silent = self.clock.now_usec().saturating_sub(client.last_heard_usec);
                if client.session.has_stream() && silent >= idle_usec {
                    self.close_idle(id, idle);
                    continue;
                }
            }
            let event = if client.session.is_streaming() {
                match self.backend.status(id) {
                    Some(status) => {
                        if let Some(client) = self.clients.get_mut(&id) {
                            let before = client.last_status.map_or(0, |s| s.underruns);
                            client.last_status = Some(status);
                            if status.underruns > before {
                                self.log_underrun(id, before, status.underruns);
                            }
                        }
                        Event::Status(status)
                    }
                    None => Event::Tick,
                }
            } else {
                Event::Tick
            };
            let now = self.clock.now_usec();
            self.dispatch(id, now, event);
        }
    }

    /// The host stream of client `id` ran dry (`before` → `total` times).
    /// A gap while playing, or the end of the tail a guest drains before it
    /// corks (which is why this is not a warning). Rate-limited like every
    /// per-peer log.
    fn log_underrun(&mut self, id: ClientId, before: u32, total: u32) {
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        if let Some(note) = log_allowed(&mut self.peer_logs, Some(&mut client.logs)) {
            log::info!(
                "client {id} ({}): the host stream ran dry {} time(s), {total} in all{note}",
                client.peer,
                total - before,
            );
        }
    }

    /// Feeds `event` to a session and carries out what it asks, including
    /// the events that carrying it out produces.
    fn dispatch(&mut self, id: ClientId, now_usec: u64, event: Event) {
        let mut queue = vec![event];
        while let Some(event) = queue.pop() {
            let Some(client) = self.clients.get_mut(&id) else {
                return;
            };
            let mut actions = std::mem::take(&mut self.actions);
            client.session.handle(now_usec, event, &mut actions);
            if client.session.has_stream() || client.session.is_closed() {
                // Out of the handshake: the slot is free for another.
                client.slot = None;
            }
            for action in actions.drain(..) {
                if let Some(event) = self.apply(id, action) {
                    queue.push(event);
                }
            }
            self.actions = actions;
        }
    }

    fn apply(&mut self, id: ClientId, action: Action) -> Option<Event> {
        match action {
            Action::Send(message) => {
                let client = self.clients.get_mut(&id)?;
                let outgoing = client.outgoing.as_ref()?;
                match outgoing.try_queue(message) {
                    Ok(()) => {
                        if self.io_ringer.is_none() {
                            self.io_ringer = Some(outgoing.ringer());
                        }
                        self.io_pending = true;
                        None
                    }
                    Err(TrySendError::Full(_)) => {
                        self.drop_client(id, "outgoing queue full: the guest does not read");
                        None
                    }
                    Err(TrySendError::Disconnected(_)) => {
                        self.drop_client(id, "connection writer stopped");
                        None
                    }
                }
            }
            Action::OpenStream(mut params) => {
                let client = self.clients.get(&id)?;
                let limits = match &client.admission {
                    Admission::Allowed { limits, .. } => limits.clone(),
                    Admission::Denied { reason } => {
                        return Some(Event::OpenRefused {
                            reason: RejectReason::NotAllowed,
                            message: reason.clone(),
                        });
                    }
                };
                if let Err(message) = limits.check(&params.spec) {
                    return Some(Event::OpenRefused {
                        reason: RejectReason::NotAllowed,
                        message,
                    });
                }
                if let Some(refusal) = self.over_stream_caps(id, &limits) {
                    return Some(refusal);
                }
                limits.apply(&mut params);
                if let Some(client) = self.clients.get_mut(&id) {
                    client.spec = Some(params.spec.clone());
                    client
                        .session
                        .set_report_quantum(limits.report_quantum_usec.unwrap_or(0));
                }
                if let Some(percent) = limits.volume_percent {
                    self.backend.set_volume_cap(id, percent);
                }
                match self.backend.open(id, params) {
                    Ok(()) => None,
                    Err(e) => {
                        // The detail (server address, socket path) is for
                        // the host's log, never for the guest.
                        if let Some(note) = log_allowed(&mut self.peer_logs, None) {
                            log::warn!("client {id}: cannot open a host stream: {e}{note}");
                        }
                        Some(Event::OpenRefused {
                            reason: RejectReason::ServerError,
                            message: "the host's audio server is unavailable".to_owned(),
                        })
                    }
                }
            }
            Action::AdmitCapture { spec } => {
                let client = self.clients.get(&id)?;
                let limits = match &client.admission {
                    Admission::Allowed { limits, .. } => limits.clone(),
                    Admission::Denied { reason } => {
                        return Some(Event::OpenRefused {
                            reason: RejectReason::NotAllowed,
                            message: reason.clone(),
                        });
                    }
                };
                let refused = |message: String| {
                    Some(Event::OpenRefused {
                        reason: RejectReason::NotAllowed,
                        message,
                    })
                };
                if limits.capture == CaptureMode::Deny {
                    return refused(format!("{} may not record on this host", client.identity));
                }
                if self.config.capture_source.is_none() {
                    return refused("this host records from no source".to_owned());
                }
                if let Err(message) = limits.check(&spec) {
                    return refused(message);
                }
                if let Some(refusal) = self.over_stream_caps(id, &limits) {
                    return Some(refusal);
                }
                let permitted = limits.capture == CaptureMode::Allow || client.granted;
                let mode = limits.capture.name();
                let peer = client.peer.clone();
                if let Some(client) = self.clients.get_mut(&id) {
                    client.spec = Some(spec);
                    if let Some(note) = log_allowed(&mut self.peer_logs, Some(&mut client.logs)) {
                        log::info!(
                            "client {id} ({peer}): capture connection (capture = {mode:?}){note}"
                        );
                    }
                }
                Some(Event::CaptureAdmitted {
                    permitted,
                    quantum_usec: limits.report_quantum_usec.unwrap_or(0),
                })
            }
            Action::OpenCapture(mut params) => {
                let client = self.clients.get_mut(&id)?;
                if let (Admission::Allowed { limits, .. }, Some(spec)) =
                    (&client.admission, &client.spec)
                {
                    params.fragment_bytes = limits.cap_buffer(spec, params.fragment_bytes);
                }
                let peer = client.peer.clone();
                match self.backend.open_capture(id, params) {
                    Ok(()) => {
                        let own = self.clients.get_mut(&id).map(|c| &mut c.logs);
                        if let Some(note) = log_allowed(&mut self.peer_logs, own) {
                            log::info!("client {id} ({peer}): capture started{note}");
                        }
                        None
                    }
                    Err(e) => {
                        if let Some(note) = log_allowed(&mut self.peer_logs, None) {
                            log::warn!("client {id}: cannot record: {e}{note}");
                        }
                        Some(Event::StreamFailed {
                            reason: "the host cannot record now".to_owned(),
                        })
                    }
                }
            }
            Action::CloseCapture => {
                self.backend.close(id);
                let client = self.clients.get_mut(&id)?;
                let peer = client.peer.clone();
                let (sent, dropped) = client
                    .session
                    .capture()
                    .map_or((0, 0), |c| (c.sent_bytes(), c.dropped_bytes()));
                if let Some(note) = log_allowed(&mut self.peer_logs, Some(&mut client.logs)) {
                    log::info!(
                        "client {id} ({peer}): capture stopped, {sent} bytes sent, \
                         {dropped} dropped (the guest had no room){note}"
                    );
                }
                None
            }
            Action::Write(data) => match self.backend.write(id, &data) {
                Ok(()) => None,
                Err(e) => Some(Event::StreamFailed {
                    reason: e.to_string(),
                }),
            },
            Action::Cork(corked) => {
                self.backend.cork(id, corked);
                None
            }
            Action::Flush => {
                self.backend.flush(id);
                None
            }
            Action::Rewind { bytes } => {
                self.backend.rewind(id, bytes);
                None
            }
            Action::SetBuffer { tlength_bytes } => {
                let client = self.clients.get(&id)?;
                let tlength_bytes = match (&client.admission, &client.spec) {
                    (Admission::Allowed { limits, .. }, Some(spec)) => {
                        limits.cap_buffer(spec, tlength_bytes)
                    }
                    _ => tlength_bytes,
                };
                self.backend.set_buffer(id, tlength_bytes);
                None
            }
            Action::Close { reason, peer_fault } => {
                let mut client = self.remove_client(id)?;
                let summary = client.summary(self.clock.now_usec());
                // Dropping the sender lets the writer send what is queued,
                // then shut the socket down.
                drop(client.outgoing.take());
                if let Some(note) = log_allowed(&mut self.peer_logs, Some(&mut client.logs)) {
                    if peer_fault {
                        log::warn!("client {id} ({}) closed: {reason}{note}", client.peer);
                    } else {
                        log::info!(
                            "client {id} ({}) closed: {reason}, {summary}{note}",
                            client.peer
                        );
                    }
                }
                None
            }
        }
    }

    /// The refusal for client `id` (which holds a stream now) if that makes
    /// more streams than `max_clients` in all, or than its identity's
    /// `max_streams`.
    fn over_stream_caps(
        &self,
        id: ClientId,
        limits: &crate::policy::StreamLimits,
    ) -> Option<Event> {
        let client = self.clients.get(&id)?;
        let open = self
            .clients
            .values()
            .filter(|c| c.session.has_stream())
            .count();
        if open > self.config.max_clients {
            return Some(Event::OpenRefused {
                reason: RejectReason::TooManyClients,
                message: format!(
                    "{} guests are playing already (the maximum)",
                    self.config.max_clients
                ),
            });
        }
        let max = limits.max_streams?;
        let key = client.identity.key();
        let mine = self
            .clients
            .values()
            .filter(|c| c.session.has_stream() && c.identity.key() == key)
            .count();
        (mine > max).then(|| Event::OpenRefused {
            reason: RejectReason::TooManyClients,
            message: format!(
                "{} has {max} stream(s) playing already (its maximum)",
                client.identity
            ),
        })
    }

    /// Says goodbye to a streaming guest that has been silent too long.
    fn close_idle(&mut self, id: ClientId, idle: Duration) {
        let Some(mut client) = self.remove_client(id) else {
            return;
        };
        let reason = format!("idle: no message for {} ms", idle.as_millis());
        if let Some(outgoing) = &client.outgoing {
            let _ = outgoing.try_send(HostMessage::Goodbye {
                reason: bounded_text(&reason),
            });
        }
        let summary = client.summary(self.clock.now_usec());
        if let Some(note) = log_allowed(&mut self.peer_logs, Some(&mut client.logs)) {
            log::info!(
                "client {id} ({}) closed: {reason}, {summary}{note}",
                client.peer
            );
        }
    }

    fn drop_client(&mut self, id: ClientId, reason: &str) {
        if let Some(mut client) = self.remove_client(id) {
            if let Some(note) = log_allowed(&mut self.peer_logs, Some(&mut client.logs)) {
                log::warn!("client {id} ({}) dropped: {reason}{note}", client.peer);
            }
        }
    }

    /// Forgets client `id`: closes its host stream (the backend finishes a
    /// stream still being created), frees its handshake slot, and drops the
    /// per-identity count once the identity has no connection left.
    fn remove_client(&mut self, id: ClientId) -> Option<Client> {
        let mut client = self.clients.remove(&id)?;
        self.backend.close(id);
        client.slot = None;
        let key = client.identity.key();
        if !self.clients.values().any(|c| c.identity.key() == key) {
            self.connections.remove(&key);
        }
        Some(client)
    }
}

/// Log lines one guest may cause per [`CLIENT_LOG_WINDOW`].
pub const CLIENT_LOG_BUDGET: u32 = 10;
/// See [`CLIENT_LOG_BUDGET`].
pub const CLIENT_LOG_WINDOW: Duration = Duration::from_secs(10);
/// Guest-triggered log lines per second, all guests together.
pub const PEER_LOG_BUDGET: u32 = 20;

/// Whether a guest-triggered log line may be written: within the guest's
/// own budget (`own`, if the guest is known) and the daemon's (`global`).
/// `Some` holds the note to append about lines held back.
fn log_allowed(global: &mut RateLimit, own: Option<&mut RateLimit>) -> Option<String> {
    let now = Instant::now();
    let own = match own {
        Some(own) => own.check(now)?,
        None => 0,
    };
    let all = global.check(now)?;
    Some(suppressed_note(own.saturating_add(all)))
}

fn suppressed_note(suppressed: u64) -> String {
    if suppressed > 0 {
        format!(" ({suppressed} similar lines suppressed)")
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests;
