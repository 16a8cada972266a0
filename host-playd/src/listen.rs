//! Listening addresses (`unix:PATH`, `tcp:HOST:PORT`, `vsock:CID:PORT`), the
//! listeners bound to them, and their accept loops.
#![forbid(unsafe_code)]

use std::fs;
use std::io::{self, ErrorKind, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{self, sockopt, AddressFamily, SockaddrLike, SockaddrStorage};
use thiserror::Error;
use vsock::VsockListener;

use secure_tunnel_protocol::{encode_frame, HostMessage, RejectReason};

use crate::connection::Conn;
use crate::policy::PeerIdentity;

/// The address grammar (`unix:PATH`, `tcp:HOST:PORT`, `vsock:CID:PORT`) is
/// the protocol crate's, shared with the guest side so both parse alike.
pub use secure_tunnel_protocol::{AddrError, Address as ListenAddr, VSOCK_CID_ANY};

/// Why a listener could not be bound.
#[derive(Debug, Error)]
pub enum BindError {
    #[error("cannot listen on {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on {addr}: another process is listening there")]
    InUse { addr: String },
    #[error("cannot listen on {addr}: the path exists and is not a socket")]
    NotASocket { addr: String },
    #[error("cannot listen on {addr}: the path is a symbolic link (refused: remove it)")]
    Symlink { addr: String },
    #[error("socket-activation descriptor {fd}: {reason}")]
    Inherited { fd: i32, reason: String },
    #[error(
        "cannot listen on {addr}: {source} (is the vhost_vsock or vsock_loopback module loaded?)"
    )]
    Vsock {
        addr: String,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug)]
enum Socket {
    Unix(UnixListener),
    Tcp(TcpListener),
    Vsock(VsockListener),
}

/// A bound listener. A unix socket file is removed when this is dropped, if
/// it is still the file this listener created.
#[derive(Debug)]
pub struct Listener {
    socket: Socket,
    /// What to show in logs: the address with any port 0 resolved.
    name: String,
    unix_file: Option<(PathBuf, u64, u64)>,
}

impl Listener {
    /// Binds `addr`. A stale unix socket file (nothing accepts on it) is
    /// replaced; a live one or a non-socket file is an error.
    pub fn bind(addr: &ListenAddr) -> Result<Listener, BindError> {
        let name = addr.to_string();
        let io_err = |source| BindError::Io {
            addr: name.clone(),
            source,
        };
        match addr {
            ListenAddr::Unix(path) => {
                remove_stale_socket(path, &name)?;
                // Guests reach the socket through a VMM running as another
                // user, so the file is world-writable; restrict access with
                // the permissions of the directory holding it. The mode
                // comes from the umask at bind(2), which creates the file
                // and never follows a symlink: nothing is changed by path
                // afterwards, so whoever can write the directory cannot
                // make host-playd chmod another file.
                let listener = bind_unix_with_umask(path, 0o111).map_err(io_err)?;
                let meta = fs::symlink_metadata(path).map_err(io_err)?;
                Ok(Listener {
                    socket: Socket::Unix(listener),
                    name,
                    unix_file: Some((path.clone(), meta.dev(), meta.ino())),
                })
            }
            ListenAddr::Tcp { host, port } => {
                let listener = TcpListener::bind((host.as_str(), *port)).map_err(io_err)?;
                let name = match listener.local_addr() {
                    Ok(local) => format!("tcp:{local}"),
                    Err(_) => name,
                };
                Ok(Listener {
                    socket: Socket::Tcp(listener),
                    name,
                    unix_file: None,
                })
            }
            ListenAddr::Vsock { cid, port } => {
                let listener =
                    VsockListener::bind_with_cid_port(*cid, *port).map_err(|source| {
                        BindError::Vsock {
                            addr: name.clone(),
                            source,
                        }
                    })?;
                Ok(Listener {
                    socket: Socket::Vsock(listener),
                    name,
                    unix_file: None,
                })
            }
        }
    }

    /// Binds a unix socket only its owner may connect to (mode 0600, from
    /// the umask at bind: never a chmod by path), for the control socket.
    /// A stale socket is replaced; a symlink or another file refused.
    pub fn bind_private(path: &Path) -> Result<Listener, BindError> {
        let name = format!("unix:{}", path.display());
        let io_err = |source| BindError::Io {
            addr: name.clone(),
            source,
        };
        remove_stale_socket(path, &name)?;
        let listener = bind_unix_with_umask(path, 0o177).map_err(io_err)?;
        let meta = fs::symlink_metadata(path).map_err(io_err)?;
        Ok(Listener {
            socket: Socket::Unix(listener),
            name,
            unix_file: Some((path.to_path_buf(), meta.dev(), meta.ino())),
        })
    }

