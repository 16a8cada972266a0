//! The guest-facing process's backend: every call becomes a packet to the
//! player process (see [`crate::player`]), which holds the sound-server
//! connection. Nothing here blocks: packets the socket cannot take yet wait
//! in a bounded queue, and status comes from the snapshots the player pushes
//! every few milliseconds (each stamped with the host time it was true at,
//! so clock reports stay exact however late the snapshot is read).
//!
//! If the player goes away (its socket closes, it sends something
//! malformed, or it stops reading for long enough to fill the queue), every
//! stream fails, nothing more can be opened, and [`AudioBackend::failure`]
//! says why: the daemon then says goodbye to its guests and exits, and its
//! service manager starts both processes again.
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};

use secure_tunnel_protocol::StreamSpec;

use super::pulse::MAX_EXTRAPOLATION_USEC;
use super::{
    AudioBackend, BackendError, CaptureParams, Captured, StreamEvent, StreamId, StreamParams,
    StreamStatus,
};
use crate::clock::HostClock;
use crate::engine::WakeReceiver;
use crate::player::packet::{self, Received};
use crate::player::wire::{Report, Request, StatusEntry, NO_VOLUME_CAP};

/// Bytes of packets that may wait for the player before it counts as stuck
/// (a few seconds of audio for every guest at once).
pub const MAX_QUEUED_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug)]
struct Remote {
    /// A recording stream: what the player records arrives as
    /// [`Report::Captured`].
    capture: bool,
    spec: StreamSpec,
    /// Bytes written to the stream so far.
    sent: u64,
    last: Option<StatusEntry>,
    opened: bool,
}

/// A backend in another process.
#[derive(Debug)]
pub struct RemoteBackend {
    sock: OwnedFd,
    clock: HostClock,
    streams: HashMap<StreamId, Remote>,
    volume_caps: HashMap<StreamId, u8>,
    events: Vec<(StreamId, StreamEvent)>,
    captured: Vec<(StreamId, Captured)>,
    queue: VecDeque<Vec<u8>>,
    queued_bytes: usize,
    connected: bool,
    /// Whether the player has said anything yet (it reports the server's
    /// state once it has tried to connect and is in its sandbox).
    heard: bool,
    failure: Option<String>,
    packet: Vec<u8>,
    scratch: Vec<u8>,
}

impl RemoteBackend {
    /// Talks to the player over `sock` (a `SOCK_SEQPACKET` socket; made
    /// non-blocking here).
    pub fn new(sock: OwnedFd, clock: HostClock) -> Result<Self, BackendError> {
        nix::fcntl::fcntl(
            sock.as_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| BackendError::Init {
            backend: "player",
            reason: format!("cannot make the player socket non-blocking: {e}"),
        })?;
        Ok(RemoteBackend {
            sock,
            clock,
            streams: HashMap::new(),
            volume_caps: HashMap::new(),
            events: Vec::new(),
            captured: Vec::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            connected: false,
            heard: false,
            failure: None,
            packet: packet::buffer(),
            scratch: Vec::new(),
        })
    }

    fn request(&mut self, request: &Request) {
        let mut packet = std::mem::take(&mut self.scratch);
        request.encode(&mut packet);
        self.enqueue(packet);
    }

    fn enqueue(&mut self, packet: Vec<u8>) {
        if self.failure.is_some() {
            return;
        }
        if self.queue.is_empty() {
            match packet::try_send(&self.sock, &packet) {
                Ok(true) => {
                    self.scratch = packet;
                    return;
                }
                Ok(false) => {}
                Err(e) => {
                    self.fail(format!("cannot send to the player: {e}"));
                    return;
                }
            }
        }
        self.queued_bytes += packet.len();
        self.queue.push_back(packet);
        if self.queued_bytes > MAX_QUEUED_BYTES {
            self.fail(format!(
                "the player has not read {} bytes of requests (stuck?)",
                self.queued_bytes
            ));
        }
    }

    fn flush_queue(&mut self) {
        while let Some(packet) = self.queue.front() {
            match packet::try_send(&self.sock, packet) {
                Ok(true) => {
                    self.queued_bytes -= packet.len();
                    self.queue.pop_front();
                }
                Ok(false) => return,
                Err(e) => {
                    self.fail(format!("cannot send to the player: {e}"));
                    return;
                }
            }
        }
    }

