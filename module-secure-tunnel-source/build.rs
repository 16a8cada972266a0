//! Link arguments of the module's shared object. The bindings and the
//! library search path come from pulse-module-sys, which tells this script
//! where libpulsecore lives (DEP_PULSECORE_LIBDIR) and its version.

fn main() {
    let libdir = std::env::var("DEP_PULSECORE_LIBDIR")
        .expect("pulse-module-sys exports the pulsecore library directory");
    let version =
        std::env::var("DEP_PULSECORE_VERSION").expect("pulse-module-sys exports the version");
    // libpulsecore is not in the default search path; the daemon that loads us
    // already has it mapped, but the rpath keeps `ldd` and tests honest.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-rpath,{libdir}");
    // Threads we start (connection attempts) may outlive an unload by a few
    // seconds: never unmap our code under them.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    // Every symbol must resolve at link time, not at load-module time.
    println!("cargo:rustc-cdylib-link-arg=-Wl,--no-undefined");
    println!("cargo:rustc-env=SECURE_TUNNEL_PULSE_VERSION={version}");
}
