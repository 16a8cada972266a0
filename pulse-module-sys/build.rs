//! Generates bindings to the pulsecore headers of the installed PulseAudio and
//! links the module against libpulsecore / libpulsecommon.
//!
//! The headers are not shipped by any Debian -dev package: `scripts/setup.sh`
//! unpacks the matching PulseAudio source into a cache directory. Set
//! `PULSE_SOURCE_DIR` to use another unpacked source tree.
//!
//! Every PulseAudio version is built the same way, from its own headers
//! (16.1 and 17.0 are tested): the version the module reports
//! (`pa__get_version`, which the daemon compares with its own) and the
//! library it links (`libpulsecore-VERSION.so`) are taken from the headers'
//! `.tarball-version`, and the build refuses headers that differ from the
//! installed libpulsecore. Layout tests are on: bindgen emits a compile-time
//! assertion of every struct's size, alignment and field offsets.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const SETUP_HINT: &str = "run `scripts/setup.sh` (it installs the Debian packages and \
    fetches the matching PulseAudio source), or set PULSE_SOURCE_DIR to an unpacked \
    PulseAudio source tree of the installed version";

fn fail(msg: &str) -> ! {
    panic!("\n\npulse-module-sys: {msg}\n  -> {SETUP_HINT}\n\n");
}

fn pkg_config(args: &[&str]) -> String {
    let out = Command::new("pkg-config")
        .args(args)
        .output()
        .unwrap_or_else(|e| fail(&format!("cannot run pkg-config: {e}")));
    if !out.status.success() {
        fail(&format!(
            "`pkg-config {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn source_dir() -> PathBuf {
    if let Some(dir) = env::var_os("PULSE_SOURCE_DIR") {
        return PathBuf::from(dir);
    }
    let cache = env::var_os("SECURE_TUNNEL_CACHE")
        .map(PathBuf::from)
        .or_else(|| env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("secure-tunnel")))
        .or_else(|| env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/secure-tunnel")))
        .unwrap_or_else(|| fail("neither SECURE_TUNNEL_CACHE, XDG_CACHE_HOME nor HOME is set"));
    cache.join("pulseaudio")
}

/// The installed libpulsecore is named after its version (libpulsecore-16.1.so).
fn installed_pulsecore(libdir: &Path, version: &str) -> PathBuf {
    let lib = libdir.join(format!("libpulsecore-{version}.so"));
    if !lib.exists() {
        fail(&format!(
            "{} not found: is the `pulseaudio` package installed?",
            lib.display()
        ));
    }
    lib
}

fn main() {
    println!("cargo:rerun-if-env-changed=PULSE_SOURCE_DIR");
    println!("cargo:rerun-if-env-changed=SECURE_TUNNEL_CACHE");
    println!("cargo:rerun-if-changed=wrapper.h");

    let installed = pkg_config(&["--modversion", "libpulse"]);
    let system_libdir = PathBuf::from(pkg_config(&["--variable=libdir", "libpulse"]));
    let libdir = system_libdir.join("pulseaudio");

    let src_root = source_dir();
    let src = src_root.join("src");
    if !src.join("pulsecore/sink.h").exists() {
        fail(&format!(
            "the pulsecore headers are not in {}",
            src.display()
        ));
    }
    let source_version = fs::read_to_string(src_root.join(".tarball-version"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|e| {
            fail(&format!(
                "cannot read {}: {e}",
                src_root.join(".tarball-version").display()
            ))
        });
    if source_version != installed {
        fail(&format!(
            "the PulseAudio headers in {} are version {source_version}, but the installed \
             libpulse is {installed}; a module built against other headers would crash \
             the daemon",
            src.display()
        ));
    }
    // From here on the headers name the version: what the module reports to
    // the daemon and which libpulsecore it links.
    let version = source_version;
    let pulsecore = installed_pulsecore(&libdir, &version);
    // Header files keep their tarball's (old) mtimes, so an upgrade to another
    // PulseAudio would not look like a change to cargo; the library of the
    // version built against disappears with it, which does.
    println!("cargo:rerun-if-changed={}", pulsecore.display());
    println!(
        "cargo:rerun-if-changed={}",
        src_root.join(".tarball-version").display()
    );
    if !src.join("config.h").exists() {
        fail(&format!("{} is missing", src.join("config.h").display()));
    }
    println!("cargo:rerun-if-changed={}", src.join("config.h").display());

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let defines = ["-D_GNU_SOURCE", "-D__INCLUDED_FROM_PULSE_AUDIO"];
    let includes = [
        format!("-I{}", src.display()),
        // generated headers (pulse/version.h) come from libpulse-dev
        "-I/usr/include".to_owned(),
    ];
    let static_fns = out.join("static_fns");

    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_args(defines)
        .clang_args(&includes)
        .allowlist_function("pa_.*|PA_.*")
        .allowlist_type("pa_.*")
        .allowlist_var("PA_.*")
        .allowlist_type("pollfd")
        .default_enum_style(bindgen::EnumVariation::Consts)
        .derive_default(true)
        .layout_tests(true)
        .wrap_static_fns(true)
        .wrap_static_fns_path(&static_fns)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .unwrap_or_else(|e| fail(&format!("bindgen failed on the pulsecore headers: {e}")));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .unwrap_or_else(|e| fail(&format!("cannot write bindings: {e}")));

    // The wrappers bindgen generated for static inline functions.
    let wrapper_c = static_fns.with_extension("c");
    let wrapper_dir = env::current_dir().expect("build scripts run in the package directory");
    let mut build = cc::Build::new();
    build
        .file(&wrapper_c)
        .include(&src)
        .include("/usr/include")
        .include(&wrapper_dir)
        .define("_GNU_SOURCE", None)
        .define("__INCLUDED_FROM_PULSE_AUDIO", None)
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false);
    build.compile("pulse_module_static_fns");

    println!("cargo:rustc-link-search=native={}", libdir.display());
    println!("cargo:rustc-link-lib=dylib=pulsecore-{version}");
    println!("cargo:rustc-link-lib=dylib=pulsecommon-{version}");
    println!("cargo:rustc-link-lib=dylib=pulse");
    // Consumed by the cdylib's build script (DEP_PULSECORE_LIBDIR) for its rpath.
    println!("cargo:libdir={}", libdir.display());
    println!("cargo:version={version}");
}
