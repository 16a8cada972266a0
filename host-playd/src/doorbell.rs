//! A wake-up from one thread to another thread's poll loop that coalesces:
//! however many messages are queued before the loop looks, it is woken
//! once. The guest-facing process's two loops (the event loop and the
//! engine) ring each other for every message; writing a byte per message
//! was one syscall and, often, one more context switch each, which issue
//! 10's cost benchmark measured as most of host-playd's CPU.
//!
//! The rule that makes coalescing safe: the ringer queues its message
//! *before* ringing, and the loop [`Bell::answer`]s (empties the socket,
//! then disarms) *before* it takes the queued messages. A message queued
//! after the loop disarmed rings again; one queued before is taken by that
//! very round. No wake-up is lost.
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The ringing side (cloneable, any thread).
#[derive(Debug, Clone)]
pub struct Ringer {
    sock: Arc<UnixStream>,
    armed: Arc<AtomicBool>,
}

/// The polled side: its descriptor becomes readable when rung.
#[derive(Debug)]
pub struct Bell {
    sock: UnixStream,
    armed: Arc<AtomicBool>,
}

/// A connected pair; both ends non-blocking (made before any sandbox: no
/// socket can be made after it).
pub fn pair() -> io::Result<(Ringer, Bell)> {
    let (tx, rx) = UnixStream::pair()?;
    tx.set_nonblocking(true)?;
    rx.set_nonblocking(true)?;
    let armed = Arc::new(AtomicBool::new(false));
    Ok((
        Ringer {
            sock: Arc::new(tx),
            armed: Arc::clone(&armed),
        },
        Bell { sock: rx, armed },
    ))
}

impl Ringer {
    /// Wakes the loop unless a wake-up is already pending. Call it after
    /// queueing what the loop is to take.
    pub fn ring(&self) {
        if !self.armed.swap(true, Ordering::SeqCst) {
            // A full socket already holds a pending wake-up.
            let _ = (&*self.sock).write(&[1]);
        }
    }
}

impl Bell {
    /// Consumes pending wake-ups and disarms; call it before taking the
    /// queued messages.
    pub fn answer(&self) {
        let mut buf = [0u8; 64];
        while let Ok(n) = (&self.sock).read(&mut buf) {
            if n < buf.len() {
                break;
            }
        }
        self.armed.store(false, Ordering::SeqCst);
    }

    /// An independent handle on the same socket and state.
    pub fn try_clone(&self) -> io::Result<Bell> {
        Ok(Bell {
            sock: self.sock.try_clone()?,
            armed: Arc::clone(&self.armed),
        })
    }
}

impl AsFd for Bell {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl AsRawFd for Bell {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    use super::pair;

    fn readable(bell: &super::Bell) -> bool {
        let mut fds = [PollFd::new(bell.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).unwrap_or(0) == 1
    }

    #[test]
    fn rings_coalesce_until_answered_and_none_is_lost() {
        let (ringer, bell) = pair().unwrap_or_else(|e| panic!("{e}"));
        assert!(!readable(&bell));
        for _ in 0..1000 {
            ringer.ring();
        }
        assert!(readable(&bell));
        bell.answer();
        assert!(!readable(&bell), "a thousand rings leave one byte");
        // After an answer the next ring wakes again.
        ringer.clone().ring();
        assert!(readable(&bell));
        bell.answer();
        assert!(!readable(&bell));
    }

    #[test]
    fn threads_ringing_while_the_loop_answers_never_lose_a_wake_up() {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        let (ringer, bell) = pair().unwrap_or_else(|e| panic!("{e}"));
        let queued = Arc::new(AtomicU64::new(0));
        let q = Arc::clone(&queued);
        let t = std::thread::spawn(move || {
            for _ in 0..20_000 {
                q.fetch_add(1, Ordering::SeqCst);
                ringer.ring();
            }
        });
        let mut taken = 0;
        while taken < 20_000 {
            let mut fds = [PollFd::new(bell.as_fd(), PollFlags::POLLIN)];
            let woke = poll(&mut fds, PollTimeout::from(1000u16)).unwrap_or(0);
            assert_eq!(woke, 1, "a queued message without a wake-up");
            bell.answer();
            taken = queued.load(Ordering::SeqCst);
        }
        t.join().unwrap_or_else(|_| panic!("ringer panicked"));
    }
}
