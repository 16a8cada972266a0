//! The guest-facing event loop: one thread, one poll(2) over every listener
//! and every guest connection, however many guests there are.
//!
//! It accepts (refusing denied peers before reading anything, see
//! [`crate::admission`]), decodes frames incrementally with the protocol's
//! [`FrameReader`], charges each message to the guest's budget
//! ([`crate::budget`]) and hands it to the engine; it writes what the engine
//! sends through each guest's [`Outgoing`] from a bounded output buffer.
//! Nothing here blocks on a guest: sockets are non-blocking, a guest that
//! stops reading is dropped after [`WRITE_TIMEOUT`] or once its output
//! passes [`MAX_OUTPUT_BYTES`].
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use secure_tunnel_protocol::{
    encode_frame, FrameReader, GuestMessage, HostMessage, ProtocolError, RejectReason,
};

use crate::admission::{HandshakeSlot, HandshakeSlots};
use crate::budget::MessageBudget;
use crate::clock::{HostClock, RateLimit};
use crate::connection::{Conn, Counters, OUTGOING_QUEUE, WRITE_TIMEOUT};
use crate::doorbell::{self, Bell, Ringer};
use crate::engine::{ClientId, Command, EngineHandle};
use crate::listen::{refuse_conn, suppressed_note, AcceptSocket, Lingering};
use crate::policy::{Admission, PeerIdentity, Policy};

/// Bytes of encoded host messages held for one guest; more means it does
/// not read, and it is dropped (host messages are small: 256 of the
/// largest fit).
pub const MAX_OUTPUT_BYTES: usize = 96 * 1024;
/// Bytes read from one guest per turn of the loop, so that one busy guest
/// cannot hold the loop (at most one audio frame and a half).
pub const READ_PER_TURN: usize = 96 * 1024;
/// Connections accepted per listener per turn.
pub const ACCEPTS_PER_TURN: usize = 64;
/// How long the loop sleeps at most: bounds how late a write timeout or a
/// lingering refusal is noticed.
pub const POLL_PERIOD: Duration = Duration::from_millis(100);

enum IoCommand {
    Send(ClientId, HostMessage),
    Close(ClientId),
}

/// The engine's way to one guest's socket: [`Outgoing::try_send`] queues a
/// message (at most [`OUTGOING_QUEUE`] waiting), and dropping it closes the
/// connection once what is queued has been written.
#[derive(Debug)]
pub struct Outgoing {
    id: ClientId,
    tx: Sender<IoCommand>,
    queued: Arc<AtomicUsize>,
    wake: Ringer,
}

impl std::fmt::Debug for IoCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IoCommand::Send(id, _) => write!(f, "Send({id})"),
            IoCommand::Close(id) => write!(f, "Close({id})"),
        }
    }
}

impl Outgoing {
    /// Queues `message` for the guest; `Full` when it has
    /// [`OUTGOING_QUEUE`] messages waiting already, `Disconnected` when the
    /// event loop is gone.
    pub fn try_send(&self, message: HostMessage) -> Result<(), TrySendError<()>> {
        self.try_queue(message)?;
        self.wake.ring();
        Ok(())
    }

    /// Like [`Outgoing::try_send`] but does not wake the event loop: the
    /// caller rings [`Outgoing::ringer`] once when it is done (the engine
    /// does, before it sleeps), so a credit and a clock report sent in one
    /// engine step cost the event loop one wake-up, not two.
    pub fn try_queue(&self, message: HostMessage) -> Result<(), TrySendError<()>> {
        if self.queued.load(Ordering::SeqCst) >= OUTGOING_QUEUE {
            return Err(TrySendError::Full(()));
        }
        self.queued.fetch_add(1, Ordering::SeqCst);
        self.tx
            .send(IoCommand::Send(self.id, message))
            .map_err(|_| TrySendError::Disconnected(()))
    }

    /// The event loop's wake-up (shared by every guest's [`Outgoing`]).
    pub fn ringer(&self) -> Ringer {
        self.wake.clone()
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        let _ = self.tx.send(IoCommand::Close(self.id));
        self.wake.ring();
    }
}

