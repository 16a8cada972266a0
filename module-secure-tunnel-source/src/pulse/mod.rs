//! The one thin layer where this crate touches PulseAudio's C API. Every
//! `unsafe` block in the module lives under this directory, with a
//! `// SAFETY:` comment; everything it calls into is safe Rust. The helpers
//! both modules share (arguments, log, no unwinding) are in
//! `pulse_module_sys::glue`.

mod entry;
mod source;

/// The name this module's log lines carry.
const MODULE: &std::ffi::CStr = c"module-secure-tunnel-source";

/// Runs `f`, turning a panic into `fallback`: no unwind crosses into C.
pub(crate) fn no_unwind<T>(what: &str, fallback: T, f: impl FnOnce() -> T) -> T {
    pulse_module_sys::glue::no_unwind(MODULE, what, fallback, f)
}

/// Writes one line to PulseAudio's log.
macro_rules! pa_log {
    ($level:ident, $($arg:tt)*) => {
        pulse_module_sys::glue::log::write(
            $crate::pulse::MODULE,
            pulse_module_sys::glue::log::Level::$level,
            &format!($($arg)*),
        )
    };
}
pub(crate) use pa_log;
