//! PulseAudio's module-argument parser, wrapped.

use std::ffi::{c_char, CStr, CString};
use std::ptr::NonNull;

use crate as sys;

/// Parsed `key=value` module arguments, freed on drop.
#[derive(Debug)]
pub struct Modargs(NonNull<sys::pa_modargs>);

impl Modargs {
    /// Parses `argument` (may be null: no arguments), accepting only `valid`
    /// keys. `None` when PulseAudio's parser refuses it (it logs why).
    ///
    /// # Safety
    /// `argument` is null or a valid NUL-terminated string.
    pub unsafe fn parse(argument: *const c_char, valid: &[&CStr]) -> Option<Self> {
        let mut keys: Vec<*const c_char> = valid.iter().map(|k| k.as_ptr()).collect();
        keys.push(std::ptr::null());
        // SAFETY: `argument` is null or valid per this function's contract;
        // `keys` is a NULL-terminated array of valid strings that outlives the
        // call (pa_modargs_new copies what it keeps).
        let ma = unsafe { sys::pa_modargs_new(argument, keys.as_ptr()) };
        NonNull::new(ma).map(Modargs)
    }

    pub fn as_ptr(&self) -> *mut sys::pa_modargs {
        self.0.as_ptr()
    }

    /// The value of `key`, if given and valid UTF-8 (non-UTF-8 is reported as
    /// the lossy text, so validation names it).
    pub fn get(&self, key: &CStr) -> Option<String> {
        // SAFETY: self.0 is a live pa_modargs; key is a valid C string. The
        // returned pointer is owned by the modargs and valid until it is freed,
        // which cannot happen while `self` is borrowed; it is copied at once.
        unsafe {
            let v = sys::pa_modargs_get_value(self.as_ptr(), key.as_ptr(), std::ptr::null());
            (!v.is_null()).then(|| CStr::from_ptr(v).to_string_lossy().into_owned())
        }
    }

    /// Fills `ss`/`map` from format, rate, channels and channel_map; false if
    /// any of them is invalid (PulseAudio logs which).
    pub fn sample_spec_and_map(
        &self,
        ss: &mut sys::pa_sample_spec,
        map: &mut sys::pa_channel_map,
    ) -> bool {
        // SAFETY: self.0 is live; ss and map are valid exclusive references.
        unsafe {
            sys::pa_modargs_get_sample_spec_and_channel_map(
                self.as_ptr(),
                ss,
                map,
                sys::pa_channel_map_def_PA_CHANNEL_MAP_DEFAULT,
            ) >= 0
        }
    }

    /// Merges the proplist argument `key` into `proplist`; false if invalid.
    ///
    /// # Safety
    /// `proplist` is a valid, live pa_proplist.
    pub unsafe fn merge_proplist(&self, key: &CStr, proplist: *mut sys::pa_proplist) -> bool {
        // SAFETY: self.0 is live, key valid, proplist valid per contract.
        unsafe {
            sys::pa_modargs_get_proplist(
                self.as_ptr(),
                key.as_ptr(),
                proplist,
                sys::pa_update_mode_PA_UPDATE_REPLACE,
            ) >= 0
        }
    }
}

impl Drop for Modargs {
    fn drop(&mut self) {
        // SAFETY: self.0 came from pa_modargs_new and is freed exactly once.
        unsafe { sys::pa_modargs_free(self.as_ptr()) }
    }
}

/// A Rust string as a C string for PulseAudio, with NUL bytes removed.
pub fn cstring(s: &str) -> CString {
    CString::new(s.replace('\0', "")).unwrap_or_default()
}