    /// A blocking handle on a unix listener (the control thread's).
    pub fn unix_listener(&self) -> io::Result<UnixListener> {
        match &self.socket {
            Socket::Unix(l) => l.try_clone(),
            Socket::Tcp(_) | Socket::Vsock(_) => Err(io::Error::new(
                ErrorKind::InvalidInput,
                "not a unix listener",
            )),
        }
    }

    /// Adopts a listening socket passed by systemd (unix, TCP or vsock,
    /// stream type, already listening).
    pub fn from_fd(fd: OwnedFd) -> Result<Listener, BindError> {
        let raw = fd.as_raw_fd();
        let bad = |reason: String| BindError::Inherited { fd: raw, reason };
        let kind = socket::getsockopt(&fd, sockopt::SockType).map_err(|e| bad(e.to_string()))?;
        if kind != socket::SockType::Stream {
            return Err(bad(format!("a {kind:?} socket, not a stream socket")));
        }
        if !socket::getsockopt(&fd, sockopt::AcceptConn).map_err(|e| bad(e.to_string()))? {
            return Err(bad("not listening (use ListenStream= sockets)".to_owned()));
        }
        let addr: SockaddrStorage = socket::getsockname(raw).map_err(|e| bad(e.to_string()))?;
        let (socket, name) = match addr.family() {
            Some(AddressFamily::Unix) => {
                let path = addr
                    .as_unix_addr()
                    .and_then(|u| u.path())
                    .map_or_else(|| "(unnamed)".to_owned(), |p| p.display().to_string());
                (Socket::Unix(UnixListener::from(fd)), format!("unix:{path}"))
            }
            Some(AddressFamily::Inet | AddressFamily::Inet6) => {
                (Socket::Tcp(TcpListener::from(fd)), format!("tcp:{addr}"))
            }
            Some(AddressFamily::Vsock) => {
                let name = addr.as_vsock_addr().map_or_else(
                    || "vsock:?".to_owned(),
                    |v| format!("vsock:{}:{}", v.cid(), v.port()),
                );
                (Socket::Vsock(VsockListener::from(fd)), name)
            }
            other => return Err(bad(format!("unsupported address family {other:?}"))),
        };
        Ok(Listener {
            socket,
            name: format!("{name} (from systemd)"),
            // systemd owns the socket file.
            unix_file: None,
        })
    }

    /// The address as bound (a TCP port 0 shows the port chosen).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Leaves the socket file in place when dropped (a sandboxed daemon may
    /// not remove it; the next start replaces a stale one).
    pub fn keep_file(&mut self) -> Option<PathBuf> {
        self.unix_file.take().map(|(path, _, _)| path)
    }

    /// A second handle on the listening socket, for the event loop.
    pub fn accept_socket(&self) -> io::Result<AcceptSocket> {
        let socket = match &self.socket {
            Socket::Unix(l) => Socket::Unix(l.try_clone()?),
            Socket::Tcp(l) => Socket::Tcp(l.try_clone()?),
            Socket::Vsock(l) => Socket::Vsock(l.try_clone()?),
        };
        Ok(AcceptSocket {
            socket,
            name: self.name.clone(),
        })
    }
}

/// A listening socket as the event loop uses it: non-blocking, polled.
#[derive(Debug)]
pub struct AcceptSocket {
    socket: Socket,
    name: String,
}

impl AcceptSocket {
    /// The address as bound, for logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Makes `accept` return `WouldBlock` instead of waiting.
    pub fn set_nonblocking(&self) -> io::Result<()> {
        match &self.socket {
            Socket::Unix(l) => l.set_nonblocking(true),
            Socket::Tcp(l) => l.set_nonblocking(true),
            Socket::Vsock(l) => l.set_nonblocking(true),
        }
    }

    /// The descriptor, for poll(2).
    pub fn fd(&self) -> BorrowedFd<'_> {
        match &self.socket {
            Socket::Unix(l) => l.as_fd(),
            Socket::Tcp(l) => l.as_fd(),
            Socket::Vsock(l) => l.as_fd(),
        }
    }

    /// Takes one pending connection, with what the kernel says about the
    /// peer; nothing is read from it.
    pub fn accept(&self) -> io::Result<(Box<dyn Conn>, String, PeerIdentity)> {
        accept(&self.socket)
    }
}

/// How long a refused connection stays open after its Reject, so that the
/// guest's Hello (already on its way) does not fail with EPIPE or make the
/// kernel reset the connection before the Reject is read.
pub const REFUSED_LINGER: Duration = Duration::from_millis(500);
/// Refused connections one listener keeps lingering at most; the oldest is
/// closed first. They are never read and hold no connection slot.
pub const MAX_LINGERING: usize = 64;

