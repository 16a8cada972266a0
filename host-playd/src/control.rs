//! The control socket (`--control PATH`) and its client, `host-playd ctl`.
//!
//! One request per connection: a line of text (`status`, `grant-capture
//! ID`, `revoke-capture ID`), answered with text and closed; an answer
//! that starts with `error: ` is a failure. The socket file is created
//! mode 0600 (by the umask at bind, like the guest sockets, never by a
//! chmod after), and every connection's peer must be root or the user
//! host-playd started as: the control socket can let a guest record.
//!
//! One thread serves it, one connection at a time, each with a deadline:
//! the thread count does not grow, and a stuck client delays the next one
//! by at most [`REQUEST_TIMEOUT`] plus [`ANSWER_TIMEOUT`].
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::engine::{ClientId, Command, EngineHandle};

/// Longest request line, in bytes.
pub const MAX_REQUEST: usize = 256;
/// How long a client has to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the engine has to answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// What an administrator can ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRequest {
    /// One line per client: id, peer, rule, state, bytes, underruns,
    /// latency, capture.
    Status,
    /// Let capture client `id` record (its rule says `capture = "grant"`).
    GrantCapture(ClientId),
    /// Stop capture client `id` recording at once.
    RevokeCapture(ClientId),
}

impl ControlRequest {
    /// Parses one request line (surrounding whitespace ignored).
    pub fn parse(line: &str) -> Result<ControlRequest, String> {
        let mut words = line.split_whitespace();
        let verb = words.next().ok_or("empty request")?;
        let id = |words: &mut std::str::SplitWhitespace<'_>| -> Result<ClientId, String> {
            let word = words
                .next()
                .ok_or_else(|| format!("{verb} needs a client id"))?;
            word.parse()
                .map_err(|_| format!("{word:?} is not a client id"))
        };
        let request = match verb {
            "status" => ControlRequest::Status,
            "grant-capture" => ControlRequest::GrantCapture(id(&mut words)?),
            "revoke-capture" => ControlRequest::RevokeCapture(id(&mut words)?),
            other => return Err(format!("unknown request {other:?}")),
        };
        match words.next() {
            Some(extra) => Err(format!("unexpected {extra:?} after {verb}")),
            None => Ok(request),
        }
    }

    /// The request line `ctl` sends.
    pub fn line(&self) -> String {
        match self {
            ControlRequest::Status => "status\n".to_owned(),
            ControlRequest::GrantCapture(id) => format!("grant-capture {id}\n"),
            ControlRequest::RevokeCapture(id) => format!("revoke-capture {id}\n"),
        }
    }
}

/// Serves the control socket on a thread of its own, forever (the thread
/// ends with the process). `owner` is the uid host-playd started as.
pub fn spawn(listener: UnixListener, engine: EngineHandle, owner: u32) -> io::Result<()> {
    std::thread::Builder::new()
        .name("control".to_owned())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(conn) => {
                        if let Err(e) = serve(conn, &engine, owner) {
                            log::warn!("control connection: {e}");
                        }
                    }
                    Err(e) => {
                        log::warn!("control socket: accept failed: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
        .map(drop)
}

fn serve(mut conn: UnixStream, engine: &EngineHandle, owner: u32) -> io::Result<()> {
    let uid = nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials)
        .map(|cred| cred.uid())
        .map_err(io::Error::from)?;
    if uid != 0 && uid != owner {
        log::warn!("control socket: refused a connection from uid {uid}");
        let _ = conn.write_all(b"error: not allowed\n");
        return Ok(());
    }
    let line = match read_line(&mut conn) {
        Ok(line) => line,
        Err(e) => {
            let _ = writeln!(conn, "error: {e}");
            return Ok(());
        }
    };
    let answer = match ControlRequest::parse(&line) {
        Ok(request) => ask(engine, request),
        Err(e) => format!("error: {e}"),
    };
    conn.write_all(answer.as_bytes())?;
    conn.write_all(b"\n")
}

fn ask(engine: &EngineHandle, request: ControlRequest) -> String {
    let (tx, rx) = mpsc::sync_channel(1);
    if engine
        .send(Command::Control { request, reply: tx })
        .is_err()
    {
        return "error: host-playd is stopping".to_owned();
    }
    rx.recv_timeout(ANSWER_TIMEOUT)
        .unwrap_or_else(|_| "error: no answer from the engine".to_owned())
}

/// Reads one request line, within [`REQUEST_TIMEOUT`] and [`MAX_REQUEST`].
fn read_line(conn: &mut UnixStream) -> Result<String, String> {
    conn.set_nonblocking(true).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 64];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("no request within the timeout".to_owned());
        }
        let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
        let mut fds = [PollFd::new(conn.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(0) => continue,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.to_string()),
        }
        match conn.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.contains(&b'\n') {
                    break;
                }
                if buf.len() > MAX_REQUEST {
                    return Err(format!("request longer than {MAX_REQUEST} bytes"));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    conn.set_nonblocking(false).map_err(|e| e.to_string())?;
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    if line.len() > MAX_REQUEST {
        return Err(format!("request longer than {MAX_REQUEST} bytes"));
    }
    String::from_utf8(line.to_vec()).map_err(|_| "request is not UTF-8".to_owned())
}

/// `host-playd ctl`: sends `request` to the control socket at `path` and
/// returns the answer; `Err` if it could not ask, or the answer is an
/// error.
pub fn request(path: &Path, request: ControlRequest) -> Result<String, String> {
    let mut conn = UnixStream::connect(path)
        .map_err(|e| format!("cannot reach the control socket {}: {e}", path.display()))?;
    let timeout = Some(REQUEST_TIMEOUT + ANSWER_TIMEOUT + Duration::from_secs(1));
    conn.set_read_timeout(timeout)
        .and_then(|()| conn.set_write_timeout(timeout))
        .and_then(|()| conn.write_all(request.line().as_bytes()))
        .map_err(|e| format!("cannot send to {}: {e}", path.display()))?;
    let mut answer = String::new();
    conn.take(1 << 20)
        .read_to_string(&mut answer)
        .map_err(|e| format!("cannot read the answer from {}: {e}", path.display()))?;
    let answer = answer.trim_end().to_owned();
    match answer.strip_prefix("error: ") {
        Some(e) => Err(e.to_owned()),
        None => Ok(answer),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn requests_parse_and_print() {
        for request in [
            ControlRequest::Status,
            ControlRequest::GrantCapture(7),
            ControlRequest::RevokeCapture(12),
        ] {
            assert_eq!(ControlRequest::parse(&request.line()).unwrap(), request);
        }
        assert_eq!(
            ControlRequest::parse("  grant-capture   3 ").unwrap(),
            ControlRequest::GrantCapture(3)
        );
        for bad in [
            "",
            "grant-capture",
            "grant-capture x",
            "grant-capture -1",
            "revoke-capture 1 2",
            "status now",
            "load-module x",
        ] {
            assert!(ControlRequest::parse(bad).is_err(), "{bad:?}");
        }
    }
}
