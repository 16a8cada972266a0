//! Writing to PulseAudio's own log.

use std::ffi::{CStr, CString};

use crate as sys;

const FORMAT: &std::ffi::CStr = c"%s";

/// PulseAudio's log levels this module uses.
#[derive(Debug, Clone, Copy)]
pub enum Level {
    Error,
    Warn,
    Info,
}

/// Writes one line to PulseAudio's log, attributed to `module` (the
/// module's name). Interior NUL bytes are replaced, so any text is safe to
/// pass.
pub fn write(module: &CStr, level: Level, msg: &str) {
    let level = match level {
        Level::Error => sys::pa_log_level_PA_LOG_ERROR,
        Level::Warn => sys::pa_log_level_PA_LOG_WARN,
        Level::Info => sys::pa_log_level_PA_LOG_INFO,
    };
    let line = CString::new(msg.replace('\0', "\u{fffd}")).unwrap_or_default();
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the
    // call; the format "%s" consumes exactly the one string argument given.
    // pa_log_level_meta is thread-safe (it is called from IO threads in C).
    unsafe {
        sys::pa_log_level_meta(
            level,
            module.as_ptr(),
            0,
            module.as_ptr(),
            FORMAT.as_ptr(),
            line.as_ptr(),
        );
    }
}
