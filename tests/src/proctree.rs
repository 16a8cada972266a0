//! A daemon and every process it started, read from `/proc`: host-playd
//! may run as several processes, and a budget counts all of them.

use std::fs;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// `pid` and all its descendants that are alive now.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(pp) = parent_of(p) {
                parents.push((p, pp));
            }
        }
    }
    let mut tree = Vec::new();
    if fs::metadata(format!("/proc/{pid}")).is_ok() {
        tree.push(pid);
    }
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces and ')'.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time (user + system) `pid` has used, in seconds; `None` once it is
/// gone. /proc counts in USER_HZ ticks, 100 a second on every Linux ABI.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // utime and stime: the 12th and 13th fields after the command name.
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = rest.next()?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

fn status_field(pid: u32, name: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resident memory of `pid` and its descendants together, in KiB.
pub fn tree_rss_kib(pid: u32) -> u64 {
    process_tree(pid)
        .into_iter()
        .filter_map(|p| status_field(p, "VmRSS:"))
        .sum()
}

/// Threads of `pid` and its descendants together.
pub fn tree_threads(pid: u32) -> u64 {
    process_tree(pid)
        .into_iter()
        .filter_map(|p| status_field(p, "Threads:"))
        .sum()
}

/// Samples a memory reading every 50 ms on a thread of its own and keeps
/// the largest value, until [`PeakSampler::stop`].
#[derive(Debug)]
pub struct PeakSampler {
    done: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: JoinHandle<()>,
}

impl PeakSampler {
    /// Starts sampling `read` (KiB; `None` readings are skipped).
    pub fn start(read: impl Fn() -> Option<u64> + Send + 'static) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let thread = {
            let (done, peak) = (Arc::clone(&done), Arc::clone(&peak));
            thread::spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    if let Some(kib) = read() {
                        peak.fetch_max(kib, Ordering::SeqCst);
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            })
        };
        PeakSampler { done, peak, thread }
    }

    /// The flag that stops sampling, for code that decides when to stop.
    pub fn done_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.done)
    }

    /// Stops sampling and returns the peak seen.
    pub fn stop(self) -> u64 {
        self.done.store(true, Ordering::SeqCst);
        self.thread.join().expect("memory sampler");
        self.peak.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_process_and_a_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("spawning sleep");
        let me = std::process::id();
        let tree = process_tree(me);
        assert!(tree.contains(&me) && tree.contains(&child.id()), "{tree:?}");
        assert!(tree_threads(me) >= 2 && tree_rss_kib(me) > 0);
        let _ = child.kill();
        let _ = child.wait();
    }
}
