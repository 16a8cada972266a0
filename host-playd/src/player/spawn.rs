//! Starting the player: a socketpair, then a re-exec of this binary with
//! the player's end left open across the exec (the only descriptor that
//! is: everything else the daemon opens is close-on-exec).
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType};

use super::{PlayerConfig, PLAYER_CHECK_FLAG, PLAYER_FLAG};

/// The executable re-run as the player: this very binary, even if its file
/// was replaced or removed since (an upgrade while running).
pub const SELF_EXE: &str = "/proc/self/exe";

/// Socket buffer asked for on each end (the kernel caps it at
/// `net.core.wmem_max`): room for bursts of audio to many streams.
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// A started player and the guest-facing end of its socket.
#[derive(Debug)]
pub struct Spawned {
    pub child: Child,
    pub sock: OwnedFd,
}

/// Starts `exe` as the player (or, with `check`, as the player's half of
/// `--check-sandbox`).
pub fn spawn(exe: &Path, config: &PlayerConfig, check: bool) -> io::Result<Spawned> {
    let (ours, theirs) = socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    for end in [&ours, &theirs] {
        // Best effort: the default is enough for a few streams.
        let _ = socket::setsockopt(end, sockopt::SndBuf, &SOCKET_BUFFER);
        let _ = socket::setsockopt(end, sockopt::RcvBuf, &SOCKET_BUFFER);
    }
    fcntl(theirs.as_fd(), FcntlArg::F_SETFD(FdFlag::empty()))?;
    let json = serde_json::to_string(config).map_err(io::Error::other)?;
    // argv[0] as ps shows it (the kernel's name would be "exe").
    let child = std::os::unix::process::CommandExt::arg0(&mut Command::new(exe), "host-playd")
        .arg(if check {
            PLAYER_CHECK_FLAG
        } else {
            PLAYER_FLAG
        })
        .arg(theirs.as_raw_fd().to_string())
        .arg(json)
        .stdin(Stdio::null())
        .spawn()?;
    drop(theirs);
    Ok(Spawned { child, sock: ours })
}
