//! Where the binaries under test and PulseAudio's own modules live.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::HarnessError;

/// File name of the daemon binary in the target directory.
const HOST_PLAYD: &str = "host-playd";
const MODULE_LIB: &str = "libmodule_secure_tunnel_sink.so";
const SOURCE_MODULE_LIB: &str = "libmodule_secure_tunnel_source.so";
const PIPEWIRE_SERVICE: &str = "secure-tunnel-pipewire";

/// The workspace root: this crate sits one level below it.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Directory holding the release binaries: `$SECURE_TUNNEL_TARGET_DIR/release`
/// when that is set (a cargo target dir), else `<workspace>/target/release`.
/// Release, because CI builds the workspace once with `--release` first.
pub fn target_dir() -> PathBuf {
    std::env::var_os("SECURE_TUNNEL_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("release")
}

fn built(name: &str) -> Result<PathBuf, HarnessError> {
    let p = target_dir().join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(HarnessError::MissingBinary(p))
    }
}

/// The module's shared object.
pub fn module_library() -> Result<PathBuf, HarnessError> {
    built(MODULE_LIB)
}

/// The capture (microphone) module's shared object.
pub fn source_module_library() -> Result<PathBuf, HarnessError> {
    built(SOURCE_MODULE_LIB)
}

/// The PipeWire front end's executable.
pub fn pipewire_service() -> Result<PathBuf, HarnessError> {
    built(PIPEWIRE_SERVICE)
}

/// The host daemon's executable.
pub fn host_playd() -> Result<PathBuf, HarnessError> {
    built(HOST_PLAYD)
}

/// PulseAudio's module directory, from pkg-config (Debian's path carries the
/// package version, so it is not hard-coded).
pub fn pulse_module_dir() -> Result<PathBuf, HarnessError> {
    let out = Command::new("pkg-config")
        .args(["--variable=modlibexecdir", "libpulse"])
        .output()
        .map_err(|e| HarnessError::io("running pkg-config --variable=modlibexecdir libpulse", e))?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if out.status.success() && dir.join("module-null-sink.so").is_file() {
        Ok(dir)
    } else {
        Err(HarnessError::MissingBinary(dir.join("module-null-sink.so")))
    }
}