/// What the event loop needs besides its listeners.
#[derive(Debug, Clone)]
pub struct Acceptance {
    pub engine: EngineHandle,
    pub clock: HostClock,
    pub counters: Counters,
    pub next_id: Arc<AtomicU64>,
    pub max_connections: usize,
    pub policy: Arc<Policy>,
    pub slots: HandshakeSlots,
}

/// The engine-to-loop channel and its wake-up socket, made before the
/// sandbox (no socket can be made after it).
#[derive(Debug)]
pub struct IoChannel {
    tx: Sender<IoCommand>,
    rx: Receiver<IoCommand>,
    wake_tx: Ringer,
    wake_rx: Bell,
    /// The queue counters of [`IoChannel::outgoing`] handles (tests only).
    #[cfg(test)]
    test_queues: std::sync::Mutex<HashMap<ClientId, Arc<AtomicUsize>>>,
}

impl IoChannel {
    pub fn new() -> io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let (wake_tx, wake_rx) = doorbell::pair()?;
        Ok(IoChannel {
            tx,
            rx,
            wake_tx,
            wake_rx,
            #[cfg(test)]
            test_queues: std::sync::Mutex::default(),
        })
    }
}

#[cfg(test)]
impl IoChannel {
    /// An [`Outgoing`] for client `id` whose messages stay in this channel
    /// (engine unit tests read them with [`IoChannel::sent`]).
    pub(crate) fn outgoing(&self, id: ClientId) -> Outgoing {
        let queued = Arc::new(AtomicUsize::new(0));
        if let Ok(mut queues) = self.test_queues.lock() {
            queues.insert(id, Arc::clone(&queued));
        }
        Outgoing {
            id,
            tx: self.tx.clone(),
            queued,
            wake: self.wake_tx.clone(),
        }
    }

    /// What the engine sent so far: messages, and `None` for a close.
    /// Taking them out empties the guests' queues, as the event loop does.
    pub(crate) fn sent(&self) -> Vec<(ClientId, Option<HostMessage>)> {
        let queues = self
            .test_queues
            .lock()
            .map(|q| q.clone())
            .unwrap_or_default();
        self.rx
            .try_iter()
            .map(|c| match c {
                IoCommand::Send(id, m) => {
                    if let Some(queued) = queues.get(&id) {
                        queued.fetch_sub(1, Ordering::SeqCst);
                    }
                    (id, Some(m))
                }
                IoCommand::Close(id) => (id, None),
            })
            .collect()
    }
}

struct GuestConn {
    conn: Box<dyn Conn>,
    reader: FrameReader,
    budget: MessageBudget,
    queued: Arc<AtomicUsize>,
    out: Vec<u8>,
    /// Still reading: no end of stream, no decode error, not over budget.
    reading: bool,
    /// The engine dropped the [`Outgoing`]: write what is left, then close.
    closing: bool,
    /// Since when output has waited without the socket taking any.
    stalled_since: Option<Instant>,
    /// The engine was told the connection is over (it forgets the client).
    engine_told: bool,
}

/// Starts the event loop thread; it runs until the process ends.
pub fn spawn(
    listeners: Vec<AcceptSocket>,
    channel: IoChannel,
    acceptance: Acceptance,
) -> io::Result<()> {
    for l in &listeners {
        l.set_nonblocking()?;
    }
    thread::Builder::new()
        .name("guest-io".to_owned())
        .spawn(move || {
            crate::sys::return_to_base_nice();
            let mut event_loop = EventLoop {
                listeners,
                limits: Vec::new(),
                lingering: Lingering::default(),
                conns: HashMap::new(),
                channel,
                shared: acceptance,
                scratch: vec![0; READ_PER_TURN],
                engine_pending: false,
            };
            event_loop.limits = event_loop
                .listeners
                .iter()
                .map(|_| RateLimit::new(5, Duration::from_secs(10)))
                .collect();
            event_loop.run();
        })?;
    Ok(())
}

