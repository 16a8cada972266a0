//! The symbols PulseAudio looks up in a module (`pa__init`, `pa__done`,
//! `pa__get_n_used` and the descriptive `pa__get_*`), generated once for
//! every module of this project by [`module_entry_points!`](crate::module_entry_points).

/// Defines a module's entry points in the invoking crate. `init`, `done`
/// and `n_used` are the module's `unsafe fn(*mut pa_module)` functions
/// (main thread; `init` returns `Result<(), String>`, its error logged);
/// every body runs under [`no_unwind`](crate::glue::no_unwind). `version`
/// is the PulseAudio version the module was built for (the daemon refuses
/// any other), as a `&'static str` without NUL.
#[macro_export]
macro_rules! module_entry_points {
    (
        module: $module:expr,
        init: $init:path,
        done: $done:path,
        n_used: $n_used:path,
        author: $author:expr,
        description: $description:expr,
        usage: $usage:expr,
        version: $version:expr $(,)?
    ) => {
        /// Loads one instance of the module.
        ///
        /// # Safety
        /// Called by PulseAudio's main thread with a valid module.
        #[no_mangle]
        pub unsafe extern "C" fn pa__init(m: *mut $crate::pa_module) -> ::std::ffi::c_int {
            $crate::glue::no_unwind($module, "pa__init", -1, || {
                // SAFETY: PulseAudio passes a valid module, on its main thread.
                match unsafe { $init(m) } {
                    Ok(()) => 0,
                    Err(e) => {
                        $crate::glue::log::write($module, $crate::glue::log::Level::Error, &e);
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
        pub unsafe extern "C" fn pa__done(m: *mut $crate::pa_module) {
            // SAFETY: PulseAudio passes the module we initialised, on its main thread.
            $crate::glue::no_unwind($module, "pa__done", (), || unsafe { $done(m) })
        }

        /// How many streams use this instance (PulseAudio's idle unload).
        ///
        /// # Safety
        /// Called by PulseAudio's main thread with a loaded module.
        #[no_mangle]
        pub unsafe extern "C" fn pa__get_n_used(m: *mut $crate::pa_module) -> ::std::ffi::c_int {
            // SAFETY: PulseAudio passes the module we initialised, on its main thread.
            $crate::glue::no_unwind($module, "pa__get_n_used", 0, || unsafe { $n_used(m) })
        }

        #[no_mangle]
        pub extern "C" fn pa__get_author() -> *const ::std::ffi::c_char {
            let text: &'static ::std::ffi::CStr = $author;
            text.as_ptr()
        }

        #[no_mangle]
        pub extern "C" fn pa__get_description() -> *const ::std::ffi::c_char {
            let text: &'static ::std::ffi::CStr = $description;
            text.as_ptr()
        }

        #[no_mangle]
        pub extern "C" fn pa__get_usage() -> *const ::std::ffi::c_char {
            let text: &'static ::std::ffi::CStr = $usage;
            text.as_ptr()
        }

        /// Must equal the daemon's version, or PulseAudio refuses the module.
        #[no_mangle]
        pub extern "C" fn pa__get_version() -> *const ::std::ffi::c_char {
            let version: &'static str = concat!($version, "\0");
            version.as_ptr().cast()
        }

        /// Several instances may be loaded at once.
        #[no_mangle]
        pub extern "C" fn pa__load_once() -> bool {
            false
        }
    };
}
