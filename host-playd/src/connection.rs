//! One guest connection: a reader thread that decodes frames and hands them
//! to the engine, and a writer thread that drains a bounded queue of host
//! messages onto the socket.
//!
//! The engine closes a connection by dropping its queue's sender: the writer
//! sends what is left, then shuts the socket down, which ends the reader.
#![forbid(unsafe_code)]

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use secure_tunnel_protocol::{read_frame, write_frame, GuestMessage, HostMessage, ProtocolError};
use vsock::VsockStream;

use crate::admission::HandshakeSlot;
use crate::budget::MessageBudget;
use crate::clock::HostClock;
use crate::engine::{ClientId, Command, EngineHandle};
use crate::policy::PeerIdentity;

/// Host messages queued for one guest; a guest that lets it fill up is
/// dropped rather than allowed to grow the daemon's memory.
pub const OUTGOING_QUEUE: usize = 256;
/// A write that blocks this long means the guest stopped reading.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A connected byte stream of any listener kind.
pub trait Conn: Read + Write + Send + 'static {
    /// A second handle on the same socket.
    fn try_clone_conn(&self) -> io::Result<Box<dyn Conn>>;
    /// Ends both directions; errors mean it is already closed.
    fn shutdown_both(&self);
    /// Ends the sending direction only.
    fn shutdown_write(&self);
    /// Bounds blocking writes.
    fn set_write_timeout_conn(&self, timeout: Duration) -> io::Result<()>;
}

/// The same three methods for every socket type std or vsock provides.
macro_rules! impl_conn {
    ($($ty:ty),+) => {$(
        impl Conn for $ty {
            fn try_clone_conn(&self) -> io::Result<Box<dyn Conn>> {
                Ok(Box::new(self.try_clone()?))
            }
            fn shutdown_both(&self) {
                let _ = self.shutdown(Shutdown::Both);
            }
            fn shutdown_write(&self) {
                let _ = self.shutdown(Shutdown::Write);
            }
            fn set_write_timeout_conn(&self, timeout: Duration) -> io::Result<()> {
                self.set_write_timeout(Some(timeout))
            }
        }
    )+};
}

impl_conn!(UnixStream, TcpStream, VsockStream);

/// Counts live connection threads; decrements when dropped.
#[derive(Debug)]
pub struct LiveGuard(Arc<AtomicUsize>);

impl LiveGuard {
    pub fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        LiveGuard(Arc::clone(counter))
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Shared counters the daemon watches.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Connections whose reader is running (bounded by the acceptor).
    pub readers: Arc<AtomicUsize>,
    /// Writers still sending (the daemon waits for them at shutdown).
    pub writers: Arc<AtomicUsize>,
}

/// A connection the acceptor let in.
#[allow(missing_debug_implementations)]
pub struct Accepted {
    pub id: ClientId,
    pub conn: Box<dyn Conn>,
    /// The listener and peer, as logs show them.
    pub peer: String,
    /// The listener's name alone, for the policy's `listen` rules.
    pub listener: String,
    pub identity: PeerIdentity,
    pub slot: HandshakeSlot,
}

/// Starts the reader and writer threads of a freshly accepted connection.
pub fn spawn(
    accepted: Accepted,
    engine: EngineHandle,
    clock: HostClock,
    counters: &Counters,
) -> io::Result<()> {
    let Accepted {
        id,
        conn,
        peer,
        listener,
        identity,
        slot,
    } = accepted;
    let writer_conn = conn.try_clone_conn()?;
    writer_conn.set_write_timeout_conn(WRITE_TIMEOUT)?;
    let (outgoing, queue) = mpsc::sync_channel(OUTGOING_QUEUE);

    let writer_guard = LiveGuard::new(&counters.writers);
    thread::Builder::new()
        .name(format!("conn-{id}-tx"))
        .spawn(move || {
            let _guard = writer_guard;
            write_loop(id, writer_conn, queue);
        })?;

    // Register before reading so no message can overtake the Connect.
    if engine
        .send(Command::Connect {
            id,
            peer,
            listener,
            identity,
            outgoing,
            slot: Some(slot),
        })
        .is_err()
    {
        conn.shutdown_both();
        return Ok(());
    }
    let reader_guard = LiveGuard::new(&counters.readers);
    thread::Builder::new()
        .name(format!("conn-{id}-rx"))
        .spawn(move || {
            let _guard = reader_guard;
            read_loop(id, conn, &engine, clock);
        })?;
    Ok(())
}

fn read_loop(id: ClientId, conn: Box<dyn Conn>, engine: &EngineHandle, clock: HostClock) {
    let mut reader = BufReader::with_capacity(64 * 1024, conn);
    let mut budget = MessageBudget::default();
    loop {
        match read_frame::<GuestMessage, _>(&mut reader) {
            Ok(message) => {
                let at_usec = clock.now_usec();
                if let Err(reason) = budget.charge(at_usec, &message) {
                    // Nothing more is read: the engine says why and closes.
                    let _ = engine.send(Command::OverBudget { id, reason });
                    break;
                }
                let command = Command::Message {
                    id,
                    message,
                    at_usec,
                };
                if engine.send(command).is_err() {
                    break;
                }
            }
            Err(ProtocolError::Closed) => {
                let _ = engine.send(Command::Disconnected { id });
                break;
            }
            Err(ProtocolError::Io(e)) => {
                log::debug!("client {id}: read failed: {e}");
                let _ = engine.send(Command::Disconnected { id });
                break;
            }
            Err(e) => {
                let _ = engine.send(Command::ProtocolError {
                    id,
                    error: e.to_string(),
                });
                break;
            }
        }
    }
    // The write side stays open for a final Reject or Goodbye: the writer
    // shuts the socket down once the engine drops its queue.
}

fn write_loop(id: ClientId, conn: Box<dyn Conn>, queue: Receiver<HostMessage>) {
    let mut writer = BufWriter::with_capacity(16 * 1024, conn);
    'outer: while let Ok(message) = queue.recv() {
        let mut next = Some(message);
        while let Some(message) = next.take() {
            if let Err(e) = write_frame(&mut writer, &message) {
                log::debug!("client {id}: write failed: {e}");
                break 'outer;
            }
            next = queue.try_recv().ok();
        }
        if let Err(e) = writer.flush() {
            log::debug!("client {id}: write failed: {e}");
            break;
        }
    }
    let _ = writer.flush();
    writer.get_ref().shutdown_both();
}