/// Refused connections waiting to be closed.
#[derive(Default)]
pub(crate) struct Lingering {
    conns: std::collections::VecDeque<(Instant, Box<dyn Conn>)>,
}

impl Lingering {
    pub(crate) fn push(&mut self, conn: Box<dyn Conn>, now: Instant) {
        if self.conns.len() >= MAX_LINGERING {
            self.conns.pop_front();
        }
        self.conns.push_back((now, conn));
    }

    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.conns.front() {
            if now.saturating_duration_since(*at) < REFUSED_LINGER {
                break;
            }
            self.conns.pop_front();
        }
    }
}

/// How long a refusal may wait for the socket to take its Reject (a fresh
/// socket's send buffer is empty, so it never should).
const REFUSE_WRITE_TIMEOUT: Duration = Duration::from_millis(20);

/// Tells a refused peer why, without reading anything from it, and ends
/// the sending direction; the caller closes it after [`REFUSED_LINGER`].
pub(crate) fn refuse_conn(
    mut conn: Box<dyn Conn>,
    reason: RejectReason,
    text: &str,
) -> Box<dyn Conn> {
    let mut frame = Vec::new();
    let reject = HostMessage::Reject {
        reason,
        message: crate::session::bounded_text(text),
    };
    if encode_frame(&reject, &mut frame).is_ok()
        && conn.set_write_timeout_conn(REFUSE_WRITE_TIMEOUT).is_ok()
    {
        let _ = conn.write_all(&frame);
    }
    conn.shutdown_write();
    conn
}

pub(crate) fn suppressed_note(suppressed: u64) -> String {
    if suppressed > 0 {
        format!(" ({suppressed} similar lines suppressed)")
    } else {
        String::new()
    }
}

fn accept(socket: &Socket) -> io::Result<(Box<dyn Conn>, String, PeerIdentity)> {
    Ok(match socket {
        Socket::Unix(l) => {
            let (stream, _) = l.accept()?;
            let identity = match socket::getsockopt(&stream, sockopt::PeerCredentials) {
                Ok(cred) => PeerIdentity::Unix {
                    uid: cred.uid(),
                    gid: cred.gid(),
                    pid: cred.pid(),
                },
                Err(e) => PeerIdentity::Unknown(format!("SO_PEERCRED failed: {e}")),
            };
            (Box::new(stream), format!("({identity})"), identity)
        }
        Socket::Tcp(l) => {
            let (stream, peer): (TcpStream, _) = l.accept()?;
            // Clock reports and pongs are small and late ones are wrong.
            stream.set_nodelay(true)?;
            (Box::new(stream), peer.to_string(), PeerIdentity::Tcp(peer))
        }
        Socket::Vsock(l) => {
            let (stream, peer) = l.accept()?;
            let identity = PeerIdentity::Vsock {
                cid: peer.cid(),
                port: peer.port(),
            };
            (Box::new(stream), format!("({identity})"), identity)
        }
    })
}

impl Drop for Listener {
    fn drop(&mut self) {
        let Some((path, dev, ino)) = &self.unix_file else {
            return;
        };
        // Leave the file alone if someone else has replaced it since.
        if let Ok(meta) = fs::symlink_metadata(path) {
            if meta.dev() == *dev && meta.ino() == *ino {
                if let Err(e) = fs::remove_file(path) {
                    log::warn!("cannot remove {}: {e}", path.display());
                }
            }
        }
    }
}

/// Binds `path` with the file mode 0777 & !`mask` (0666 for guests' 0111,
/// 0600 for the control socket's 0177): the umask is `mask` for the
/// duration of the call. The umask is process-wide, which is why the daemon
/// binds before it starts any thread.
fn bind_unix_with_umask(path: &Path, mask: u32) -> io::Result<UnixListener> {
    use nix::sys::stat::{umask, Mode};
    let old = umask(Mode::from_bits_truncate(mask));
    let bound = UnixListener::bind(path);
    umask(old);
    bound
}

