//! A host "microphone" for capture tests: a `module-pipe-source` fed a known
//! signal in real time from a FIFO, as a sound card would produce it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::{FRAME_BYTES, RATE};

/// The pipe source's module line for a FIFO at `fifo`, named `name`.
pub fn pipe_source_module(name: &str, fifo: &std::path::Path) -> String {
    format!(
        "module-pipe-source source_name={name} file={} format=s16le rate=48000 channels=2",
        fifo.display()
    )
}

/// Feeds a FIFO in real time, 10 ms at a time, until dropped: first the
/// signal, then silence.
#[derive(Debug)]
pub struct MicFeeder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// When the signal's first frame was written: its "capture" time.
    pub started: Instant,
}

impl MicFeeder {
    /// Starts feeding `signal` (s16le stereo bytes) into `fifo`.
    pub fn start(fifo: PathBuf, signal: Vec<u8>) -> std::io::Result<Self> {
        // Non-blocking, as a sound card is: while nobody records, the pipe
        // source reads nothing and what does not fit is dropped.
        const O_NONBLOCK: i32 = 0o4000;
        let mut pipe = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(O_NONBLOCK)
            .open(&fifo)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let started = Instant::now();
        let thread = thread::spawn(move || {
            let chunk = RATE as usize / 100 * FRAME_BYTES;
            let silence = vec![0u8; chunk];
            let mut fed = 0usize;
            while !flag.load(Ordering::SeqCst) {
                let piece = if fed < signal.len() {
                    &signal[fed..(fed + chunk).min(signal.len())]
                } else {
                    &silence[..]
                };
                match pipe.write(piece) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
                fed += piece.len();
                let due = started + frames(fed / FRAME_BYTES);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
            }
        });
        Ok(Self {
            stop,
            thread: Some(thread),
            started,
        })
    }

    /// When frame `n` of the signal was due (written to the FIFO).
    pub fn frame_time(&self, n: usize) -> Instant {
        self.started + frames(n)
    }
}

fn frames(n: usize) -> Duration {
    Duration::from_secs_f64(n as f64 / f64::from(RATE))
}

impl Drop for MicFeeder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