    fn receive(&mut self) {
        while self.failure.is_none() {
            let n = match packet::try_recv(&self.sock, &mut self.packet) {
                Ok(Received::Packet(n)) => n,
                Ok(Received::Empty) => return,
                Ok(Received::Closed) => {
                    self.fail("the player process closed its socket".to_owned());
                    return;
                }
                Err(e) => {
                    self.fail(format!("cannot read from the player: {e}"));
                    return;
                }
            };
            match Report::decode(&self.packet[..n]) {
                Ok(report) => self.report(report),
                Err(e) => {
                    self.fail(format!("the player sent a malformed packet: {e}"));
                    return;
                }
            }
        }
    }

    fn report(&mut self, report: Report) {
        match report {
            Report::Server { connected } => {
                self.heard = true;
                self.connected = connected;
            }
            Report::Opened { id, buffer_bytes } => {
                if let Some(s) = self.streams.get_mut(&id) {
                    s.opened = true;
                    self.events.push((id, StreamEvent::Opened { buffer_bytes }));
                }
            }
            Report::Failed { id, reason } => {
                if self.streams.contains_key(&id) {
                    self.events.push((id, StreamEvent::Failed { reason }));
                }
            }
            Report::Status(entries) => {
                for entry in entries {
                    if let Some(s) = self.streams.get_mut(&entry.id) {
                        if s.opened && !s.capture {
                            s.last = Some(entry);
                        }
                    }
                }
            }
            Report::Captured {
                id,
                host_time_usec,
                delay_usec,
                data,
            } => {
                // The engine takes these on every wake-up; a stream that is
                // not (or no longer) a capture stream of ours gets nothing.
                if self.streams.get(&id).is_some_and(|s| s.capture && s.opened) {
                    self.captured.push((
                        id,
                        Captured {
                            host_time_usec,
                            delay_usec,
                            data,
                        },
                    ));
                }
            }
        }
    }