/// Removes `path` if it is a socket nobody accepts on.
fn remove_stale_socket(path: &Path, name: &str) -> Result<(), BindError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(BindError::Io {
                addr: name.to_owned(),
                source,
            })
        }
    };
    if meta.file_type().is_symlink() {
        return Err(BindError::Symlink {
            addr: name.to_owned(),
        });
    }
    if !meta.file_type().is_socket() {
        return Err(BindError::NotASocket {
            addr: name.to_owned(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(BindError::InUse {
            addr: name.to_owned(),
        }),
        Err(_) => {
            log::info!("removing stale socket {}", path.display());
            fs::remove_file(path).map_err(|source| BindError::Io {
                addr: name.to_owned(),
                source,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn parse(s: &str) -> Result<ListenAddr, AddrError> {
        s.parse()
    }

    #[test]
    fn parses_every_scheme() {
        assert_eq!(
            parse("unix:/run/host-playd.sock"),
            Ok(ListenAddr::Unix("/run/host-playd.sock".into()))
        );
        assert_eq!(
            parse("unix:rel:ative"),
            Ok(ListenAddr::Unix("rel:ative".into()))
        );
        assert_eq!(
            parse("tcp:127.0.0.1:4713"),
            Ok(ListenAddr::Tcp {
                host: "127.0.0.1".into(),
                port: 4713
            })
        );
        assert_eq!(
            parse("tcp:localhost:0"),
            Ok(ListenAddr::Tcp {
                host: "localhost".into(),
                port: 0
            })
        );
        assert_eq!(
            parse("tcp:[::1]:4713"),
            Ok(ListenAddr::Tcp {
                host: "::1".into(),
                port: 4713
            })
        );
        assert_eq!(
            parse("vsock:2:5000"),
            Ok(ListenAddr::Vsock { cid: 2, port: 5000 })
        );
        assert_eq!(
            parse("vsock:any:5000"),
            Ok(ListenAddr::Vsock {
                cid: VSOCK_CID_ANY,
                port: 5000
            })
        );
    }

    #[test]
    fn rejects_malformed_addresses() {
        assert_eq!(parse("/tmp/x"), Err(AddrError::NoScheme("/tmp/x".into())));
        assert_eq!(
            parse("udp:1.2.3.4:5"),
            Err(AddrError::UnknownScheme("udp".into()))
        );
        assert_eq!(parse("unix:"), Err(AddrError::EmptyPath));
        assert_eq!(parse("tcp:4713"), Err(AddrError::NoPort("4713".into())));
        assert_eq!(
            parse("tcp::4713"),
            Err(AddrError::EmptyHost(":4713".into()))
        );
        assert_eq!(
            parse("tcp:[]:4713"),
            Err(AddrError::EmptyHost("[]:4713".into()))
        );
        // The shared grammar reads an unbracketed IPv6 host up to the
        // last colon (additive: it was refused before).
        assert_eq!(
            parse("tcp:::1:4713"),
            Ok(ListenAddr::Tcp {
                host: "::1".into(),
                port: 4713
            })
        );
        assert_eq!(
            parse("tcp:h:65536"),
            Err(AddrError::BadPort("65536".into()))
        );
        assert_eq!(parse("tcp:h:-1"), Err(AddrError::BadPort("-1".into())));
        assert_eq!(parse("vsock:3"), Err(AddrError::NoPort("3".into())));
        assert_eq!(parse("vsock:x:3"), Err(AddrError::BadCid("x".into())));
        assert_eq!(parse("vsock:3:y"), Err(AddrError::BadPort("y".into())));
        assert_eq!(
            parse("vsock:3:4294967296"),
            Err(AddrError::BadPort("4294967296".into()))
        );
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "unix:/tmp/a b",
            "tcp:127.0.0.1:1",
            "tcp:[::1]:2",
            "vsock:any:3",
            "vsock:7:4",
        ] {
            assert_eq!(parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn unix_listener_replaces_stale_socket_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let addr = ListenAddr::Unix(path.clone());
        // A stale socket: bound once, listener gone, file left behind.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let live = Listener::bind(&addr).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666);
        // A live one is not stolen.
        assert!(matches!(
            Listener::bind(&addr),
            Err(BindError::InUse { .. })
        ));
        drop(live);
        assert!(!path.exists(), "socket file removed on drop");
        // A symlink in its place is refused, and its target left alone.
        let target = dir.path().join("target");
        fs::write(&target, b"x").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(matches!(
            Listener::bind(&addr),
            Err(BindError::Symlink { .. })
        ));
        let mode = fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        fs::remove_file(&path).unwrap();
        // A regular file is never removed.
        fs::write(&path, b"data").unwrap();
        assert!(matches!(
            Listener::bind(&addr),
            Err(BindError::NotASocket { .. })
        ));
        assert!(path.exists());
    }

    #[test]
    fn vsock_bind_failure_is_a_clear_error() {
        // No vsock transport is loaded on most build machines; where one is,
        // binding succeeds and there is nothing to check.
        if let Err(e) = Listener::bind(&ListenAddr::Vsock {
            cid: VSOCK_CID_ANY,
            port: 54_321,
        }) {
            let text = e.to_string();
            assert!(text.contains("vsock:any:54321"), "{text}");
            assert!(text.contains("vsock"), "{text}");
        }
    }
}
