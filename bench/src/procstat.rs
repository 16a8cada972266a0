//! CPU time of a process from `/proc/PID/stat` (all its threads).

use std::process::Command;

use anyhow::{bail, Context as _, Result};

/// Clock ticks per second of `/proc`'s times.
pub fn clock_ticks() -> Result<f64> {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("running getconf CLK_TCK")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("getconf CLK_TCK printed {text:?}"))
}

/// utime + stime of `pid`, in seconds.
pub fn cpu_seconds(pid: u32, ticks: f64) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'. utime and stime are fields 14 and 15, so 12th and 13th
    // after it.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("{path}: no ')' in {text:?}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (Some(u), Some(s)) = (fields.get(11), fields.get(12)) else {
        bail!("{path}: too few fields in {text:?}");
    };
    let u: f64 = u.parse().with_context(|| format!("{path}: utime {u:?}"))?;
    let s: f64 = s.parse().with_context(|| format!("{path}: stime {s:?}"))?;
    Ok((u + s) / ticks)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn reads_our_own_cpu_time() {
        let ticks = clock_ticks().unwrap();
        let t = cpu_seconds(std::process::id(), ticks).unwrap();
        assert!(t >= 0.0);
    }
}
