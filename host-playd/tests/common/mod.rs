//! Test harness: the real host-playd binary, a private PulseAudio daemon, and
//! a fake guest speaking the real protocol.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use secure_tunnel_protocol::{
    encode_frame, read_frame, GuestMessage, Hello, HostMessage, ProtocolError, SampleFormat,
    StreamSpec, MAGIC, PROTOCOL_VERSION,
};

/// Kills and reaps a child process when dropped.
pub struct ChildGuard {
    pub child: Child,
    pub name: &'static str,
    pub stderr_path: PathBuf,
}

impl ChildGuard {
    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!("--- {} stderr ---\n{}", self.name, self.stderr());
        }
    }
}

/// Starts the real host-playd with `args`, logging to `dir/playd.log`, and
/// waits until `socket` accepts connections.
pub fn start_playd(dir: &Path, socket: &Path, args: &[&str]) -> ChildGuard {
    start_playd_env(dir, socket, args, Vec::new())
}

/// [`start_playd`] with extra environment variables.
pub fn start_playd_env(
    dir: &Path,
    socket: &Path,
    args: &[&str],
    envs: Vec<(&'static str, PathBuf)>,
) -> ChildGuard {
    let stderr_path = dir.join("playd.log");
    let log = std::fs::File::create(&stderr_path).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_host-playd"))
        .arg("--listen")
        .arg(format!("unix:{}", socket.display()))
        .args(args)
        .args(["--log-level", "debug"])
        .envs(envs)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut guard = ChildGuard {
        child,
        name: "host-playd",
        stderr_path,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(socket).is_err() {
        if let Ok(Some(status)) = guard.child.try_wait() {
            panic!("host-playd exited with {status}:\n{}", guard.stderr());
        }
        assert!(Instant::now() < deadline, "host-playd did not start");
        thread::sleep(Duration::from_millis(20));
    }
    guard
}

/// A private PulseAudio daemon in a temp dir, with a 48 kHz stereo s16 null
/// sink named `hostsink`.
pub struct PrivatePulse {
    pub daemon: ChildGuard,
    pub server: String,
}

/// Whether the `pulseaudio` binary is installed.
pub fn have_pulseaudio() -> bool {
    Command::new("pulseaudio")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

impl PrivatePulse {
    pub fn start(dir: &Path) -> PrivatePulse {
        PrivatePulse::start_with(dir, &[])
    }

    /// [`PrivatePulse::start`] with more modules loaded (`-L` each).
    pub fn start_with(dir: &Path, modules: &[&str]) -> PrivatePulse {
        for sub in ["home", "runtime", "state"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let socket = dir.join("native");
        let server = format!("unix:{}", socket.display());
        let stderr_path = dir.join("pulseaudio.log");
        let log = std::fs::File::create(&stderr_path).unwrap();
        let child = Command::new("pulseaudio")
            .args([
                "-n",
                "--daemonize=no",
                "--exit-idle-time=-1",
                "--use-pid-file=no",
                "--disallow-exit",
                "--system=no",
                "--log-target=stderr",
                "-L",
            ])
            .arg(format!(
                "module-native-protocol-unix socket={} auth-anonymous=1",
                socket.display()
            ))
            .args([
                "-L",
                "module-null-sink sink_name=hostsink rate=48000 channels=2 format=s16le norewinds=1",
            ])
            .args(modules.iter().flat_map(|m| ["-L", m]))
            .envs(pulse_env(dir))
            .env_remove("PULSE_SERVER")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut daemon = ChildGuard {
            child,
            name: "pulseaudio",
            stderr_path,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ok = Command::new("pactl")
                .args(["--server", &server, "info"])
                .envs(pulse_env(dir))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                break;
            }
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("pulseaudio exited with {status}:\n{}", daemon.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "pulseaudio did not answer:\n{}",
                daemon.stderr()
            );
            thread::sleep(Duration::from_millis(50));
        }
        PrivatePulse { daemon, server }
    }
}

/// Lets an unprivileged user (host-playd sandboxed as `nobody`) reach the
/// private PulseAudio's socket in `dir`, e.g. to reconnect.
pub fn open_to_everyone(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for path in [dir.to_path_buf(), dir.join("native")] {
        let mode = if path.is_dir() { 0o755 } else { 0o777 };
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode));
    }
}

/// Whether the tests run as root (the sandbox then changes user).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|v| v.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// The fields of /proc/PID/task/TID/status for every thread of `pid`.
pub fn thread_status(pid: u32) -> Vec<std::collections::HashMap<String, String>> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let Ok(text) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        out.push(
            text.lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
                .collect(),
        );
    }
    out
}

/// The TCP address host-playd logs for a `tcp:127.0.0.1:0` listener once
/// it accepts there (waits up to 10 s for the line).
pub fn logged_tcp_addr(playd: &ChildGuard) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let found = playd.stderr().lines().find_map(|l| {
            let rest = l.split("listening on tcp:").nth(1)?;
            Some(rest.split_whitespace().next()?.to_owned())
        });
        if found.is_some() {
            return found;
        }
        thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Environment that keeps PulseAudio tools inside `dir`.
pub fn pulse_env(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("HOME", dir.join("home")),
        ("XDG_RUNTIME_DIR", dir.join("runtime")),
        ("PULSE_RUNTIME_PATH", dir.join("runtime")),
        ("PULSE_STATE_PATH", dir.join("state")),
        ("XDG_CONFIG_HOME", dir.join("home")),
    ]
}

