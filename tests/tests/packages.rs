//! The Debian packages: built by `packaging/build-debs.sh`, installed with
//! `dpkg -i` on this machine, then used as an administrator would: a guest
//! PulseAudio whose default.pa loads the module by its bare name from
//! PulseAudio's own module directory (the shipped snippet, one line
//! uncommented), the installed `/usr/bin/host-playd` with the shipped
//! configuration file, and a bit-exact playback check through both.
//!
//! Installing needs root and dpkg (CI runs on a throwaway machine as root,
//! and again inside the Debian 13 root for PulseAudio 17.0,
//! scripts/test-debian13.sh); elsewhere the test fails and says why. The
//! packages are purged at the end unless they were installed before the test.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use secure_tunnel_e2e::{
    find_sink, host_daemon, host_playd, pulse_module_dir, signal, target_dir, workspace_root,
    Player, PulseDaemon, Recorder, TestDir, GUEST_SINK, HOST_SINK, MODULE_NAME, RATE,
    SOURCE_MODULE_NAME,
};

/// The module package is named after the PulseAudio release it is built for.
const MODULE_PKG_PREFIX: &str = "pulseaudio-module-secure-tunnel-";
const PLAYD_PKG: &str = "host-playd";
const PIPEWIRE_PKG: &str = "secure-tunnel-pipewire";
const SNIPPET: &str = "/etc/pulse/default.pa.d/secure-tunnel.pa";
const MIC_SNIPPET: &str = "/etc/pulse/default.pa.d/secure-tunnel-mic.pa";
const CONFIG: &str = "/etc/host-playd/host-playd.toml";
const SYSTEM_UNIT: &str = "/lib/systemd/system/host-playd.service";

/// Runs `cmd`, killing it after `timeout`; `Err` names what ran.
fn run(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return child.wait_with_output().map_err(|e| format!("{what}: {e}")),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what}: no exit within {timeout:?}"));
            }
        }
    }
}

/// `cmd`'s stdout; panics with its stderr when it fails.
fn run_ok(cmd: &mut Command, timeout: Duration) -> String {
    let out = run(cmd, timeout).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Why the installing test cannot run here, if it cannot.
fn missing_requirement() -> Option<String> {
    let uid = run(Command::new("id").arg("-u"), Duration::from_secs(5))
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    if uid != "0" {
        return Some(format!(
            "installing packages needs root (uid is {uid:?}); CI runs this as root"
        ));
    }
    for tool in ["dpkg", "dpkg-deb", "dpkg-shlibdeps"] {
        let found = run(
            Command::new("sh").args(["-c", &format!("command -v {tool}")]),
            Duration::from_secs(5),
        )
        .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!(
                "{tool} is not installed (scripts/setup.sh installs it)"
            ));
        }
    }
    None
}