struct EventLoop {
    listeners: Vec<AcceptSocket>,
    /// One refusal log limiter per listener.
    limits: Vec<RateLimit>,
    lingering: Lingering,
    conns: HashMap<ClientId, GuestConn>,
    channel: IoChannel,
    shared: Acceptance,
    scratch: Vec<u8>,
    /// Guest messages were queued for the engine this turn without waking
    /// it ([`EngineHandle::send_batched`]).
    engine_pending: bool,
}

#[derive(Clone, Copy)]
enum Source {
    Wake,
    Listener(usize),
    Conn(ClientId),
}

impl EventLoop {
    fn run(&mut self) {
        let mut ready: Vec<(Source, PollFlags)> = Vec::new();
        loop {
            ready.clear();
            if let Err(e) = self.wait(&mut ready) {
                log::error!("guest event loop: poll failed: {e}");
                thread::sleep(POLL_PERIOD);
            }
            for &(source, flags) in &ready {
                match source {
                    Source::Wake => self.drain_wake(),
                    Source::Listener(i) => self.accept_from(i),
                    Source::Conn(id) => self.serve(id, flags),
                }
            }
            // One wake-up for all the guests' messages of this turn.
            if std::mem::take(&mut self.engine_pending) {
                self.shared.engine.wake();
            }
            if !self.engine_commands() {
                log::debug!("guest event loop stopped: the engine is gone");
                return;
            }
            self.housekeeping(Instant::now());
        }
    }

