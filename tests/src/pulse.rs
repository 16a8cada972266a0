//! A private PulseAudio daemon per test: its own runtime, state and config
//! directories, its own socket, its log kept in a file.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    binaries::{module_library, pulse_module_dir},
    process::{output_with_timeout, ChildGuard},
    HarnessError, TestDir,
};

/// The null sink the host daemon plays into; its monitor is what reached the host.
pub const HOST_SINK: &str = "hostsink";
/// The tunnel sink's name in the guest.
pub const GUEST_SINK: &str = "secure_tunnel";
/// Name under which the module is offered in the guest's module directory.
pub const MODULE_NAME: &str = "module-secure-tunnel-sink";
/// Name under which the capture module is offered in the guest.
pub const SOURCE_MODULE_NAME: &str = "module-secure-tunnel-source";

const READY_TIMEOUT: Duration = Duration::from_secs(10);
const PACTL_TIMEOUT: Duration = Duration::from_secs(10);

/// `base` times `SECURE_TUNNEL_TIMEOUT_SCALE` (a whole number, default 1):
/// for a slow machine, such as the emulated guest of `scripts/vm-test.sh`.
fn scaled(base: Duration) -> Duration {
    let scale = std::env::var("SECURE_TUNNEL_TIMEOUT_SCALE")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(1)
        .clamp(1, 100);
    base * scale
}
const LOG_TAIL_LINES: usize = 60;

/// A running PulseAudio, killed on drop.
#[derive(Debug)]
pub struct PulseDaemon {
    // Field order is drop order: the process goes before its directory.
    child: ChildGuard,
    name: String,
    socket: PathBuf,
    log: PathBuf,
    dir: TestDir,
}

impl PulseDaemon {
    /// Starts a daemon with only the native protocol module and `modules`
    /// (each "name args"), searching modules in `dl_search_path` if given.
    pub fn start(
        name: &str,
        dl_search_path: Option<&Path>,
        modules: &[&str],
    ) -> Result<Self, HarnessError> {
        Self::start_in(TestDir::new(name)?, name, dl_search_path, modules)
    }

    /// [`PulseDaemon::start`] in a directory the caller has prepared.
    pub fn start_in(
        dir: TestDir,
        name: &str,
        dl_search_path: Option<&Path>,
        modules: &[&str],
    ) -> Result<Self, HarnessError> {
        Self::start_inner(dir, name, dl_search_path, modules, None)
    }

    /// A daemon that runs `script` (a default.pa) with `-F` after the native
    /// protocol module, finding modules in PulseAudio's own directory only
    /// (no `--dl-search-path`): what an installed module meets.
    pub fn start_script(dir: TestDir, name: &str, script: &Path) -> Result<Self, HarnessError> {
        Self::start_inner(dir, name, None, &[], Some(script))
    }

    fn start_inner(
        dir: TestDir,
        name: &str,
        dl_search_path: Option<&Path>,
        modules: &[&str],
        script: Option<&Path>,
    ) -> Result<Self, HarnessError> {
        let socket = dir.path().join("native");
        let log = dir.path().join("pulseaudio.log");
        let config = dir.subdir("config")?;
        // `-n` skips default.pa but daemon.conf is still read: fix the default
        // format so nothing in a daemon resamples behind the tests' back.
        // PulseAudio's own descriptor limit (256) ends at about 40 tunnel
        // sinks with a client each; the cost benchmark loads 64.
        std::fs::write(
            config.join("daemon.conf"),
            "default-sample-format = s16le\ndefault-sample-rate = 48000\n\
             alternate-sample-rate = 48000\ndefault-sample-channels = 2\n\
             rlimit-nofile = 4096\n",
        )
        .map_err(|e| HarnessError::io("writing daemon.conf", e))?;
        let log_file = File::create(&log)
            .map_err(|e| HarnessError::io(format!("creating {}", log.display()), e))?;

        let mut cmd = Command::new("pulseaudio");
        cmd.args([
            "-n",
            "--daemonize=no",
            "--system=no",
            "--exit-idle-time=-1",
            "--use-pid-file=no",
            "--disallow-exit",
            "--disable-shm=yes",
            "--log-target=stderr",
            "--log-level=debug",
            "--log-time=yes",
        ]);
        if let Some(p) = dl_search_path {
            cmd.arg(format!("--dl-search-path={}", p.display()));
        }
        cmd.arg("-L").arg(format!(
            "module-native-protocol-unix socket={} auth-anonymous=1",
            socket.display()
        ));
        for m in modules {
            cmd.arg("-L").arg(m);
        }
        if let Some(script) = script {
            cmd.arg("-F").arg(script);
        }
        set_env(&mut cmd, dir.path())?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = ChildGuard::spawn(&format!("pulseaudio ({name})"), &mut cmd)?;
        let mut daemon = Self {
            child,
            name: name.to_owned(),
            socket,
            log,
            dir,
        };
        daemon.wait_ready()?;
        Ok(daemon)
    }

