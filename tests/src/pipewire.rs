//! A private PipeWire guest: its own session bus, PipeWire (whose default
//! configuration brings the Dummy-Driver, so the graph runs without a sound
//! card), WirePlumber and pipewire-pulse, all in one test directory, and the
//! `secure-tunnel-pipewire` service aimed at a host-playd socket.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    binaries::pipewire_service,
    process::{output_with_timeout, ChildGuard},
    HarnessError, TestDir,
};

const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// dbus-daemon, pipewire, wireplumber and pipewire-pulse, killed on drop.
#[derive(Debug)]
pub struct PipeWireStack {
    // Drop order: clients first, the bus last, the directory after all.
    daemons: Vec<ChildGuard>,
    bus: Option<ChildGuard>,
    dir: TestDir,
}

impl PipeWireStack {
    pub fn start() -> Result<Self, HarnessError> {
        let dir = TestDir::new("pipewire")?;
        let mut stack = Self {
            daemons: Vec::new(),
            bus: None,
            dir,
        };
        let bus = stack.dir.path().join("bus");
        let mut cmd = Command::new("dbus-daemon");
        cmd.args(["--session", "--nofork", "--nopidfile"])
            .arg(format!("--address=unix:path={}", bus.display()));
        stack.bus = Some(stack.spawn_logged("dbus-daemon", cmd)?);
        stack.wait_for(&bus, "the session bus socket")?;
        stack.start_daemons()?;
        Ok(stack)
    }

    fn env(&self, cmd: &mut Command) {
        let d = self.dir.path();
        for sub in ["runtime", "home", "config", "state"] {
            let _ = std::fs::create_dir_all(d.join(sub));
        }
        cmd.env("XDG_RUNTIME_DIR", d.join("runtime"))
            .env("PIPEWIRE_RUNTIME_DIR", d.join("runtime"))
            .env("HOME", d.join("home"))
            .env("XDG_CONFIG_HOME", d.join("config"))
            .env("XDG_STATE_HOME", d.join("state"))
            .env(
                "DBUS_SESSION_BUS_ADDRESS",
                format!("unix:path={}", d.join("bus").display()),
            )
            .env("LC_ALL", "C")
            .env_remove("PULSE_SERVER")
            .env_remove("PIPEWIRE_REMOTE")
            .env_remove("DISPLAY");
    }

    fn spawn_logged(&self, name: &str, mut cmd: Command) -> Result<ChildGuard, HarnessError> {
        self.env(&mut cmd);
        let log = self.dir.path().join(format!("{name}.log"));
        let file = File::create(&log)
            .map_err(|e| HarnessError::io(format!("creating {}", log.display()), e))?;
        let err = file
            .try_clone()
            .map_err(|e| HarnessError::io("log file", e))?;
        cmd.stdin(Stdio::null()).stdout(file).stderr(err);
        ChildGuard::spawn(name, &mut cmd)
    }

