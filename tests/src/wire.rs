//! A protocol-level client of host-playd that says exactly what a test tells
//! it to: valid messages at any rate, closes at any point, raw bytes. The
//! hostile tests build their attackers from it, and [`crate::LegitGuest`]
//! its well-behaved guest.

use std::{
    fmt,
    io::{self, Read, Write},
    net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream},
    os::unix::net::UnixStream,
    path::PathBuf,
    str::FromStr,
    time::{Duration, Instant},
};

use secure_tunnel_protocol::{
    encode_frame, Accept, FrameReader, GuestMessage, Hello, HostMessage, RejectReason,
    SampleFormat, StreamSpec, MAGIC, PROTOCOL_VERSION,
};

use crate::HarnessError;

/// Where host-playd listens: `unix:PATH` or `tcp:ADDR:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A unix socket path.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
    /// A TCP address, connected to from a chosen local IPv4 address (such
    /// as 127.0.0.2, to be another peer than 127.0.0.1 on loopback).
    TcpFrom(Ipv4Addr, SocketAddrV4),
}

impl Target {
    /// Connects.
    pub fn connect(&self) -> io::Result<Conn> {
        match self {
            Target::Unix(p) => UnixStream::connect(p).map(Conn::Unix),
            Target::Tcp(a) => TcpStream::connect_timeout(a, Duration::from_secs(2)).map(|s| {
                let _ = s.set_nodelay(true);
                Conn::Tcp(s)
            }),
            Target::TcpFrom(from, to) => connect_from(*from, *to).map(|s| {
                let _ = s.set_nodelay(true);
                Conn::Tcp(s)
            }),
        }
    }

    /// The address as host-playd's `--listen` takes it.
    pub fn listen_arg(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
            Target::Tcp(a) => write!(f, "tcp:{a}"),
            Target::TcpFrom(_, a) => write!(f, "tcp:{a}"),
        }
    }
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            Ok(Target::Unix(PathBuf::from(p)))
        } else if let Some(a) = s.strip_prefix("tcp:") {
            a.parse()
                .map(Target::Tcp)
                .map_err(|e| format!("{a:?}: {e}"))
        } else {
            Err(format!("{s:?} is neither unix:PATH nor tcp:ADDR:PORT"))
        }
    }
}

/// A TCP connection to `to` from `from` (port chosen by the kernel).
fn connect_from(from: Ipv4Addr, to: SocketAddrV4) -> io::Result<TcpStream> {
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(SocketAddrV4::new(from, 0)),
    )?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(to))?;
    Ok(TcpStream::from(fd))
}

/// A connected unix or TCP stream.
#[derive(Debug)]
pub enum Conn {
    /// Unix.
    Unix(UnixStream),
    /// TCP.
    Tcp(TcpStream),
}

impl Conn {
    /// A second handle on the same socket (for a reader thread).
    pub fn try_clone(&self) -> io::Result<Conn> {
        match self {
            Conn::Unix(s) => s.try_clone().map(Conn::Unix),
            Conn::Tcp(s) => s.try_clone().map(Conn::Tcp),
        }
    }

    /// `shutdown(2)`.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.shutdown(how),
            Conn::Tcp(s) => s.shutdown(how),
        }
    }

    /// Bounds every read.
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.set_read_timeout(t),
            Conn::Tcp(s) => s.set_read_timeout(t),
        }
    }

    /// Bounds every write.
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.set_write_timeout(t),
            Conn::Tcp(s) => s.set_write_timeout(t),
        }
    }

    /// Non-blocking mode.
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.set_nonblocking(on),
            Conn::Tcp(s) => s.set_nonblocking(on),
        }
    }

    /// Whether the peer has closed (or reset) the connection, without
    /// waiting: a non-blocking one-byte peek at what arrived.
    pub fn peer_closed(&mut self) -> bool {
        if self.set_nonblocking(true).is_err() {
            return true;
        }
        let mut b = [0u8; 1];
        let closed = match self.read(&mut b) {
            Ok(n) => n == 0,
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        };
        let _ = self.set_nonblocking(false);
        closed
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The spec every protocol-level test guest offers: s16le stereo 48 kHz.
pub fn test_spec() -> StreamSpec {
    StreamSpec {
        format: SampleFormat::S16Le,
        rate: 48_000,
        channel_map: vec![1, 2],
    }
}

/// A v1 Hello for [`test_spec`].
pub fn hello(name: &str, target_latency_usec: u32) -> GuestMessage {
    GuestMessage::Hello(Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        spec: test_spec(),
        target_latency_usec,
        stream_name: name.to_owned(),
    })
}

/// `msgs` encoded back to back, unvalidated (the encoder does not check
/// bounds, so a test can send what a valid guest never would).
pub fn frames(msgs: &[GuestMessage]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        // Encoding fails only above MAX_FRAME_LEN, which no test message is.
        if encode_frame(m, &mut out).is_err() {
            unreachable!("a test message larger than a frame: {m:?}");
        }
    }
    out
}

