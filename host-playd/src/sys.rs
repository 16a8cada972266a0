//! The only `unsafe` in host-playd: taking ownership of the listening
//! sockets systemd passes by number (`LISTEN_FDS`, `sd_listen_fds(3)`), and
//! the one libc call no safe crate wraps (`setpriority`). Turning a
//! descriptor number into an `OwnedFd` is inherently unsafe in Rust
//! (nothing else may own or close it); this module is where that promise is
//! made and checked, so every other module can stay
//! `#![forbid(unsafe_code)]`.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;
/// More than this many passed sockets is refused as a misconfiguration.
pub const MAX_LISTEN_FDS: usize = 64;

static TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes the sockets systemd passed to this process, if `LISTEN_PID` names
/// it, and removes `LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES` from the
/// environment. Call it first thing in `main`, before anything opens a
/// file; later calls return nothing.
pub fn take_listen_fds() -> Result<Vec<OwnedFd>, String> {
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(Vec::new());
    }
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(Vec::new());
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        // Meant for another process (e.g. our parent): not ours to take.
        return Ok(Vec::new());
    }
    let count: usize = fds
        .trim()
        .parse()
        .map_err(|_| format!("LISTEN_FDS={fds:?} is not a number"))?;
    if count > MAX_LISTEN_FDS {
        return Err(format!("LISTEN_FDS={count} is more than {MAX_LISTEN_FDS}"));
    }
    let mut owned = Vec::with_capacity(count);
    for i in 0..count {
        let fd = LISTEN_FDS_START + RawFd::try_from(i).map_err(|e| e.to_string())?;
        set_cloexec(fd).map_err(|e| format!("LISTEN_FDS={count}: {e}"))?;
        // SAFETY: `fd` is open (checked above) and was inherited through
        // exec under the sd_listen_fds protocol, addressed to this pid.
        // Nothing else in this process owns it: this function runs once
        // (TAKEN), before the daemon opens any file of its own, and the
        // numbers 3..3+LISTEN_FDS are exactly the inherited range.
        owned.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(owned)
}

/// Checks that `fd` is open and sets close-on-exec on it (so an inherited
/// descriptor leaks into nothing the daemon might run).
fn set_cloexec(fd: RawFd) -> Result<(), String> {
    // SAFETY: fcntl(F_GETFD) only reads the descriptor table entry; an
    // invalid number yields -1/EBADF and no side effect.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(format!(
            "descriptor {fd} is not open: {}",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: as above, on an open descriptor; only its FD_CLOEXEC flag
    // changes.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(format!(
            "cannot set close-on-exec on descriptor {fd}: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Takes ownership of the player's end of the internal socketpair, which
/// the guest-facing process left open across the exec at descriptor `fd`
/// (passed on the command line). Checked: it is open, above stdio, and a
/// unix `SOCK_SEQPACKET` socket; close-on-exec is set again.
pub fn adopt_player_socket(fd: RawFd) -> Result<OwnedFd, String> {
    if fd <= 2 {
        return Err(format!("descriptor {fd} is stdio, not the player socket"));
    }
    set_cloexec(fd)?;
    // SAFETY: `fd` is open (checked above) and was inherited through exec
    // from the guest-facing process, which passed exactly this number for
    // this purpose and kept no other use for it in this (new) image; the
    // player adopts it once, first thing, before opening anything.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let kind = nix::sys::socket::getsockopt(&owned, nix::sys::socket::sockopt::SockType)
        .map_err(|e| format!("descriptor {fd} is not a socket: {e}"))?;
    if kind != nix::sys::socket::SockType::SeqPacket {
        return Err(format!(
            "descriptor {fd} is a {kind:?} socket, not SOCK_SEQPACKET"
        ));
    }
    Ok(owned)
}

/// Sets the calling thread's niceness; threads it starts afterwards inherit
/// it (on Linux the value is per thread, so call this before any thread is
/// started to cover the whole daemon).
pub fn set_nice(nice: i32) -> io::Result<()> {
    // SAFETY: setpriority takes plain integers and touches no memory of
    // ours; `who` = 0 names the calling thread. Failure is reported through
    // the return value and errno, read right after.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The niceness guest-facing threads run at, recorded by
/// [`remember_base_nice`] before anything raises its own.
static BASE_NICE: std::sync::OnceLock<i32> = std::sync::OnceLock::new();

/// Records the niceness every thread that handles guest bytes returns to
/// (see [`return_to_base_nice`]): the one the daemon started with, but never
/// below 0 — a service manager that starts the daemon raised (the packaged
/// unit's `Nice=-11`) means it for the audio path, which the player process
/// (started before the drop) inherits.
pub fn remember_base_nice() {
    let _ = BASE_NICE.set(nice().unwrap_or(0).max(0));
}

/// Puts the calling thread at the niceness recorded by
/// [`remember_base_nice`]: code that parses guest input must not run ahead
/// of ordinary host work. Raising the niceness value is never refused.
pub fn return_to_base_nice() {
    if let Some(&base) = BASE_NICE.get() {
        if nice().ok() != Some(base) {
            if let Err(e) = set_nice(base) {
                log::debug!("cannot return to nice {base}: {e}");
            }
        }
    }
}

/// The calling thread's niceness.
pub fn nice() -> io::Result<i32> {
    // getpriority may legitimately return -1: errno tells an error apart.
    // SAFETY: `__errno_location` returns this thread's errno slot, valid for
    // the thread's life; getpriority takes plain integers.
    let value = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, 0)
    };
    let err = io::Error::last_os_error();
    if value == -1 && err.raw_os_error() != Some(0) {
        Err(err)
    } else {
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_round_trips_on_a_scratch_thread() {
        // A thread of its own: raising niceness is never refused, and this
        // leaves the test runner's other threads alone.
        std::thread::spawn(|| {
            let start = nice().expect("getpriority");
            let lower = (start + 3).min(19);
            set_nice(lower).expect("lowering priority is always allowed");
            assert_eq!(nice().expect("getpriority"), lower);
        })
        .join()
        .expect("the scratch thread");
    }
}
