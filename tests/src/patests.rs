//! PulseAudio's own test programs (interpol-test, sync-playback,
//! connect-stress), which Debian does not package: compiled on first use
//! from the PulseAudio source that `scripts/setup.sh` unpacks (the same tree
//! the module's bindings come from), against the installed libpulse and
//! libpulsecommon, into `<target>/release/pa-tests/`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{target_dir, HarnessError};

/// The unpacked PulseAudio source: `PULSE_SOURCE_DIR`, else the cache
/// directory pulse-module-sys uses.
pub fn pulse_source_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PULSE_SOURCE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let cache = std::env::var_os("SECURE_TUNNEL_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("secure-tunnel"))
        })
        .or_else(|| {
            std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/secure-tunnel"))
        })?;
    Some(cache.join("pulseaudio"))
}

/// The path of PulseAudio's test program `name` (e.g. `"sync-playback"`),
/// compiled from `src/tests/<name>.c` unless already built.
pub fn pa_test_program(name: &str) -> Result<PathBuf, HarnessError> {
    let src = pulse_source_dir().ok_or_else(|| HarnessError::Check {
        what: "the PulseAudio source".into(),
        detail: "neither PULSE_SOURCE_DIR, SECURE_TUNNEL_CACHE, XDG_CACHE_HOME nor HOME is set"
            .into(),
    })?;
    let src = src.join("src");
    let file = src.join("tests").join(format!("{name}.c"));
    if !file.is_file() {
        return Err(HarnessError::Check {
            what: format!("{}", file.display()),
            detail: "missing: run scripts/setup.sh (it unpacks the PulseAudio source)".into(),
        });
    }
    let out_dir = target_dir().join("pa-tests");
    let out = out_dir.join(name);
    if out.is_file() {
        return Ok(out);
    }
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| HarnessError::io(format!("creating {}", out_dir.display()), e))?;
    compile(&src, &file, &out)?;
    Ok(out)
}

fn compile(src: &Path, file: &Path, out: &Path) -> Result<(), HarnessError> {
    let libdir = "/usr/lib/x86_64-linux-gnu/pulseaudio";
    let tmp = out.with_extension("tmp");
    let mut cmd = Command::new("cc");
    cmd.arg("-O1")
        .arg("-o")
        .arg(&tmp)
        .arg(file)
        .arg(format!("-I{}", src.display()))
        .arg(format!("-I{}", src.parent().unwrap_or(src).display()))
        .arg("-DHAVE_CONFIG_H")
        .arg("-pthread")
        .arg(format!("-L{libdir}"))
        .arg(format!("-Wl,-rpath,{libdir}"))
        .args([
            "-lpulse",
            "-lpulsecommon-16.1",
            "-lcheck_pic",
            "-lsubunit",
            "-lm",
            "-lrt",
        ]);
    let output = cmd
        .output()
        .map_err(|e| HarnessError::io("running cc (is build-essential installed?)", e))?;
    if !output.status.success() {
        return Err(HarnessError::Check {
            what: format!("compiling {}", file.display()),
            detail: format!(
                "{}\n(needs libpulse-dev and check from scripts/setup.sh)",
                String::from_utf8_lossy(&output.stderr)
            ),
        });
    }
    std::fs::rename(&tmp, out)
        .map_err(|e| HarnessError::io(format!("installing {}", out.display()), e))
}
