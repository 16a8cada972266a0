//! The one thin layer where this crate touches PulseAudio's C API. Every
//! `unsafe` block in the module lives under this directory, with a
//! `// SAFETY:` comment; everything it calls into is safe Rust.

mod entry;
pub(crate) mod log;
mod modargs;
mod sink;

/// Runs `f`, turning a panic into `fallback` so that no unwind ever crosses
/// an `extern "C"` boundary into PulseAudio.
pub(crate) fn no_unwind<T>(what: &str, fallback: T, f: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            log::write(
                log::Level::Error,
                &format!("internal error in {what}: {msg}"),
            );
            fallback
        }
    }
}
