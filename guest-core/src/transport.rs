//! The guest's end of the connection: connecting and handshaking on a helper
//! thread (so neither PulseAudio's main loop nor the IO thread ever waits on
//! the network), then non-blocking reads and writes from the IO thread.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::thread;
use std::time::Duration;

use secure_tunnel_protocol::{
    encode_audio_frame, encode_frame, read_frame, write_frame, Accept, FrameReader, GuestMessage,
    Hello, HostMessage, ProtocolError,
};
use thiserror::Error;

use crate::config::ServerAddr;

/// How long connecting plus the handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Most bytes read from the socket in one IO-thread wake-up, so a flood of
/// host messages cannot starve rendering.
const READ_BUDGET: usize = 256 * 1024;

/// Why a connection attempt or an established connection failed.
#[derive(Debug, Error)]
pub enum TransportError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("host rejected the stream ({reason:?}): {message}")]
    Rejected {
        reason: secure_tunnel_protocol::RejectReason,
        message: String,
    },
    #[error("host answered the handshake with {0}")]
    UnexpectedReply(&'static str),
    #[error("host accepted with protocol version {0}, not the version offered")]
    Version(u16),
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("host closed the connection")]
    Closed,
}

/// A connected socket of any of the supported transports.
#[derive(Debug)]
pub enum Socket {
    Unix(UnixStream),
    Tcp(TcpStream),
    Vsock(vsock::VsockStream),
}

impl Socket {
    fn connect(addr: &ServerAddr) -> io::Result<Socket> {
        match addr {
            ServerAddr::Unix(path) => UnixStream::connect(path).map(Socket::Unix),
            ServerAddr::Tcp { host, port } => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address found");
                for sa in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&sa, HANDSHAKE_TIMEOUT) {
                        Ok(s) => {
                            s.set_nodelay(true)?;
                            return Ok(Socket::Tcp(s));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            ServerAddr::Vsock { cid, port } => {
                vsock::VsockStream::connect(&vsock::VsockAddr::new(*cid, *port)).map(Socket::Vsock)
            }
        }
    }

    fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Socket::Unix(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
            Socket::Tcp(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
            Socket::Vsock(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
        }
    }

    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Socket::Unix(s) => s.set_nonblocking(true),
            Socket::Tcp(s) => s.set_nonblocking(true),
            Socket::Vsock(s) => s.set_nonblocking(true),
        }
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Unix(s) => s.read(buf),
            Socket::Tcp(s) => s.read(buf),
            Socket::Vsock(s) => s.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Unix(s) => s.write(buf),
            Socket::Tcp(s) => s.write(buf),
            Socket::Vsock(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Socket::Unix(s) => s.as_raw_fd(),
            Socket::Tcp(s) => s.as_raw_fd(),
            Socket::Vsock(s) => s.as_raw_fd(),
        }
    }
}

/// Connects and performs the handshake, blocking (with timeouts).
fn connect_and_handshake(
    addr: &ServerAddr,
    hello: &Hello,
) -> Result<(Connection, Accept), TransportError> {
    let mut sock = Socket::connect(addr).map_err(|source| TransportError::Connect {
        addr: addr.to_string(),
        source,
    })?;
    sock.set_timeouts(Some(HANDSHAKE_TIMEOUT))?;
    write_frame(&mut sock, &GuestMessage::Hello(hello.clone()))?;
    let accept = match read_frame::<HostMessage, _>(&mut sock)? {
        HostMessage::Accept(a) if a.version == hello.version => a,
        HostMessage::Accept(a) => return Err(TransportError::Version(a.version)),
        HostMessage::Reject { reason, message } => {
            return Err(TransportError::Rejected { reason, message })
        }
        HostMessage::Credit { .. } => return Err(TransportError::UnexpectedReply("Credit")),
        HostMessage::Clock(_) => return Err(TransportError::UnexpectedReply("Clock")),
        HostMessage::Pong { .. } => return Err(TransportError::UnexpectedReply("Pong")),
        HostMessage::Goodbye { .. } => return Err(TransportError::UnexpectedReply("Goodbye")),
        HostMessage::CaptureData(_)
        | HostMessage::CaptureClock(_)
        | HostMessage::CaptureState { .. } => {
            return Err(TransportError::UnexpectedReply("a capture message"))
        }
    };
    sock.set_timeouts(None)?;
    sock.set_nonblocking()?;
    Ok((Connection::new(sock), accept))
}

