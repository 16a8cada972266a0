//! Non-blocking packets on the internal `SOCK_SEQPACKET` socket, for both
//! ends: the guest-facing process's [`crate::backend::remote`] and the
//! player's loop. Never blocks, never raises SIGPIPE.
#![forbid(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{recv, send, MsgFlags};

use super::wire::MAX_PACKET;

/// What one receive found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A packet of this many bytes (at most [`MAX_PACKET`]) in the buffer.
    Packet(usize),
    /// Nothing waiting.
    Empty,
    /// The other end is gone.
    Closed,
}

/// A receive buffer one byte larger than any valid packet, so an oversized
/// one is told apart from a full-size one.
pub fn buffer() -> Vec<u8> {
    vec![0; MAX_PACKET + 1]
}

/// Receives one packet into `buf` (from [`buffer`]). A packet longer than
/// [`MAX_PACKET`] is an error naming its length (`MSG_TRUNC` reports it).
pub fn try_recv(sock: &OwnedFd, buf: &mut [u8]) -> Result<Received, String> {
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC;
    match recv(sock.as_raw_fd(), buf, flags) {
        Ok(0) | Err(Errno::ECONNRESET) => Ok(Received::Closed),
        Ok(n) if n > MAX_PACKET => Err(format!("a {n}-byte packet")),
        Ok(n) => Ok(Received::Packet(n)),
        Err(Errno::EAGAIN | Errno::EINTR) => Ok(Received::Empty),
        Err(e) => Err(e.to_string()),
    }
}

/// Sends one packet: `Ok(false)` when the socket is full (try again later).
pub fn try_send(sock: &OwnedFd, packet: &[u8]) -> Result<bool, Errno> {
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
    match send(sock.as_raw_fd(), packet, flags) {
        Ok(_) => Ok(true),
        Err(Errno::EAGAIN | Errno::EINTR) => Ok(false),
        Err(e) => Err(e),
    }
}