    /// Whether a stream can be opened now.
    fn usable(&self) -> Result<(), BackendError> {
        if let Some(failure) = &self.failure {
            return Err(BackendError::Unavailable(failure.clone()));
        }
        if !self.connected {
            return Err(BackendError::Unavailable(
                "the player is not connected to the sound server (it retries every second)"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    fn fail(&mut self, reason: String) {
        if self.failure.is_some() {
            return;
        }
        log::error!("{reason}");
        self.queue.clear();
        self.queued_bytes = 0;
        for &id in self.streams.keys() {
            self.events.push((
                id,
                StreamEvent::Failed {
                    reason: "the host's player process stopped".to_owned(),
                },
            ));
        }
        self.failure = Some(reason);
        self.connected = false;
    }
}

impl AudioBackend for RemoteBackend {
    fn open(&mut self, id: StreamId, params: StreamParams) -> Result<(), BackendError> {
        self.usable()?;
        let volume_cap = self.volume_caps.remove(&id).unwrap_or(NO_VOLUME_CAP);
        self.streams.insert(
            id,
            Remote {
                capture: false,
                spec: params.spec.clone(),
                sent: 0,
                last: None,
                opened: false,
            },
        );
        self.request(&Request::Open {
            id,
            spec: params.spec,
            tlength_bytes: params.tlength_bytes,
            volume_cap,
            name: params.name,
        });
        Ok(())
    }

    fn open_capture(&mut self, id: StreamId, params: CaptureParams) -> Result<(), BackendError> {
        self.usable()?;
        self.streams.insert(
            id,
            Remote {
                capture: true,
                spec: params.spec.clone(),
                sent: 0,
                last: None,
                opened: false,
            },
        );
        self.request(&Request::OpenCapture {
            id,
            spec: params.spec,
            fragment_bytes: params.fragment_bytes,
            name: params.name,
        });
        Ok(())
    }

    fn take_captured(&mut self, out: &mut Vec<(StreamId, Captured)>) {
        out.append(&mut self.captured);
    }

    fn write(&mut self, id: StreamId, data: &[u8]) -> Result<(), BackendError> {
        let s = self
            .streams
            .get_mut(&id)
            .ok_or(BackendError::UnknownStream(id))?;
        s.sent += data.len() as u64;
        let mut packet = std::mem::take(&mut self.scratch);
        Request::encode_write(id, data, &mut packet);
        self.enqueue(packet);
        Ok(())
    }

    fn cork(&mut self, id: StreamId, corked: bool) {
        if self.streams.contains_key(&id) {
            self.request(&Request::Cork { id, corked });
        }
    }

    fn flush(&mut self, id: StreamId) {
        if self.streams.contains_key(&id) {
            self.request(&Request::Flush { id });
        }
    }

    fn rewind(&mut self, id: StreamId, bytes: u64) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.sent = s.sent.saturating_sub(bytes);
            self.request(&Request::Rewind { id, bytes });
        }
    }

    fn set_buffer(&mut self, id: StreamId, tlength_bytes: u32) {
        if self.streams.contains_key(&id) {
            self.request(&Request::SetBuffer { id, tlength_bytes });
        }
    }

    fn close(&mut self, id: StreamId) {
        self.volume_caps.remove(&id);
        if self.streams.remove(&id).is_some() {
            self.request(&Request::Close { id });
        }
    }

    fn set_volume_cap(&mut self, id: StreamId, percent: u8) {
        self.volume_caps.insert(id, percent.min(100));
    }

    fn settle(&mut self, timeout: Duration, wake: &WakeReceiver) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while !self.heard && self.failure.is_none() {
            let now = std::time::Instant::now();
            if now >= deadline {
                break;
            }
            self.drive((deadline - now).min(Duration::from_millis(50)), wake);
        }
        self.connected
    }

    fn drive(&mut self, timeout: Duration, wake: &WakeReceiver) {
        if self.failure.is_some() {
            wake.wait(timeout);
            return;
        }
        let mut sock_events = PollFlags::POLLIN;
        if !self.queue.is_empty() {
            sock_events |= PollFlags::POLLOUT;
        }
        let mut fds = [
            PollFd::new(wake.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.sock.as_fd(), sock_events),
        ];
        // Millisecond resolution, rounded up: the engine's 5 ms period.
        let ms = timeout.as_micros().div_ceil(1000);
        let timeout = PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(PollTimeout::MAX);
        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                self.fail(format!("poll on the player socket failed: {e}"));
                return;
            }
        }
        let woken = fds[0].revents().is_some_and(|r| !r.is_empty());
        if woken {
            wake.drain();
        }
        self.flush_queue();
        self.receive();
    }

    fn take_events(&mut self, out: &mut Vec<(StreamId, StreamEvent)>) {
        out.append(&mut self.events);
    }

    /// The latest snapshot, carried forward to now as the player itself
    /// extrapolates between timing updates (a playing stream advances at its
    /// rate, for at most [`MAX_EXTRAPOLATION_USEC`] past the snapshot), so
    /// that a clock report is as fresh as when the engine sampled libpulse
    /// in-process.
    fn status(&mut self, id: StreamId) -> Option<StreamStatus> {
        let s = self.streams.get(&id)?;
        let last = s.last?;
        let mut status = last.status;
        // What was sent since the snapshot is already in the player's queue.
        let since = s.sent.saturating_sub(last.received_bytes);
        status.writable_bytes = status.writable_bytes.saturating_sub(since);
        if status.playing {
            let now = self.clock.now_usec();
            let age = now
                .saturating_sub(status.host_time_usec)
                .min(MAX_EXTRAPOLATION_USEC);
            let frame = u64::from(s.spec.frame_size().max(1));
            let ahead = s.spec.usec_to_bytes(age) / frame * frame;
            let played = status.played_bytes.saturating_add(ahead).min(s.sent);
            // Exactly the time the played bytes stand for.
            let advanced = played - status.played_bytes;
            status.host_time_usec += s.spec.bytes_to_usec(advanced).min(age);
            status.played_bytes = played;
        }
        Some(status)
    }

    fn failure(&self) -> Option<String> {
        self.failure.clone()
    }

    /// The player pushes a snapshot every few milliseconds while a stream
    /// plays, and each one ends the poll in [`AudioBackend::drive`].
    fn pushes_status(&self) -> bool {
        true
    }
}