    fn wait_ready(&mut self) -> Result<(), HarnessError> {
        let deadline = Instant::now() + scaled(READY_TIMEOUT);
        while Instant::now() < deadline {
            if let Some(status) = self.child.exit_status() {
                return Err(HarnessError::Died {
                    what: format!("pulseaudio ({})", self.name),
                    status,
                    log_tail: self.log_tail(),
                });
            }
            if self.socket.exists() {
                if let Ok(out) = self.pactl(&["info"]) {
                    if out.status.success() {
                        return Ok(());
                    }
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
        Err(HarnessError::Timeout {
            what: format!("pulseaudio ({}) to answer `pactl info`", self.name),
            secs: scaled(READY_TIMEOUT).as_secs_f64(),
            log_tail: self.log_tail(),
        })
    }

    /// The server string clients pass to `--server`.
    pub fn server(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    /// The daemon's scratch directory (also the clients' HOME).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client command (`pactl`, `pacat`, `parec`) aimed at this daemon, with
    /// an environment that keeps it away from the user's PulseAudio files and
    /// an untranslated output.
    pub fn client(&self, program: &str) -> Result<Command, HarnessError> {
        let mut cmd = Command::new(program);
        cmd.arg(format!("--server={}", self.server()));
        set_env(&mut cmd, self.dir.path())?;
        Ok(cmd)
    }

    /// A client program that takes no `--server` option (PulseAudio's own
    /// test programs): aimed at this daemon through `PULSE_SERVER`, with the
    /// same environment as [`PulseDaemon::client`].
    pub fn client_by_env(&self, program: &Path) -> Result<Command, HarnessError> {
        let mut cmd = Command::new(program);
        set_env(&mut cmd, self.dir.path())?;
        cmd.env("PULSE_SERVER", self.server());
        Ok(cmd)
    }

    /// Runs `pactl` with a bounded wait.
    pub fn pactl(&self, args: &[&str]) -> Result<Output, HarnessError> {
        let mut cmd = self.client("pactl")?;
        cmd.args(args);
        output_with_timeout(&mut cmd, scaled(PACTL_TIMEOUT))
    }

    /// `pactl` whose failure is an error carrying this daemon's log tail.
    pub fn pactl_ok(&self, args: &[&str]) -> Result<String, HarnessError> {
        let out = self.pactl(args)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(HarnessError::Command {
                what: format!("pactl {}", args.join(" ")),
                status: out.status,
                stderr: format!(
                    "{}\n{}",
                    String::from_utf8_lossy(&out.stderr).trim(),
                    self.log_tail()
                ),
            })
        }
    }

    /// Loads a module; `Err` holds pactl's stderr (the daemon log says why).
    pub fn load_module(&self, name: &str, args: &str) -> Result<u32, String> {
        let mut argv = vec!["load-module", name];
        if !args.is_empty() {
            argv.push(args);
        }
        let out = self.pactl(&argv).map_err(|e| e.to_string())?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        stdout
            .trim()
            .parse()
            .map_err(|_| format!("pactl load-module printed {stdout:?}, not an index"))
    }

    /// The daemon's process id (benchmarks read its CPU time in `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The daemon's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Whether the daemon process is still running.
    pub fn is_alive(&mut self) -> bool {
        self.child.exit_status().is_none()
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// The last lines of the log, headed with the daemon's name.
    pub fn log_tail(&self) -> String {
        tail(
            &format!("pulseaudio ({})", self.name),
            &self.log(),
            LOG_TAIL_LINES,
        )
    }
}

/// `label`'s last `n` lines, framed for a test failure message.
/// A daemon's log file as text; a note in its place if it cannot be read.
pub(crate) fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
}

pub(crate) fn tail(label: &str, text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    format!(
        "----- last {} lines of {label} log -----\n{}\n----- end of {label} log -----",
        lines.len() - start,
        lines[start..].join("\n")
    )
}

fn set_env(cmd: &mut Command, dir: &Path) -> Result<(), HarnessError> {
    let sub = |name: &str| -> Result<PathBuf, HarnessError> {
        let p = dir.join(name);
        std::fs::create_dir_all(&p)
            .map_err(|e| HarnessError::io(format!("creating {}", p.display()), e))?;
        Ok(p)
    };
    cmd.env("HOME", sub("home")?)
        .env("XDG_RUNTIME_DIR", sub("runtime")?)
        .env("PULSE_RUNTIME_PATH", sub("runtime")?)
        .env("PULSE_STATE_PATH", sub("state")?)
        .env("PULSE_CONFIG_PATH", sub("config")?)
        .env("LC_ALL", "C")
        .env_remove("PULSE_SERVER")
        .env_remove("PULSE_SINK")
        .env_remove("PULSE_SOURCE")
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env_remove("DISPLAY");
    Ok(())
}

/// The host side: a daemon whose only sink is the null sink [`HOST_SINK`].
pub fn host_daemon() -> Result<PulseDaemon, HarnessError> {
    PulseDaemon::start(
        "host",
        None,
        &[&format!(
            "module-null-sink sink_name={HOST_SINK} rate=48000 channels=2 format=s16le norewinds=1"
        )],
    )
}

/// The guest side: a daemon that can load [`MODULE_NAME`]. `--dl-search-path`
/// replaces the module path and `pactl load-module` refuses absolute paths, so
/// the daemon gets a directory linking both PulseAudio's modules and ours.
pub fn guest_daemon() -> Result<PulseDaemon, HarnessError> {
    let module = module_library()?;
    let source = crate::binaries::source_module_library()?;
    let system = pulse_module_dir()?;
    let dir = TestDir::new("guest")?;
    let links = dir.subdir("modules")?;
    link_modules(
        &system,
        &[(MODULE_NAME, &module), (SOURCE_MODULE_NAME, &source)],
        &links,
    )?;
    PulseDaemon::start_in(dir, "guest", Some(&links), &[])
}

/// Links every module of `system` into `into`, and ours (name, library)
/// in place of any installed copy (the Debian package must not shadow the
/// ones under test).
fn link_modules(system: &Path, ours: &[(&str, &Path)], into: &Path) -> Result<(), HarnessError> {
    let entries = std::fs::read_dir(system)
        .map_err(|e| HarnessError::io(format!("listing {}", system.display()), e))?;
    for entry in entries {
        let entry =
            entry.map_err(|e| HarnessError::io(format!("listing {}", system.display()), e))?;
        let name = entry.file_name();
        if ours
            .iter()
            .any(|(ours, _)| name.to_str() == Some(&format!("{ours}.so")))
        {
            continue;
        }
        let to = into.join(&name);
        std::os::unix::fs::symlink(entry.path(), &to)
            .map_err(|e| HarnessError::io(format!("linking {}", to.display()), e))?;
    }
    for (name, library) in ours {
        let to = into.join(format!("{name}.so"));
        std::os::unix::fs::symlink(library, &to)
            .map_err(|e| HarnessError::io(format!("linking {}", to.display()), e))?;
    }
    Ok(())
}
