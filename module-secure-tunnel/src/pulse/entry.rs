//! The symbols PulseAudio looks up in a module: `pa__init`, `pa__done` and
//! the descriptive `pa__get_*` functions.

use std::ffi::{c_char, c_int, CStr};

use pulse_module_sys as sys;

use super::{no_unwind, sink};

const AUTHOR: &CStr = c"secure-tunnel developers";
const DESCRIPTION: &CStr =
    c"Sink that plays into a host's PulseAudio through host-playd's narrow protocol";
const USAGE: &CStr = c"server=unix:PATH|tcp:HOST:PORT|vsock:CID:PORT \
sink_name=<name of the sink, default secure_tunnel> \
sink_properties=<properties for the sink> \
format=<s16le|s32le|float32le> \
rate=<sample rate> \
channels=<number of channels> \
channel_map=<channel map> \
latency_msec=<end-to-end latency target, 10..5000, default 60> \
min_latency_msec=<lowest latency applications may ask for, default latency_msec> \
max_latency_msec=<highest latency applications may ask for, default 2000> \
reconnect_interval_msec=<pause between connection attempts, 100..60000, default 1000>";
const VERSION: &str = concat!(env!("SECURE_TUNNEL_PULSE_VERSION"), "\0");

/// Loads one instance of the module.
///
/// # Safety
/// Called by PulseAudio's main thread with a valid module.
#[no_mangle]
pub unsafe extern "C" fn pa__init(m: *mut sys::pa_module) -> c_int {
    no_unwind("pa__init", -1, || {
        // SAFETY: PulseAudio passes a valid module, on its main thread.
        match unsafe { sink::init(m) } {
            Ok(()) => 0,
            Err(e) => {
                super::pa_log!(Error, "{e}");
                -1
            }
        }
    })
}

/// Unloads one instance.
///
/// # Safety
/// Called by PulseAudio's main thread with the module `pa__init` set up.
#[no_mangle]
pub unsafe extern "C" fn pa__done(m: *mut sys::pa_module) {
    // SAFETY: PulseAudio passes the module we initialised, on its main thread.
    no_unwind("pa__done", (), || unsafe { sink::done(m) })
}

/// How many streams use this instance's sink (PulseAudio's idle unload).
///
/// # Safety
/// Called by PulseAudio's main thread with a loaded module.
#[no_mangle]
pub unsafe extern "C" fn pa__get_n_used(m: *mut sys::pa_module) -> c_int {
    // SAFETY: PulseAudio passes the module we initialised, on its main thread.
    no_unwind("pa__get_n_used", 0, || unsafe { sink::n_used(m) })
}

#[no_mangle]
pub extern "C" fn pa__get_author() -> *const c_char {
    AUTHOR.as_ptr()
}

#[no_mangle]
pub extern "C" fn pa__get_description() -> *const c_char {
    DESCRIPTION.as_ptr()
}

#[no_mangle]
pub extern "C" fn pa__get_usage() -> *const c_char {
    USAGE.as_ptr()
}

/// Must equal the daemon's version, or PulseAudio refuses the module.
#[no_mangle]
pub extern "C" fn pa__get_version() -> *const c_char {
    VERSION.as_ptr().cast()
}

/// Several instances (several tunnels) may be loaded at once.
#[no_mangle]
pub extern "C" fn pa__load_once() -> bool {
    false
}