/// How a handshake ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    /// Accepted, with the first credit grant (0 if none came with it).
    Accepted {
        /// The Accept.
        accept: Accept,
        /// The cumulative credit granted so far.
        credit: u64,
        /// From connect to Accept.
        took: Duration,
    },
    /// Rejected.
    Rejected {
        /// Why.
        reason: RejectReason,
        /// host-playd's text.
        message: String,
    },
    /// Closed (or reset, or timed out) without a word.
    Closed(String),
}

/// One connection to host-playd that a test drives message by message.
#[derive(Debug)]
pub struct Client {
    conn: Conn,
    reader: FrameReader,
    connected_at: Instant,
}

impl Client {
    /// Connects; every later read and write is bounded by 5 s.
    pub fn connect(target: &Target) -> Result<Self, HarnessError> {
        let conn = target
            .connect()
            .map_err(|e| HarnessError::io(format!("connecting to {target}"), e))?;
        let bound = Some(Duration::from_secs(5));
        conn.set_read_timeout(bound)
            .and_then(|()| conn.set_write_timeout(bound))
            .map_err(|e| HarnessError::io("setting socket timeouts", e))?;
        Ok(Self {
            conn,
            reader: FrameReader::new(),
            connected_at: Instant::now(),
        })
    }

    /// Wraps a socket connected already.
    pub fn from_conn(conn: Conn) -> Self {
        Self {
            conn,
            reader: FrameReader::new(),
            connected_at: Instant::now(),
        }
    }

    /// The socket itself.
    pub fn conn(&mut self) -> &mut Conn {
        &mut self.conn
    }

    /// Takes the socket (e.g. to hand one handle to a reader thread).
    pub fn into_conn(self) -> Conn {
        self.conn
    }

    /// Sends `msgs` in one write.
    pub fn send(&mut self, msgs: &[GuestMessage]) -> io::Result<()> {
        self.conn.write_all(&frames(msgs))
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.conn.write_all(bytes)
    }

    /// The next host message within `timeout`: `Ok(None)` when none came in
    /// time, `Err` with a description when the connection ended or spoke
    /// nonsense.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<HostMessage>, String> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            match self.reader.next_message::<HostMessage>() {
                Ok(Some(m)) => return Ok(Some(m)),
                Ok(None) => {}
                Err(e) => return Err(format!("host-playd sent an invalid frame: {e}")),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let _ = self
                .conn
                .set_read_timeout(Some(left.max(Duration::from_millis(1))));
            match self.conn.read(&mut buf) {
                Ok(0) => return Err("closed".to_owned()),
                Ok(n) => self.reader.feed(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(format!("read failed: {e}")),
            }
        }
    }

    /// Every host message until the connection ends; `Err` (with what came)
    /// if it is still open after `timeout`.
    pub fn until_closed(
        &mut self,
        timeout: Duration,
    ) -> Result<Vec<HostMessage>, Vec<HostMessage>> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(got);
            }
            match self.recv(left) {
                Ok(Some(m)) => got.push(m),
                Ok(None) => return Err(got),
                Err(_) => return Ok(got),
            }
        }
    }

    /// Sends `hello` and waits up to `timeout` for Accept (and the credit
    /// grant that follows it) or Reject.
    pub fn handshake(&mut self, hello: &GuestMessage, timeout: Duration) -> Handshake {
        if let Err(e) = self.send(std::slice::from_ref(hello)) {
            return Handshake::Closed(format!("sending Hello: {e}"));
        }
        self.await_handshake(timeout)
    }

    /// [`Client::handshake`] for a Hello already sent.
    pub fn await_handshake(&mut self, timeout: Duration) -> Handshake {
        let deadline = Instant::now() + timeout;
        let mut accepted: Option<(Accept, Duration)> = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Some((accept, took)) = &accepted {
                // The first Credit follows Accept at once; do not wait long.
                match self.recv(left.min(Duration::from_millis(500))) {
                    Ok(Some(HostMessage::Credit { limit_bytes })) => {
                        return Handshake::Accepted {
                            accept: accept.clone(),
                            credit: limit_bytes,
                            took: *took,
                        }
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => {
                        return Handshake::Accepted {
                            accept: accept.clone(),
                            credit: 0,
                            took: *took,
                        }
                    }
                }
            }
            if left.is_zero() {
                return Handshake::Closed(format!("no answer to Hello within {timeout:?}"));
            }
            match self.recv(left) {
                Ok(Some(HostMessage::Accept(a))) => {
                    accepted = Some((a, self.connected_at.elapsed()));
                }
                Ok(Some(HostMessage::Reject { reason, message })) => {
                    return Handshake::Rejected { reason, message }
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Handshake::Closed(format!("no answer to Hello within {timeout:?}"))
                }
                Err(e) => return Handshake::Closed(e),
            }
        }
    }
}
