//! A guest connection's socket, whatever the listener kind, and the limits
//! on what the daemon queues for it. The event loop in [`crate::io`] serves
//! every connection.
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use vsock::VsockStream;

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
    /// Makes reads and writes return `WouldBlock` instead of waiting.
    fn set_nonblocking_conn(&self) -> io::Result<()>;
    /// The descriptor, for poll(2).
    fn fd(&self) -> BorrowedFd<'_>;
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
            fn set_nonblocking_conn(&self) -> io::Result<()> {
                self.set_nonblocking(true)
            }
            fn fd(&self) -> BorrowedFd<'_> {
                self.as_fd()
            }
        }
    )+};
}

impl_conn!(UnixStream, TcpStream, VsockStream);

/// Shared counters the daemon watches.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Guest connections open now (bounded by the acceptor).
    pub readers: Arc<AtomicUsize>,
    /// Connections still sending (the daemon waits for them at shutdown).
    pub writers: Arc<AtomicUsize>,
}
