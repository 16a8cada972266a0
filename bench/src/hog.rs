//! A CPU hog: busy-looping shells at normal priority, killed on drop.

use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, Result};

/// `n` busy loops.
#[derive(Debug)]
pub struct Hog {
    children: Vec<Child>,
}

impl Hog {
    /// Starts `n` processes that spin until dropped.
    pub fn start(n: usize) -> Result<Self> {
        let mut hog = Self {
            children: Vec::new(),
        };
        for _ in 0..n {
            let child = Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .context("starting a busy loop")?;
            hog.children.push(child);
        }
        Ok(hog)
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
