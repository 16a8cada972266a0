//! A well-behaved protocol-level guest: it plays silence in real time within
//! its credit, keeps every clock report, and so can say whether a hostile
//! neighbour disturbed it (host-stream underruns, gaps between clock
//! reports, a Goodbye).

use std::{
    io::Write,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use secure_tunnel_protocol::{encode_audio_frame, HostMessage};

use crate::{
    wire::{hello, Client, Handshake, Target},
    HarnessError, FRAME_BYTES, RATE,
};

/// Audio per write: 10 ms.
const CHUNK_BYTES: usize = RATE as usize / 100 * FRAME_BYTES;
const BYTES_PER_SEC: f64 = RATE as f64 * FRAME_BYTES as f64;

/// What the guest saw since the start of the current window
/// ([`LegitGuest::new_window`]).
#[derive(Debug, Clone, Default)]
pub struct LegitReport {
    /// Connect to Accept.
    pub accepted_in: Duration,
    /// Clock reports received in the window.
    pub clocks: u64,
    /// Longest time between two clock reports in the window.
    pub max_clock_gap: Duration,
    /// Host-stream underruns in the window (the report's counter is
    /// cumulative since the handshake).
    pub underruns: u32,
    /// Audio bytes the host had played at the last report.
    pub played_bytes: u64,
    /// Audio bytes sent so far.
    pub sent_bytes: u64,
    /// How the connection ended, if it did (a host Goodbye's reason, or the
    /// read error).
    pub ended: Option<String>,
}

#[derive(Debug, Default)]
struct Seen {
    window_start: Option<Instant>,
    last_clock: Option<Instant>,
    clocks: u64,
    max_gap: Duration,
    underruns_total: u32,
    underruns_at_window: u32,
    played: u64,
    ended: Option<String>,
}

/// A guest playing silence until stopped.
#[derive(Debug)]
pub struct LegitGuest {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    sent: Arc<AtomicU64>,
    accepted_in: Duration,
    threads: Vec<JoinHandle<()>>,
}

impl LegitGuest {
    /// Connects, handshakes (asking `latency_usec`) and starts playing.
    pub fn start(target: &Target, name: &str, latency_usec: u32) -> Result<Self, HarnessError> {
        let mut client = Client::connect(target)?;
        let (credit, took) =
            match client.handshake(&hello(name, latency_usec), Duration::from_secs(5)) {
                Handshake::Accepted { credit, took, .. } => (credit, took),
                other => {
                    return Err(HarnessError::Check {
                        what: format!("the legitimate guest's handshake with {target}"),
                        detail: format!("{other:?}"),
                    })
                }
            };
        let conn = client.into_conn();
        let mut writer = conn
            .try_clone()
            .map_err(|e| HarnessError::io("cloning the guest socket", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let sent = Arc::new(AtomicU64::new(0));
        let limit = Arc::new(AtomicU64::new(credit));

        let reader = {
            let (stop, seen, limit) = (Arc::clone(&stop), Arc::clone(&seen), Arc::clone(&limit));
            let mut client = Client::from_conn(conn);
            thread::Builder::new()
                .name("legit-reader".into())
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        match client.recv(Duration::from_millis(100)) {
                            Ok(None) => {}
                            Ok(Some(m)) => {
                                let at = Instant::now();
                                let mut s = seen.lock().unwrap_or_else(PoisonError::into_inner);
                                match m {
                                    HostMessage::Credit { limit_bytes } => {
                                        limit.fetch_max(limit_bytes, Ordering::SeqCst);
                                    }
                                    HostMessage::Clock(c) => {
                                        if let (Some(last), Some(_)) =
                                            (s.last_clock, s.window_start)
                                        {
                                            s.max_gap = s.max_gap.max(at - last);
                                        }
                                        s.last_clock = Some(at);
                                        s.clocks += 1;
                                        s.underruns_total = c.underruns;
                                        s.played = c.played_bytes;
                                    }
                                    HostMessage::Goodbye { reason } => {
                                        s.ended = Some(format!("host said goodbye: {reason}"));
                                        return;
                                    }
                                    _ => {}
                                }
                            }
                            Err(e) => {
                                let mut s = seen.lock().unwrap_or_else(PoisonError::into_inner);
                                s.ended.get_or_insert(e);
                                return;
                            }
                        }
                    }
                })
                .map_err(|e| HarnessError::io("starting the guest's reader", e))?
        };
        let player = {
            let (stop, sent, limit) = (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&limit));
            let lead = u64::from(latency_usec) * BYTES_PER_SEC as u64 / 1_000_000;
            thread::Builder::new()
                .name("legit-player".into())
                .spawn(move || {
                    let start = Instant::now();
                    let silence = vec![0u8; CHUNK_BYTES];
                    let mut frame = Vec::with_capacity(CHUNK_BYTES + 16);
                    while !stop.load(Ordering::SeqCst) {
                        let due = (start.elapsed().as_secs_f64() * BYTES_PER_SEC) as u64 + lead;
                        let done = sent.load(Ordering::SeqCst);
                        let room = limit.load(Ordering::SeqCst).saturating_sub(done);
                        let want = due.saturating_sub(done).min(room);
                        let n = (want as usize / FRAME_BYTES * FRAME_BYTES).min(CHUNK_BYTES);
                        if n == 0 {
                            thread::sleep(Duration::from_millis(2));
                            continue;
                        }
                        frame.clear();
                        if encode_audio_frame(&silence[..n], &mut frame).is_err()
                            || writer.write_all(&frame).is_err()
                        {
                            return;
                        }
                        sent.fetch_add(n as u64, Ordering::SeqCst);
                    }
                })
                .map_err(|e| HarnessError::io("starting the guest's player", e))?
        };
        let guest = Self {
            stop,
            seen,
            sent,
            accepted_in: took,
            threads: vec![reader, player],
        };
        guest.new_window();
        Ok(guest)
    }

    /// Starts a new measuring window: gaps and underruns count from now.
    pub fn new_window(&self) {
        let mut s = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        s.window_start = Some(Instant::now());
        s.max_gap = Duration::ZERO;
        s.clocks = 0;
        s.underruns_at_window = s.underruns_total;
        // A gap is measured between two reports inside the window.
        s.last_clock = None;
    }

    /// Waits up to `timeout` for `n` clock reports in this window.
    pub fn wait_clocks(&self, n: u64, timeout: Duration) -> Result<(), HarnessError> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let r = self.report();
            if r.clocks >= n {
                return Ok(());
            }
            if let Some(e) = r.ended {
                return Err(HarnessError::Check {
                    what: "the legitimate guest".into(),
                    detail: format!("ended: {e}"),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
        Err(HarnessError::Timeout {
            what: format!("{n} clock reports to the legitimate guest"),
            secs: timeout.as_secs_f64(),
            log_tail: String::new(),
        })
    }

    /// What the guest saw in the current window.
    pub fn report(&self) -> LegitReport {
        let s = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let mut max_gap = s.max_gap;
        // A silence still going on counts too.
        if let Some(last) = s.last_clock {
            if s.ended.is_none() {
                max_gap = max_gap.max(last.elapsed());
            }
        }
        LegitReport {
            accepted_in: self.accepted_in,
            clocks: s.clocks,
            max_clock_gap: max_gap,
            underruns: s.underruns_total.saturating_sub(s.underruns_at_window),
            played_bytes: s.played,
            sent_bytes: self.sent.load(Ordering::SeqCst),
            ended: s.ended.clone(),
        }
    }

    /// Stops playing and closes; returns the last report.
    pub fn stop(mut self) -> LegitReport {
        let r = self.report();
        self.halt();
        r
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for LegitGuest {
    fn drop(&mut self) {
        self.halt();
    }
}
