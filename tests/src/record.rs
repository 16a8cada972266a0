//! Audio in and out of a daemon through `parec` and `pacat`, with the
//! arrival time of every chunk recorded so latencies can be measured.

use std::{
    io::{Read, Write},
    process::Stdio,
    sync::{Arc, Mutex, PoisonError},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::{process::ChildGuard, signal, HarnessError, PulseDaemon, FRAME_BYTES, RATE};

const FORMAT_ARGS: [&str; 4] = ["--raw", "--format=s16le", "--rate=48000", "--channels=2"];

/// One read from `parec`'s stdout: the recording's length after it, and when
/// it arrived.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    end: usize,
    at: Instant,
}

/// What a [`Recorder`] has captured so far.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    /// Raw s16le stereo bytes.
    pub bytes: Vec<u8>,
    chunks: Vec<Chunk>,
}

impl Recording {
    /// The interleaved samples (a trailing partial sample is dropped).
    pub fn samples(&self) -> Vec<i16> {
        signal::from_bytes(&self.bytes)
    }

    /// Recorded duration.
    pub fn duration(&self) -> Duration {
        frames_to_duration(self.bytes.len() / FRAME_BYTES)
    }

    /// When `frame` was captured, estimated from its chunk's arrival minus the
    /// audio that follows it in the same chunk.
    pub fn arrival_of_frame(&self, frame: usize) -> Option<Instant> {
        let chunk = self.chunk_of(frame)?;
        let after = (chunk.end - frame * FRAME_BYTES) / FRAME_BYTES;
        chunk
            .at
            .checked_sub(frames_to_duration(after.saturating_sub(1)))
    }

    /// When the read that delivered `frame` returned: the latest moment the
    /// frame can have arrived. For a capture source, which delivers whole
    /// blocks at once, this (not [`Recording::arrival_of_frame`], which
    /// assumes real-time delivery within a read) is its arrival.
    pub fn received_at(&self, frame: usize) -> Option<Instant> {
        self.chunk_of(frame).map(|c| c.at)
    }

    /// The read that delivered `frame`.
    fn chunk_of(&self, frame: usize) -> Option<&Chunk> {
        let byte = frame * FRAME_BYTES;
        self.chunks.iter().find(|c| c.end > byte)
    }
}

fn frames_to_duration(frames: usize) -> Duration {
    Duration::from_secs_f64(frames as f64 / f64::from(RATE))
}

/// `parec` on one source, running until dropped.
#[derive(Debug)]
pub struct Recorder {
    // Drop order: the process dies first, so the reader sees EOF and ends.
    child: ChildGuard,
    data: Arc<Mutex<Recording>>,
    reader: Option<JoinHandle<()>>,
    source: String,
}

impl Recorder {
    /// Starts recording `source` of `daemon`.
    pub fn start(daemon: &PulseDaemon, source: &str) -> Result<Self, HarnessError> {
        Self::with_parec(daemon.client("parec")?, source)
    }