fn installed(package: &str) -> bool {
    run(
        Command::new("dpkg-query").args(["-W", "-f=${Status}", package]),
        Duration::from_secs(10),
    )
    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Purges the packages this test installed, when dropped (also on panic),
/// and the system user their postinst created (Debian's postrm keeps it).
struct Installation {
    purge: Vec<String>,
    remove_user: bool,
}

impl Drop for Installation {
    fn drop(&mut self) {
        if self.remove_user {
            let _ = run(
                Command::new("userdel").arg(PLAYD_PKG),
                Duration::from_secs(10),
            );
        }
        if self.purge.is_empty() {
            return;
        }
        match run(
            Command::new("dpkg").arg("--purge").args(&self.purge),
            Duration::from_secs(60),
        ) {
            Ok(o) if o.status.success() => println!("packages: purged {:?}", self.purge),
            Ok(o) => eprintln!(
                "packages: dpkg --purge failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("packages: {e}"),
        }
    }
}

/// The installed PulseAudio's version, as pkg-config reports it (16.1, 17.0).
fn pulse_version() -> String {
    run_ok(
        Command::new("pkg-config").args(["--modversion", "libpulse"]),
        Duration::from_secs(5),
    )
    .trim()
    .to_owned()
}

/// Builds the packages (lintian-checked) from the release binaries into
/// `out`; returns the module's and host-playd's, without the -dbgsym ones.
fn build_packages(out: &Path, module_pkg: &str) -> Vec<PathBuf> {
    let script = workspace_root().join("packaging/build-debs.sh");
    let stdout = run_ok(
        Command::new(&script)
            .arg("--no-build")
            .arg("--out")
            .arg(out)
            .env(
                "SECURE_TUNNEL_TARGET_DIR",
                target_dir().parent().unwrap_or(out),
            ),
        Duration::from_secs(600),
    );
    let debs: Vec<PathBuf> = stdout.lines().map(PathBuf::from).collect();
    for deb in &debs {
        assert!(deb.is_file(), "{} was not written", deb.display());
    }
    let name = |deb: &PathBuf| {
        let file = deb.file_name().unwrap_or_default().to_string_lossy();
        file.split('_').next().unwrap_or_default().to_owned()
    };
    let mut names: Vec<String> = debs.iter().map(name).collect();
    names.sort();
    let mut expected = vec![
        PLAYD_PKG.to_owned(),
        format!("{PLAYD_PKG}-dbgsym"),
        PIPEWIRE_PKG.to_owned(),
        format!("{PIPEWIRE_PKG}-dbgsym"),
        module_pkg.to_owned(),
        format!("{module_pkg}-dbgsym"),
    ];
    expected.sort();
    assert_eq!(names, expected, "build-debs.sh printed {stdout:?}");
    debs.into_iter()
        .filter(|deb| !name(deb).ends_with("-dbgsym"))
        .collect()
}

/// The shipped snippet with its one `load-module` line enabled and pointed at
/// `socket`, as an administrator would edit it.
fn enabled_snippet(socket: &Path) -> String {
    let text = fs::read_to_string(SNIPPET).unwrap_or_else(|e| panic!("{SNIPPET}: {e}"));
    let mut enabled = 0;
    let lines: Vec<String> = text
        .lines()
        .map(|line| match line.strip_prefix("#load-module ") {
            Some(rest) => {
                enabled += 1;
                let args: Vec<String> = rest
                    .split_whitespace()
                    .map(|w| {
                        if w.starts_with("server=") {
                            format!("server=unix:{}", socket.display())
                        } else if w.starts_with("latency_msec=") {
                            // Room for a CI machine busy with other tests.
                            "latency_msec=150".to_owned()
                        } else {
                            w.to_owned()
                        }
                    })
                    .collect();
                format!("load-module {}", args.join(" "))
            }
            None => line.to_owned(),
        })
        .collect();
    assert_eq!(
        enabled, 1,
        "{SNIPPET} should hold exactly one commented load-module line"
    );
    lines.join("\n") + "\n"
}

/// `systemd-analyze security` of the installed system unit, offline (no
/// running systemd is needed); prints the exposure line or why not.
fn print_exposure() {
    match run(
        Command::new("systemd-analyze").args(["security", "--offline=true", SYSTEM_UNIT]),
        Duration::from_secs(30),
    ) {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            match text.lines().find(|l| l.contains("Overall exposure level")) {
                Some(line) => println!("systemd-analyze security: {}", line.trim()),
                None => println!("systemd-analyze security printed no exposure level:\n{text}"),
            }
        }
        Ok(o) => println!(
            "systemd-analyze security not available here ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => println!("systemd-analyze security not available here: {e}"),
    }
}

/// The installed host-playd against `host`, started as the administrator
/// would by hand, with the shipped configuration file.
struct InstalledPlayd {
    child: std::process::Child,
    log: PathBuf,
}

impl InstalledPlayd {
    fn start(dir: &Path, socket: &Path, host: &PulseDaemon) -> Self {
        let log = dir.join("host-playd.log");
        let file = fs::File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let child = Command::new("/usr/bin/host-playd")
            .arg("--config")
            .arg(CONFIG)
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--pulse-server")
            .arg(host.server())
            .arg("--sink")
            .arg(HOST_SINK)
            // The system user the package created.
            .args(["--user", "host-playd", "--log-level", "debug"])
            .env("HOME", host.dir().join("home"))
            .env("XDG_RUNTIME_DIR", host.dir().join("runtime"))
            .env("PULSE_RUNTIME_PATH", host.dir().join("runtime"))
            .env_remove("PULSE_SERVER")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting /usr/bin/host-playd: {e}"));
        let mut playd = InstalledPlayd { child, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if let Ok(Some(status)) = playd.child.try_wait() {
                panic!("installed host-playd exited ({status}):\n{}", playd.log());
            }
            assert!(
                Instant::now() < deadline,
                "installed host-playd did not create {} within 10 s:\n{}",
                socket.display(),
                playd.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
        playd
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds a line for which `find` says `Some`.
    fn wait_log<T>(&self, timeout: Duration, mut find: impl FnMut(&str) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.log().lines().find_map(&mut find) {
                return Some(found);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, name: &str) {
        run_ok(
            Command::new("kill")
                .arg(format!("-{name}"))
                .arg(self.child.id().to_string()),
            Duration::from_secs(5),
        );
    }
}

impl Drop for InstalledPlayd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!("--- installed host-playd log ---\n{}", self.log());
        }
    }
}

/// Build, install, configure like an administrator, play bit-exact.
#[test]
fn installed_packages_play_bit_exact() {
    if let Some(why) = missing_requirement() {
        panic!("cannot install packages here: {why}");
    }
    let started = Instant::now();
    let pa = pulse_version();
    let module_pkg = format!("{MODULE_PKG_PREFIX}{pa}");
    let work = TestDir::new("packages").expect("scratch directory");
    let debs = build_packages(work.path(), &module_pkg);
    for deb in &debs {
        let listing = run_ok(
            Command::new("dpkg-deb").arg("-c").arg(deb),
            Duration::from_secs(20),
        );
        println!("{}: {} files", deb.display(), listing.lines().count());
    }
    // Exactly the PulseAudio release the module was built for.
    let module_deb = debs
        .iter()
        .find(|d| d.to_string_lossy().contains(&format!("/{module_pkg}_")))
        .expect("the module package");
    let depends = run_ok(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(module_deb)
            .arg("Depends"),
        Duration::from_secs(20),
    );
    assert!(
        depends.contains(&format!("pulseaudio (>= {pa}), pulseaudio (<< {pa}.1)")),
        "{module_pkg} Depends: {depends}"
    );

    let user_existed = run(
        Command::new("getent").args(["passwd", PLAYD_PKG]),
        Duration::from_secs(5),
    )
    .is_ok_and(|o| o.status.success());
    let mut installation = Installation {
        purge: Vec::new(),
        remove_user: !user_existed,
    };
    for package in [module_pkg.as_str(), PLAYD_PKG, PIPEWIRE_PKG] {
        if !installed(package) {
            installation.purge.push(package.to_owned());
        }
    }
    run_ok(
        Command::new("dpkg").arg("-i").args(&debs),
        Duration::from_secs(120),
    );
    let module_so = pulse_module_dir()
        .expect("PulseAudio's module directory")
        .join(format!("{MODULE_NAME}.so"));
    for path in [
        PathBuf::from("/usr/bin/host-playd"),
        module_so.clone(),
        module_so.with_file_name(format!("{SOURCE_MODULE_NAME}.so")),
        PathBuf::from(MIC_SNIPPET),
        PathBuf::from(SNIPPET),
        PathBuf::from(CONFIG),
        PathBuf::from("/etc/default/host-playd"),
        PathBuf::from(SYSTEM_UNIT),
        PathBuf::from("/lib/systemd/system/host-playd.socket"),
        PathBuf::from("/usr/lib/systemd/user/host-playd.service"),
        PathBuf::from("/usr/lib/systemd/user/host-playd.socket"),
        PathBuf::from("/usr/share/man/man8/host-playd.8.gz"),
        PathBuf::from("/usr/bin/secure-tunnel-pipewire"),
        PathBuf::from("/usr/lib/systemd/user/secure-tunnel-pipewire.service"),
        PathBuf::from("/etc/default/secure-tunnel-pipewire"),
        PathBuf::from("/usr/share/man/man1/secure-tunnel-pipewire.1.gz"),
        // The units' Documentation= links.
        PathBuf::from("/usr/share/doc/host-playd/host-setup.md"),
        PathBuf::from("/usr/share/doc/secure-tunnel-pipewire/guest-setup.md"),
    ] {
        assert!(
            path.is_file(),
            "the packages did not install {}",
            path.display()
        );
    }
    run_ok(
        Command::new("getent").args(["passwd", "host-playd"]),
        Duration::from_secs(5),
    );
    let version = run_ok(
        Command::new("/usr/bin/host-playd").arg("--version"),
        Duration::from_secs(5),
    );
    assert_eq!(
        version.trim(),
        format!("host-playd {}", env!("CARGO_PKG_VERSION"))
    );
    let version = run_ok(
        Command::new("/usr/bin/secure-tunnel-pipewire").arg("--version"),
        Duration::from_secs(5),
    );
    assert_eq!(
        version.trim(),
        format!("secure-tunnel-pipewire {}", env!("CARGO_PKG_VERSION"))
    );
    let check = run_ok(
        Command::new("/usr/bin/host-playd").args(["--check-config", "--config", CONFIG]),
        Duration::from_secs(5),
    );
    assert!(check.starts_with(&format!("{CONFIG}: OK")), "{check}");
    print_exposure();

    // Host: a private PulseAudio and the installed daemon.
    let host = host_daemon().expect("host PulseAudio");
    let socket = work.path().join("guest.sock");
    let playd = InstalledPlayd::start(work.path(), &socket, &host);

    // Guest: default.pa is the shipped snippet, its line enabled; the module
    // is found by its bare name in PulseAudio's own directory.
    let guest_dir = TestDir::new("guest-pkg").expect("guest directory");
    let script = guest_dir.path().join("default.pa");
    fs::write(&script, enabled_snippet(&socket)).expect("writing default.pa");
    let guest = PulseDaemon::start_script(guest_dir, "guest-pkg", &script)
        .unwrap_or_else(|e| panic!("guest PulseAudio with {}: {e}", script.display()));
    let modules = guest
        .pactl_ok(&["list", "modules", "short"])
        .expect("pactl");
    assert!(
        modules
            .lines()
            .any(|l| l.split('\t').nth(1) == Some(MODULE_NAME)),
        "the guest did not load {MODULE_NAME}:\n{modules}\n{}",
        guest.log_tail()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sink = find_sink(&guest, GUEST_SINK).expect("the tunnel sink");
        if sink.property("secure_tunnel.connected") == Some("yes") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sink never connected: {sink:?}\n{}\n{}",
            guest.log_tail(),
            playd.log()
        );
        thread::sleep(Duration::from_millis(100));
    }

    let mut rec = Recorder::start(&host, &format!("{HOST_SINK}.monitor")).expect("parec on host");
    rec.wait_live(Duration::from_secs(5))
        .expect("host monitor live");
    let played = signal::pseudo_random(0x05EE_DDEB, 3 * RATE as usize);
    Player::play(
        &guest,
        GUEST_SINK,
        signal::to_bytes(&played),
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", guest.log_tail(), playd.log()));
    let recording = rec
        .wait_until(Duration::from_secs(5), "the whole played signal", |r| {
            signal::locate_bit_exact(&r.samples(), &played, 256).is_ok()
        })
        .unwrap_or_else(|e| {
            let why = signal::locate_bit_exact(&rec.snapshot().samples(), &played, 256);
            panic!("{e}\n{}\n{}", why.err().unwrap_or_default(), playd.log())
        });
    let offset = signal::locate_bit_exact(&recording.samples(), &played, 256).expect("located");
    println!(
        "packages: {} frames bit-exact through the installed module and host-playd (host frame {})",
        played.len() / 2,
        offset / 2
    );

    // Statistics on SIGUSR1: the guest's line counts at least the clip.
    playd.signal("USR1");
    let bytes = playd
        .wait_log(Duration::from_secs(5), |line| {
            let rest = line.split("stats: client ").nth(1)?;
            let (_, counts) = rest.split_once("): state ")?;
            let bytes = counts.split(" bytes").next()?.rsplit(' ').next()?;
            bytes.parse::<u64>().ok()
        })
        .unwrap_or_else(|| panic!("no statistics line after SIGUSR1:\n{}", playd.log()));
    let clip = (played.len() * 2) as u64;
    assert!(
        bytes >= clip,
        "stats count {bytes} bytes, the clip alone is {clip}"
    );
    println!("packages: SIGUSR1 statistics count {bytes} bytes received (clip {clip})");

    drop(rec);
    drop(guest);
    drop(playd);
    drop(host);
    drop(installation);
    if !installed(&module_pkg) {
        assert!(!module_so.exists(), "purging left {}", module_so.display());
    }
    println!(
        "packages: whole test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The shipped configuration file lists every option: with every comment
/// marker removed it is still a valid configuration, and it names every
/// field host-playd's parser knows.
#[test]
fn shipped_configuration_documents_every_option() {
    let shipped = workspace_root().join("packaging/host-playd/host-playd.toml");
    let text = fs::read_to_string(&shipped).expect("the shipped host-playd.toml");
    let ordered: String = text
        .lines()
        .filter_map(|l| {
            let l = l.strip_prefix('#').unwrap_or(l);
            (l.starts_with('[') || l.chars().next().is_some_and(|c| c.is_ascii_lowercase()))
                .then_some(l)
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(ordered.lines().count() > 20, "{ordered}");
    let dir = TestDir::new("conffile").expect("scratch directory");
    let path = dir.path().join("every-option.toml");
    fs::write(&path, &ordered).expect("writing the uncommented file");
    let exe = host_playd().expect("host-playd built (cargo build --release)");
    let out = run(
        Command::new(exe)
            .args(["--check-config", "--config"])
            .arg(&path),
        Duration::from_secs(10),
    )
    .expect("running --check-config");
    assert!(
        out.status.success(),
        "the shipped file with every option enabled is invalid: {}\n{ordered}",
        String::from_utf8_lossy(&out.stderr)
    );
    for field in [
        "max_clients",
        "handshake_timeout_ms",
        "idle_timeout_ms",
        "memory_mb",
        "mode",
        "user",
        "read_only",
        "unix",
        "vsock",
        "tcp",
        "max_streams",
        "formats",
        "rate_min",
        "rate_max",
        "max_channels",
        "max_latency_ms",
        "volume_percent",
        "stream_name",
        "name",
        "unix_uid",
        "unix_gid",
        "vsock_cid",
        "allow",
    ] {
        assert!(
            ordered
                .lines()
                .any(|l| l.starts_with(&format!("{field} ="))),
            "the shipped host-playd.toml does not document `{field}`"
        );
    }
    // And a broken edit is reported with the file, the line and the field.
    let broken = ordered.replacen("max_clients = 16", "max_clients = 0", 1);
    fs::write(&path, &broken).expect("writing the broken file");
    let line = broken
        .lines()
        .position(|l| l.starts_with("max_clients"))
        .expect("max_clients present")
        + 1;
    let out = run(
        Command::new(host_playd().expect("built"))
            .args(["--check-config", "--config"])
            .arg(&path),
        Duration::from_secs(10),
    )
    .expect("running --check-config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:{line}:", path.display())) && stderr.contains("`max_clients`"),
        "{stderr}"
    );
}