/// An attempt running on a helper thread. Dropping it abandons the attempt:
/// the thread finishes on its own within the handshake timeout.
#[derive(Debug)]
pub struct Pending<T> {
    rx: Receiver<Result<T, TransportError>>,
}

/// A connection attempt plus the playback handshake.
pub type PendingConnect = Pending<(Connection, Accept)>;
/// A connection attempt only: the caller's session does the handshake
/// (capture sends its own `CaptureHello` and reads the reply non-blocking).
pub type PendingDial = Pending<Connection>;

impl<T: Send + 'static> Pending<T> {
    fn spawn(
        work: impl FnOnce() -> Result<T, TransportError> + Send + 'static,
    ) -> io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(1);
        thread::Builder::new()
            .name("tunnel-connect".into())
            .spawn(move || {
                // The receiver may be gone (module unloaded): nothing to do then.
                let _ = tx.send(work());
            })?;
        Ok(Self { rx })
    }

    /// The outcome, once there is one.
    pub fn poll(&self) -> Option<Result<T, TransportError>> {
        match self.rx.try_recv() {
            Ok(outcome) => Some(outcome),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err(TransportError::Closed)),
        }
    }
}

impl Pending<(Connection, Accept)> {
    /// Connects to `addr` and sends `hello`, on a helper thread.
    pub fn start(addr: ServerAddr, hello: Hello) -> io::Result<Self> {
        Self::spawn(move || connect_and_handshake(&addr, &hello))
    }
}

impl Pending<Connection> {
    /// Connects to `addr` on a helper thread; the connection comes back
    /// non-blocking, with nothing sent.
    pub fn dial(addr: ServerAddr) -> io::Result<Self> {
        Self::spawn(move || {
            let sock = Socket::connect(&addr).map_err(|source| TransportError::Connect {
                addr: addr.to_string(),
                source,
            })?;
            sock.set_nonblocking()?;
            Ok(Connection::new(sock))
        })
    }
}

/// An established, non-blocking connection.
#[derive(Debug)]
pub struct Connection {
    sock: Socket,
    reader: FrameReader,
    out: Vec<u8>,
    out_pos: usize,
    scratch: Vec<u8>,
}

impl Connection {
    fn new(sock: Socket) -> Self {
        Self {
            sock,
            reader: FrameReader::new(),
            out: Vec::with_capacity(128 * 1024),
            out_pos: 0,
            scratch: vec![0; 64 * 1024],
        }
    }

    /// A unix socket whose handshake is already done (by the caller), made
    /// non-blocking. For the fuzz harness and tests, which play the host on
    /// the other end of a socket pair; the module itself always connects
    /// through [`PendingConnect`].
    #[doc(hidden)]
    pub fn from_unix_stream(sock: UnixStream) -> io::Result<Self> {
        sock.set_nonblocking(true)?;
        Ok(Self::new(Socket::Unix(sock)))
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Queues a message; [`Connection::flush`] sends it.
    pub fn queue(&mut self, msg: &GuestMessage) -> Result<(), TransportError> {
        encode_frame(msg, &mut self.out)?;
        Ok(())
    }

    /// Queues one audio chunk (whole frames, at most `MAX_AUDIO_CHUNK`
    /// bytes) without copying it into a message first: no allocation on the
    /// IO thread once the send buffer has grown to its working size.
    pub fn queue_audio(&mut self, pcm: &[u8]) -> Result<(), TransportError> {
        encode_audio_frame(pcm, &mut self.out)?;
        Ok(())
    }

    /// Bytes queued but not yet written.
    pub fn backlog(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Writes as much of the queue as the socket takes now.
    pub fn flush(&mut self) -> Result<(), TransportError> {
        while self.out_pos < self.out.len() {
            match self.sock.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(TransportError::Closed),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        Ok(())
    }

    /// Reads what has arrived (bounded per call) and hands each complete
    /// message to `on_message`.
    pub fn receive(
        &mut self,
        mut on_message: impl FnMut(HostMessage),
    ) -> Result<(), TransportError> {
        let mut budget = READ_BUDGET;
        while budget > 0 {
            let want = self.scratch.len().min(budget);
            match self.sock.read(&mut self.scratch[..want]) {
                Ok(0) => return Err(TransportError::Closed),
                Ok(n) => {
                    budget -= n;
                    self.reader.feed(&self.scratch[..n]);
                    while let Some(msg) = self.reader.next_message::<HostMessage>()? {
                        on_message(msg);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