    fn wait_for(&self, path: &Path, what: &str) -> Result<(), HarnessError> {
        let start = Instant::now();
        while start.elapsed() < READY_TIMEOUT {
            if path.exists() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(50));
        }
        Err(HarnessError::Timeout {
            what: what.to_owned(),
            secs: READY_TIMEOUT.as_secs_f64(),
            log_tail: self.logs(),
        })
    }

    fn start_daemons(&mut self) -> Result<(), HarnessError> {
        let pw = self.spawn_logged("pipewire", Command::new("pipewire"))?;
        self.daemons.push(pw);
        self.wait_for(
            &self.dir.path().join("runtime/pipewire-0"),
            "PipeWire's socket",
        )?;
        let wp = self.spawn_logged("wireplumber", Command::new("wireplumber"))?;
        self.daemons.push(wp);
        // pipewire-pulse 0.3.65 stats `$XDG_RUNTIME_DIR/pulse`, then mkdirs
        // it, and fails for good if it appeared in between; the `pactl
        // info` polled below (libpulse creates that directory too) won that
        // race once in CI. Made here first, as the user's session would
        // have it, there is no race.
        let pulse_dir = self.dir.path().join("runtime/pulse");
        std::fs::create_dir_all(&pulse_dir)
            .and_then(|()| {
                std::fs::set_permissions(
                    &pulse_dir,
                    std::os::unix::fs::PermissionsExt::from_mode(0o700),
                )
            })
            .map_err(|e| HarnessError::io(format!("creating {}", pulse_dir.display()), e))?;
        let pp = self.spawn_logged("pipewire-pulse", Command::new("pipewire-pulse"))?;
        self.daemons.push(pp);
        let start = Instant::now();
        while start.elapsed() < READY_TIMEOUT {
            if self.pactl(&["info"]).is_ok_and(|o| o.status.success()) {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(100));
        }
        Err(HarnessError::Timeout {
            what: "pipewire-pulse to answer `pactl info`".to_owned(),
            secs: READY_TIMEOUT.as_secs_f64(),
            log_tail: self.logs(),
        })
    }

    /// Kills PipeWire, WirePlumber and pipewire-pulse and starts them again
    /// (a user's `systemctl --user restart pipewire`).
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        while let Some(mut d) = self.daemons.pop() {
            d.terminate();
        }
        let _ = std::fs::remove_file(self.dir.path().join("runtime/pipewire-0"));
        self.start_daemons()
    }

    /// A client command (`pactl`, `pacat`, `pw-cli`, ...) of this PipeWire.
    pub fn client(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        self.env(&mut cmd);
        cmd
    }

    pub fn pactl(&self, args: &[&str]) -> Result<Output, HarnessError> {
        let mut cmd = self.client("pactl");
        cmd.args(args);
        output_with_timeout(&mut cmd, Duration::from_secs(10))
    }

    /// Waits until pipewire-pulse lists the sink `name`.
    pub fn wait_sink(&self, name: &str, timeout: Duration) -> Result<(), HarnessError> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(o) = self.pactl(&["list", "short", "sinks"]) {
                let text = String::from_utf8_lossy(&o.stdout);
                if text.lines().any(|l| l.split('\t').nth(1) == Some(name)) {
                    return Ok(());
                }
            }
            thread::sleep(Duration::from_millis(100));
        }
        Err(HarnessError::Timeout {
            what: format!("sink {name} under pipewire-pulse"),
            secs: timeout.as_secs_f64(),
            log_tail: self.logs(),
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The pids of PipeWire, WirePlumber and pipewire-pulse.
    pub fn pids(&self) -> Vec<u32> {
        self.daemons.iter().map(ChildGuard::id).collect()
    }

    /// pipewire-pulse's server address, for PulseAudio clients in this
    /// process (libpulse's `unix:PATH`).
    pub fn pulse_server(&self) -> String {
        format!(
            "unix:{}",
            self.dir.path().join("runtime/pulse/native").display()
        )
    }

    /// Loads a PulseAudio module through pipewire-pulse (those it
    /// implements, e.g. `module-tunnel-sink` on PipeWire's
    /// module-pulse-tunnel); its index.
    pub fn load_module(&self, name: &str, args: &str) -> Result<u32, HarnessError> {
        let mut argv = vec!["load-module", name];
        argv.extend(args.split_whitespace());
        let out = self.pactl(&argv)?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .parse()
            .ok()
            .filter(|_| out.status.success())
            .ok_or_else(|| HarnessError::Check {
                what: format!("pactl load-module {name} {args} (pipewire-pulse)"),
                detail: format!("{}{}", text, String::from_utf8_lossy(&out.stderr)),
            })
    }

    /// The tails of the daemons' logs.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for name in [
            "pipewire",
            "wireplumber",
            "pipewire-pulse",
            "secure-tunnel-pipewire",
        ] {
            let p = self.dir.path().join(format!("{name}.log"));
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {name} (last 15 lines)\n"));
            for l in &lines[lines.len().saturating_sub(15)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

/// `secure-tunnel-pipewire` running against a [`PipeWireStack`].
#[derive(Debug)]
pub struct TunnelService {
    child: ChildGuard,
    log: PathBuf,
}

impl TunnelService {
    pub fn start(stack: &PipeWireStack, args: &[&str]) -> Result<Self, HarnessError> {
        let mut cmd = Command::new(pipewire_service()?);
        cmd.args(args).env("RUST_LOG", "info");
        let log = stack.dir().join("secure-tunnel-pipewire.log");
        let child = stack.spawn_logged("secure-tunnel-pipewire", cmd)?;
        Ok(Self { child, log })
    }

    pub fn is_alive(&mut self) -> bool {
        self.child.exit_status().is_none()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `pw-time-play` (tests/clients/pw-time-play.c), a native PipeWire
/// playback client that prints its stream clock as `pacat -v` does:
/// compiled on first use with cc against libpipewire-0.3 into
/// `<target>/release/pw-tests/`.
pub fn native_player() -> Result<PathBuf, HarnessError> {
    let src = crate::workspace_root().join("tests/clients/pw-time-play.c");
    let out_dir = crate::target_dir().join("pw-tests");
    let out = out_dir.join("pw-time-play");
    let fresh = |out: &Path| {
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        matches!((modified(out), modified(&src)), (Some(o), Some(s)) if o >= s)
    };
    if fresh(&out) {
        return Ok(out);
    }
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| HarnessError::io(format!("creating {}", out_dir.display()), e))?;
    let flags = output_with_timeout(
        Command::new("pkg-config").args(["--cflags", "--libs", "libpipewire-0.3"]),
        Duration::from_secs(10),
    )?;
    if !flags.status.success() {
        return Err(HarnessError::Check {
            what: "pkg-config libpipewire-0.3".into(),
            detail: "missing: scripts/setup.sh installs libpipewire-0.3-dev".into(),
        });
    }
    let tmp = out.with_extension("tmp");
    let mut cc = Command::new("cc");
    cc.args(["-O1", "-Wall", "-o"])
        .arg(&tmp)
        .arg(&src)
        .args(String::from_utf8_lossy(&flags.stdout).split_whitespace());
    let built = output_with_timeout(&mut cc, Duration::from_secs(120))?;
    if !built.status.success() {
        return Err(HarnessError::Check {
            what: format!("compiling {}", src.display()),
            detail: String::from_utf8_lossy(&built.stderr).into_owned(),
        });
    }
    std::fs::rename(&tmp, &out)
        .map_err(|e| HarnessError::io(format!("installing {}", out.display()), e))?;
    Ok(out)
}