    /// Starts recording `source` with `parec`, a command already aimed at
    /// its server (e.g. [`crate::PipeWireStack::client`]`("parec")`).
    pub fn with_parec(mut cmd: std::process::Command, source: &str) -> Result<Self, HarnessError> {
        cmd.arg(format!("--device={source}"))
            .args(FORMAT_ARGS)
            .arg("--latency-msec=10")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = ChildGuard::spawn(&format!("parec {source}"), &mut cmd)?;
        let mut stdout =
            child.child_mut().stdout.take().ok_or_else(|| {
                HarnessError::io("parec stdout", std::io::ErrorKind::Other.into())
            })?;
        let data = Arc::new(Mutex::new(Recording::default()));
        let sink = Arc::clone(&data);
        let reader = thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                let at = Instant::now();
                let mut rec = sink.lock().unwrap_or_else(PoisonError::into_inner);
                rec.bytes.extend_from_slice(&buf[..n]);
                let end = rec.bytes.len();
                rec.chunks.push(Chunk { end, at });
            }
        });
        Ok(Self {
            child,
            data,
            reader: Some(reader),
            source: source.to_owned(),
        })
    }

    /// Waits until `parec` delivers its first audio. A recorder started just
    /// before a player would otherwise miss the player's first frames while
    /// it is still connecting.
    pub fn wait_live(&mut self, timeout: Duration) -> Result<(), HarnessError> {
        self.wait_until(timeout, "the first audio", |r| !r.bytes.is_empty())
            .map(drop)
    }

    /// A copy of everything recorded so far.
    pub fn snapshot(&self) -> Recording {
        self.data
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Polls the recording until `done` holds, for at most `timeout`.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&Recording) -> bool,
    ) -> Result<Recording, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            let rec = self.snapshot();
            if done(&rec) {
                return Ok(rec);
            }
            if let Some(status) = self.child.exit_status() {
                return Err(HarnessError::Died {
                    what: format!("parec {}", self.source),
                    status,
                    log_tail: String::new(),
                });
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: format!(
                        "{what} in the recording of {} ({:.2} s recorded)",
                        self.source,
                        rec.duration().as_secs_f64()
                    ),
                    secs: timeout.as_secs_f64(),
                    log_tail: String::new(),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops `parec` and returns the full recording.
    pub fn stop(mut self) -> Recording {
        self.child.terminate();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.snapshot()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.child.terminate();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// `pacat` playing a buffer into one sink.
#[derive(Debug)]
pub struct Player {
    child: ChildGuard,
    writer: Option<JoinHandle<()>>,
    started: Instant,
    sink: String,
}

impl Player {
    /// Starts playing `data` (s16le stereo 48 kHz) into `sink` of `daemon`.
    pub fn start(daemon: &PulseDaemon, sink: &str, data: Vec<u8>) -> Result<Self, HarnessError> {
        let mut cmd = daemon.client("pacat")?;
        cmd.arg(format!("--device={sink}"))
            .args(FORMAT_ARGS)
            .arg("--latency-msec=20")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = ChildGuard::spawn(&format!("pacat {sink}"), &mut cmd)?;
        let mut stdin = child
            .child_mut()
            .stdin
            .take()
            .ok_or_else(|| HarnessError::io("pacat stdin", std::io::ErrorKind::Other.into()))?;
        // pacat reads at the playback rate; the write fails only when pacat
        // dies, which `wait` reports with pacat's own message.
        let writer = thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
        Ok(Self {
            child,
            writer: Some(writer),
            started,
            sink: sink.to_owned(),
        })
    }

    /// Starts and waits: plays `data` to the end.
    pub fn play(
        daemon: &PulseDaemon,
        sink: &str,
        data: Vec<u8>,
        timeout: Duration,
    ) -> Result<Duration, HarnessError> {
        Self::start(daemon, sink, data)?.wait(timeout)
    }

    /// Whether `pacat` is still running (it has neither finished nor died).
    pub fn is_running(&mut self) -> bool {
        self.child.exit_status().is_none()
    }

    /// Waits for `pacat` to drain and exit; returns how long it ran.
    pub fn wait(mut self, timeout: Duration) -> Result<Duration, HarnessError> {
        let status = self.child.wait_timeout(timeout);
        let elapsed = self.started.elapsed();
        let mut stderr = String::new();
        if let Some(mut e) = self.child.child_mut().stderr.take() {
            if status.is_some() {
                let _ = e.read_to_string(&mut stderr);
            }
        }
        match status {
            None => Err(HarnessError::Timeout {
                what: format!("pacat into {} to finish", self.sink),
                secs: timeout.as_secs_f64(),
                log_tail: String::new(),
            }),
            Some(s) if !s.success() => Err(HarnessError::Command {
                what: format!("pacat into {}", self.sink),
                status: s,
                stderr,
            }),
            Some(_) => Ok(elapsed),
        }
    }
}

impl Drop for Player {
    fn drop(&mut self) {
        self.child.terminate();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}