/// 48 kHz stereo s16le.
pub fn stereo_spec() -> StreamSpec {
    StreamSpec {
        format: SampleFormat::S16Le,
        rate: 48_000,
        channel_map: vec![1, 2],
    }
}

pub fn hello(target_latency_usec: u32) -> Hello {
    Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        spec: stereo_spec(),
        target_latency_usec,
        stream_name: "test guest".into(),
    }
}

/// A fake guest: the socket, and a thread turning incoming frames into a
/// channel of messages (closing it at end of stream).
pub struct Guest {
    pub stream: Box<dyn Write + Send>,
    pub incoming: Receiver<Result<HostMessage, String>>,
}

impl Guest {
    pub fn connect(socket: &Path) -> Guest {
        let stream = UnixStream::connect(socket).unwrap();
        let reader = stream.try_clone().unwrap();
        Guest::over(Box::new(stream), reader)
    }

    /// A guest on a TCP connection to `addr`.
    pub fn connect_tcp(addr: &str) -> Guest {
        let stream = std::net::TcpStream::connect(addr).unwrap();
        let reader = stream.try_clone().unwrap();
        Guest::over(Box::new(stream), reader)
    }

    /// A guest over any connected stream (`reader` is a second handle).
    pub fn over(stream: Box<dyn Write + Send>, reader: impl Read + Send + 'static) -> Guest {
        let (tx, incoming) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            loop {
                match read_frame::<HostMessage, _>(&mut reader) {
                    Ok(m) => {
                        if tx.send(Ok(m)).is_err() {
                            break;
                        }
                    }
                    Err(ProtocolError::Closed) => break,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        break;
                    }
                }
            }
        });
        Guest { stream, incoming }
    }

    pub fn send(&mut self, message: &GuestMessage) {
        let mut buf = Vec::new();
        encode_frame(message, &mut buf).unwrap();
        self.stream.write_all(&buf).unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next message, or `None` on timeout or end of stream.
    pub fn recv(&self, timeout: Duration) -> Option<HostMessage> {
        match self.incoming.recv_timeout(timeout) {
            Ok(Ok(m)) => Some(m),
            Ok(Err(e)) => panic!("guest read failed: {e}"),
            Err(_) => None,
        }
    }

    /// Skips messages until `pick` returns something, within `timeout`.
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        mut pick: impl FnMut(&HostMessage) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.incoming.recv_timeout(left) {
                Ok(Ok(m)) => {
                    if let Some(t) = pick(&m) {
                        return Some(t);
                    }
                }
                Ok(Err(e)) => panic!("guest read failed: {e}"),
                Err(_) => return None,
            }
        }
        None
    }

    /// Waits for the host to close the connection; returns the messages
    /// received before, or `None` if it stayed open past `timeout`.
    pub fn wait_closed(&self, timeout: Duration) -> Option<Vec<HostMessage>> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.incoming.recv_timeout(left) {
                Ok(Ok(m)) => got.push(m),
                Ok(Err(_)) | Err(RecvTimeoutError::Disconnected) => return Some(got),
                Err(RecvTimeoutError::Timeout) => return None,
            }
        }
    }

    /// Sends Hello and returns the Accept's buffer size.
    pub fn handshake(&mut self, target_latency_usec: u32) -> u32 {
        self.send(&GuestMessage::Hello(hello(target_latency_usec)));
        match self.recv(Duration::from_secs(5)) {
            Some(HostMessage::Accept(a)) => {
                assert_eq!(a.version, PROTOCOL_VERSION);
                a.buffer_bytes
            }
            other => panic!("expected Accept, got {other:?}"),
        }
    }
}

/// A guest's view of flow control and the host clock while streaming.
#[derive(Debug, Default)]
pub struct Flow {
    pub limit: u64,
    pub sent: u64,
    pub clocks: Vec<(Instant, secure_tunnel_protocol::ClockReport)>,
    pub pongs: Vec<(u64, u64)>,
    pub credits: usize,
    pub others: Vec<HostMessage>,
}

impl Flow {
    pub fn absorb(&mut self, message: HostMessage) {
        match message {
            HostMessage::Credit { limit_bytes } => {
                assert!(limit_bytes >= self.limit, "credit shrank");
                self.limit = limit_bytes;
                self.credits += 1;
            }
            HostMessage::Clock(c) => self.clocks.push((Instant::now(), c)),
            HostMessage::Pong {
                guest_time_usec,
                host_time_usec,
            } => self.pongs.push((guest_time_usec, host_time_usec)),
            other => self.others.push(other),
        }
    }

    /// Streams audio from `source` (called with a byte count, whole frames)
    /// within credit until `until`, or until `max_total` bytes were sent.
    pub fn pump(
        &mut self,
        guest: &mut Guest,
        until: Instant,
        max_total: u64,
        source: &mut dyn FnMut(usize) -> Vec<u8>,
    ) {
        const CHUNK: u64 = 4_800; // 25 ms of 48 kHz stereo s16
        while Instant::now() < until {
            if let Some(m) = guest.recv(Duration::from_millis(2)) {
                self.absorb(m);
            }
            while let Ok(Ok(m)) = guest.incoming.try_recv() {
                self.absorb(m);
            }
            while self.sent < self.limit.min(max_total) {
                let n = (self.limit.min(max_total) - self.sent).min(CHUNK);
                let n = n - n % 4;
                if n == 0 {
                    break;
                }
                let data = source(n as usize);
                guest.send(&GuestMessage::Audio(data));
                self.sent += n;
            }
        }
    }
}