    /// Polls every descriptor once; fills `ready` with what is ready.
    fn wait(&self, ready: &mut Vec<(Source, PollFlags)>) -> nix::Result<()> {
        let mut sources = Vec::with_capacity(1 + self.listeners.len() + self.conns.len());
        let mut fds = Vec::with_capacity(sources.capacity());
        sources.push(Source::Wake);
        fds.push(PollFd::new(
            std::os::fd::AsFd::as_fd(&self.channel.wake_rx),
            PollFlags::POLLIN,
        ));
        for (i, l) in self.listeners.iter().enumerate() {
            sources.push(Source::Listener(i));
            fds.push(PollFd::new(l.fd(), PollFlags::POLLIN));
        }
        for (&id, c) in &self.conns {
            let mut events = PollFlags::empty();
            if c.reading {
                events |= PollFlags::POLLIN;
            }
            if !c.out.is_empty() {
                events |= PollFlags::POLLOUT;
            }
            sources.push(Source::Conn(id));
            fds.push(PollFd::new(c.conn.fd(), events));
        }
        let timeout = PollTimeout::try_from(POLL_PERIOD).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok(()),
            Err(e) => return Err(e),
        }
        for (source, fd) in sources.into_iter().zip(&fds) {
            if let Some(flags) = fd.revents() {
                if !flags.is_empty() {
                    ready.push((source, flags));
                }
            }
        }
        Ok(())
    }

    /// Call it before taking the engine's commands: see [`crate::doorbell`].
    fn drain_wake(&mut self) {
        self.channel.wake_rx.answer();
    }

    /// Carries out what the engine asked; `false` once the engine is gone
    /// and nothing is left to write.
    fn engine_commands(&mut self) -> bool {
        loop {
            match self.channel.rx.try_recv() {
                Ok(IoCommand::Send(id, message)) => {
                    let Some(c) = self.conns.get_mut(&id) else {
                        continue;
                    };
                    c.queued.fetch_sub(1, Ordering::SeqCst);
                    if c.out.len() > MAX_OUTPUT_BYTES {
                        continue;
                    }
                    if let Err(e) = encode_frame(&message, &mut c.out) {
                        log::warn!("client {id}: cannot encode a host message: {e}");
                    }
                    if c.out.len() > MAX_OUTPUT_BYTES {
                        // Written on the next turn if the socket takes it;
                        // dropped there otherwise.
                        log::debug!("client {id}: output passed {MAX_OUTPUT_BYTES} bytes");
                    }
                    self.flush(id);
                }
                Ok(IoCommand::Close(id)) => {
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.closing = true;
                        c.engine_told = true;
                        c.reading = false;
                    }
                    self.flush(id);
                }
                Err(TryRecvError::Empty) => return true,
                // Only the loop's own sender is left: the engine is gone.
                Err(TryRecvError::Disconnected) => return !self.conns.is_empty(),
            }
        }
    }

    fn accept_from(&mut self, index: usize) {
        for _ in 0..ACCEPTS_PER_TURN {
            let Some(listener) = self.listeners.get(index) else {
                return;
            };
            match listener.accept() {
                Ok((conn, peer, identity)) => self.admit(index, conn, peer, identity),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    let name = listener.name().to_owned();
                    if let Some(limit) = self.limits.get_mut(index) {
                        if limit.check(Instant::now()).is_some() {
                            log::warn!("accept on {name} failed: {e}");
                        }
                    }
                    return;
                }
            }
        }
    }

    /// Lets a connection in, or refuses it before reading anything: a
    /// policy refusal with a Reject (lingering, without a slot), a capacity
    /// refusal by closing at once (the guest module retries).
    fn admit(&mut self, index: usize, conn: Box<dyn Conn>, peer: String, identity: PeerIdentity) {
        let name = self
            .listeners
            .get(index)
            .map_or("?", |l| l.name())
            .to_owned();
        let refusal = if let Admission::Denied { reason } =
            self.shared.policy.admit_on(Some(&name), &identity)
        {
            Some((Some(RejectReason::NotAllowed), reason))
        } else if self.conns.len() >= self.shared.max_connections {
            let text = format!("{} connections (the maximum)", self.shared.max_connections);
            Some((None, text))
        } else {
            None
        };
        let slot = match refusal {
            Some(refusal) => Err(refusal),
            None => self
                .shared
                .slots
                .acquire(identity.key())
                .map_err(|text| (None, text)),
        };
        let slot: HandshakeSlot = match slot {
            Ok(slot) => slot,
            Err((reject, text)) => {
                if let Some(limit) = self.limits.get_mut(index) {
                    if let Some(suppressed) = limit.check(Instant::now()) {
                        let how = reject.map_or_else(
                            || "closed at once".to_owned(),
                            |r| format!("rejected ({r:?}) before reading"),
                        );
                        log::warn!(
                            "refusing ({identity}) on {name}, {how}: {text}{}",
                            suppressed_note(suppressed)
                        );
                    }
                }
                match reject {
                    Some(reason) => {
                        let conn = refuse_conn(conn, reason, &text);
                        self.lingering.push(conn, Instant::now());
                    }
                    None => conn.shutdown_both(),
                }
                return;
            }
        };
        if let Err(e) = conn.set_nonblocking_conn() {
            log::warn!("cannot serve a connection on {name}: {e}");
            conn.shutdown_both();
            return;
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::SeqCst);
        let queued = Arc::new(AtomicUsize::new(0));
        let outgoing = Outgoing {
            id,
            tx: self.channel.tx.clone(),
            queued: Arc::clone(&queued),
            wake: self.channel.wake_tx.clone(),
        };
        // Registered before anything is read, so no message overtakes it.
        let connect = Command::Connect {
            id,
            peer: format!("{name} {peer}"),
            listener: name.clone(),
            identity,
            outgoing,
            slot: Some(slot),
        };
        if self.shared.engine.send(connect).is_err() {
            conn.shutdown_both();
            return;
        }
        self.conns.insert(
            id,
            GuestConn {
                conn,
                reader: FrameReader::new(),
                budget: MessageBudget::default(),
                queued,
                out: Vec::new(),
                reading: true,
                closing: false,
                stalled_since: None,
                engine_told: false,
            },
        );
    }

    fn serve(&mut self, id: ClientId, flags: PollFlags) {
        if flags.intersects(PollFlags::POLLOUT | PollFlags::POLLERR | PollFlags::POLLHUP) {
            self.flush(id);
        }
        if flags.intersects(PollFlags::POLLIN | PollFlags::POLLERR | PollFlags::POLLHUP) {
            self.read(id);
        }
    }

    /// Reads what one turn allows and hands every whole message to the
    /// engine.
    fn read(&mut self, id: ClientId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let mut budget_left = READ_PER_TURN;
        let mut end: Option<Command> = None;
        while c.reading && budget_left > 0 && end.is_none() {
            let want = c.reader.wanted().min(budget_left).min(self.scratch.len());
            let Some(buf) = self.scratch.get_mut(..want) else {
                break;
            };
            match c.conn.read(buf) {
                // End of stream inside a frame is a truncated frame
                // (docs/protocol.md): answered with a Reject, as before.
                Ok(0) if c.reader.pending() > 0 => {
                    end = Some(Command::ProtocolError {
                        id,
                        error: ProtocolError::Truncated.to_string(),
                    });
                }
                Ok(0) => end = Some(Command::Disconnected { id }),
                Ok(n) => {
                    budget_left = budget_left.saturating_sub(n);
                    c.reader.feed(buf.get(..n).unwrap_or_default());
                    loop {
                        match c.reader.next_message::<GuestMessage>() {
                            Ok(Some(message)) => {
                                let at_usec = self.shared.clock.now_usec();
                                if let Err(reason) = c.budget.charge(at_usec, &message) {
                                    end = Some(Command::OverBudget { id, reason });
                                    break;
                                }
                                let command = Command::Message {
                                    id,
                                    message,
                                    at_usec,
                                };
                                if self.shared.engine.send_batched(command).is_err() {
                                    c.reading = false;
                                    return;
                                }
                                self.engine_pending = true;
                            }
                            Ok(None) => break,
                            Err(e) => {
                                end = Some(Command::ProtocolError {
                                    id,
                                    error: e.to_string(),
                                });
                                break;
                            }
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("client {id}: read failed: {e}");
                    end = Some(Command::Disconnected { id });
                }
            }
        }
        if let Some(command) = end {
            // Nothing more is read; the write side stays open for a final
            // Reject or Goodbye until the engine drops the Outgoing.
            c.reading = false;
            if matches!(command, Command::Disconnected { .. }) {
                c.engine_told = true;
            }
            let _ = self.shared.engine.send(command);
        }
    }

    /// Writes what the socket takes; closes a connection the engine is done
    /// with once its output is out, and drops one whose socket failed.
    fn flush(&mut self, id: ClientId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let mut failed = false;
        while !c.out.is_empty() {
            match c.conn.write(&c.out) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => {
                    c.out.drain(..n);
                    c.stalled_since = None;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    c.stalled_since.get_or_insert_with(Instant::now);
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("client {id}: write failed: {e}");
                    failed = true;
                    break;
                }
            }
        }
        if c.out.len() > MAX_OUTPUT_BYTES && !failed {
            log::debug!("client {id}: dropped, it does not read");
            failed = true;
        }
        if failed {
            c.out.clear();
            self.drop_conn(id);
        } else if c.closing && c.out.is_empty() {
            self.drop_conn(id);
        }
    }

    /// Shuts the socket down and forgets it, telling the engine if it does
    /// not know yet.
    fn drop_conn(&mut self, id: ClientId) {
        if let Some(c) = self.conns.remove(&id) {
            c.conn.shutdown_both();
            if !c.engine_told {
                let _ = self.shared.engine.send(Command::Disconnected { id });
            }
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        self.lingering.expire(now);
        let stalled: Vec<ClientId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.stalled_since
                    .is_some_and(|since| now.saturating_duration_since(since) >= WRITE_TIMEOUT)
            })
            .map(|(&id, _)| id)
            .collect();
        for id in stalled {
            log::debug!("client {id}: dropped, no write progress for {WRITE_TIMEOUT:?}");
            self.drop_conn(id);
        }
        let open = self.conns.len();
        self.shared.counters.readers.store(open, Ordering::SeqCst);
        self.shared.counters.writers.store(open, Ordering::SeqCst);
    }
}
