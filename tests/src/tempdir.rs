//! Per-test scratch directories. Kept (and their path printed) when the test
//! panics, so the daemons' logs can be read afterwards.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use crate::HarnessError;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A fresh directory under the system temp dir, removed on drop unless the
/// thread is panicking or `SECURE_TUNNEL_KEEP_TMP` is set.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// Creates `/tmp/st-e2e-<pid>-<n>-<label>`. The path stays short because
    /// UNIX socket paths inside it are limited to 107 bytes.
    pub fn new(label: &str) -> Result<Self, HarnessError> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("st-e2e-{}-{n}-{label}", std::process::id()));
        // A leftover from a recycled pid must not leak stale sockets in.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .map_err(|e| HarnessError::io(format!("creating {}", path.display()), e))?;
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates (if needed) and returns a subdirectory.
    pub fn subdir(&self, name: &str) -> Result<PathBuf, HarnessError> {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p)
            .map_err(|e| HarnessError::io(format!("creating {}", p.display()), e))?;
        Ok(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("SECURE_TUNNEL_KEEP_TMP").is_some() {
            eprintln!("kept test directory {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
