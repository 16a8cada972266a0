//! `--check-sandbox`: things a compromised daemon would try, each of which
//! the sandbox must deny.
#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;

use nix::sys::socket::{self, AddressFamily, SockFlag, SockProtocol, SockType};

/// What a probe must find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    Denied,
    /// The process needs it (its sound-server socket).
    Allowed,
    /// Should be denied, but the kernel has no way to (the reason says
    /// why); reported, not counted as a failure.
    KernelLimit(String),
}

/// How one probe went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutcome {
    /// What was tried.
    pub what: String,
    /// `Err(reason)` when it was denied.
    pub result: Result<(), String>,
    pub expect: Expect,
}

impl ProbeOutcome {
    pub fn denied(&self) -> bool {
        self.result.is_err()
    }

    /// Whether the result is what the sandbox promises.
    pub fn as_expected(&self) -> bool {
        match self.expect {
            Expect::Denied => self.result.is_err(),
            Expect::Allowed => self.result.is_ok(),
            Expect::KernelLimit(_) => true,
        }
    }

    /// Allowed only because the kernel cannot deny it.
    pub fn is_kernel_limit(&self) -> bool {
        matches!(self.expect, Expect::KernelLimit(_)) && self.result.is_ok()
    }

    /// The report line.
    pub fn line(&self) -> String {
        match (&self.expect, &self.result) {
            (Expect::Allowed, Ok(())) => format!("allowed  {} (needed)", self.what),
            (Expect::Allowed, Err(e)) => format!("FAILED   {}: {e} (it must work)", self.what),
            (Expect::KernelLimit(why), Ok(())) => {
                format!("LIMIT    {}: not denied: {why}", self.what)
            }
            (_, Err(e)) => format!("denied   {}: {e}", self.what),
            (Expect::Denied, Ok(())) => format!("ALLOWED  {}", self.what),
        }
    }
}

/// Sockets made before the sandbox, as a compromised process would find
/// them (or not): what the probes try to connect.
#[derive(Debug, Default)]
pub struct Prepared {
    unix: Option<OwnedFd>,
    tcp: Option<OwnedFd>,
    /// A listening unix socket of the probe's own, not the sound server.
    other: Option<(ScratchDir, UnixListener)>,
}

/// A scratch directory, removed on drop (if the sandbox still lets us).
#[derive(Debug)]
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

impl Prepared {
    /// Makes the sockets (before the sandbox; failures leave gaps that the
    /// probes report).
    pub fn make() -> Self {
        let stream =
            |family| socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).ok();
        let dir = std::env::temp_dir().join(format!("host-playd-check-{}", std::process::id()));
        let other = fs::create_dir_all(&dir).ok().and_then(|()| {
            let path = dir.join("other.sock");
            let listener = UnixListener::bind(&path).ok()?;
            // Reachable by whatever user the sandbox becomes: only the
            // sandbox may stand in the way.
            let open = |p: &Path| fs::set_permissions(p, fs::Permissions::from_mode(0o777));
            open(&dir).ok()?;
            open(&path).ok()?;
            Some((ScratchDir(dir), listener))
        });
        Prepared {
            unix: stream(AddressFamily::Unix),
            tcp: stream(AddressFamily::Inet),
            other,
        }
    }
}

fn connect_unix(fd: Option<&OwnedFd>, path: &Path) -> io::Result<()> {
    let fd = fd.ok_or_else(|| io::Error::other("no socket could be made before the sandbox"))?;
    let addr = socket::UnixAddr::new(path).map_err(io::Error::from)?;
    socket::connect(AsRawFd::as_raw_fd(fd), &addr).map_err(io::Error::from)
}

fn new_socket(family: AddressFamily, kind: SockType) -> io::Result<OwnedFd> {
    socket::socket(family, kind, SockFlag::SOCK_CLOEXEC, None).map_err(io::Error::from)
}

fn udp_send() -> io::Result<()> {
    let fd = new_socket(AddressFamily::Inet, SockType::Datagram)?;
    let to = socket::SockaddrIn::new(127, 0, 0, 1, 9);
    socket::sendto(
        AsRawFd::as_raw_fd(&fd),
        b"probe",
        &to,
        socket::MsgFlags::empty(),
    )
    .map(drop)
    .map_err(io::Error::from)
}

fn tcp_connect(prepared: &Prepared, port: u16) -> io::Result<()> {
    let fd = prepared
        .tcp
        .as_ref()
        .ok_or_else(|| io::Error::other("no socket could be made before the sandbox"))?;
    let to = socket::SockaddrIn::new(127, 0, 0, 1, port);
    match socket::connect(AsRawFd::as_raw_fd(fd), &to) {
        // Nobody listening means the connect itself was let through.
        Ok(()) | Err(nix::errno::Errno::ECONNREFUSED) => Ok(()),
        Err(e) => Err(io::Error::from(e)),
    }
}

fn stat_shadow() -> io::Result<()> {
    fs::metadata("/etc/shadow").map(drop)
}

/// What the guest-facing process must not be able to do beyond the common
/// probes: make any socket, connect one it had, send UDP, look up a path.
pub fn guest_facing_probes(prepared: &Prepared, server_sockets: &[PathBuf]) -> Vec<ProbeOutcome> {
    let server = server_sockets
        .first()
        .cloned()
        .unwrap_or_else(|| PathBuf::from("/run/pulse/native"));
    vec![
        probe("socket(AF_UNIX)", || {
            new_socket(AddressFamily::Unix, SockType::Stream).map(drop)
        }),
        probe("socket(AF_INET)", || {
            new_socket(AddressFamily::Inet, SockType::Stream).map(drop)
        }),
        probe("send a UDP datagram to 127.0.0.1:9", udp_send),
        probe(
            &format!(
                "connect to the sound server's socket {} (socket made before the sandbox)",
                server.display()
            ),
            || connect_unix(prepared.unix.as_ref(), &server),
        ),
        probe(
            "connect to 127.0.0.1:4713 (socket made before the sandbox)",
            || tcp_connect(prepared, 4713),
        ),
        probe("stat /etc/shadow", stat_shadow),
    ]
}

/// The player's probes beyond the common ones: it may reach its sound
/// server and nothing else, as far as the kernel can tell them apart.
pub fn player_probes(prepared: &Prepared, sandbox: &super::SandboxConfig) -> Vec<ProbeOutcome> {
    let tcp_server = sandbox.role == super::Role::PlayerTcp;
    let mut out = Vec::new();
    if let Some(server) = sandbox.connect_unix.iter().find(|p| p.exists()) {
        let mut reach = probe(
            &format!("connect to the sound server's socket {}", server.display()),
            || {
                let fd = new_socket(AddressFamily::Unix, SockType::Stream)?;
                connect_unix(Some(&fd), server)
            },
        );
        reach.expect = Expect::Allowed;
        out.push(reach);
    }
    if let Some((dir, _listener)) = &prepared.other {
        let other = dir.0.join("other.sock");
        let mut p = probe(
            &format!("connect to another unix socket {}", other.display()),
            || {
                let fd = new_socket(AddressFamily::Unix, SockType::Stream)?;
                connect_unix(Some(&fd), &other)
            },
        );
        p.expect = Expect::KernelLimit(
            "Landlock restricts connecting to pathname unix sockets only from ABI 9, and \
             seccomp cannot read the address"
                .to_owned(),
        );
        out.push(p);
    }
    let mut tcp = probe("socket(AF_INET)", || {
        new_socket(AddressFamily::Inet, SockType::Stream).map(drop)
    });
    let mut udp = probe("send a UDP datagram to 127.0.0.1:9", udp_send);
    if tcp_server {
        tcp.expect = Expect::Allowed;
        udp.expect = Expect::KernelLimit(
            "a TCP sound server needs AF_INET sockets, and Landlock has no UDP rules".to_owned(),
        );
    }
    out.push(tcp);
    out.push(udp);
    if !tcp_server || !sandbox.connect_tcp.contains(&4713) {
        out.push(probe(
            "connect to 127.0.0.1:4713 (socket made before the sandbox)",
            || tcp_connect(prepared, 4713),
        ));
    }
    let mut stat = probe("stat /etc/shadow", stat_shadow);
    stat.expect = Expect::KernelLimit(
        "Landlock does not govern stat, and libpulse needs newfstatat to read its \
         configuration (metadata only: reading the file is denied)"
            .to_owned(),
    );
    out.push(stat);
    out
}

/// Threads of this process, from /proc/self/status.
pub fn thread_count() -> Result<usize, String> {
    status_field("Threads")?
        .parse()
        .map_err(|e| format!("bad Threads field: {e}"))
}

/// A field of /proc/self/status (e.g. `CapEff`), trimmed.
pub fn status_field(name: &str) -> Result<String, String> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
        .ok_or_else(|| format!("/proc/self/status has no {name}"))
}

/// /proc/self/status, opened before the sandbox hides /proc: re-reading an
/// open procfs file from offset 0 shows the current values.
#[derive(Debug)]
pub struct SelfStatus(File);

impl SelfStatus {
    pub fn open() -> io::Result<Self> {
        File::open("/proc/self/status").map(SelfStatus)
    }

    /// The current value of `name` (e.g. `CapEff`), trimmed.
    pub fn field(&mut self, name: &str) -> Result<String, String> {
        use std::io::{Read, Seek};
        let mut text = String::new();
        self.0
            .rewind()
            .and_then(|_| self.0.read_to_string(&mut text))
            .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
            .ok_or_else(|| format!("/proc/self/status has no {name}"))
    }
}

/// Runs every probe; `scratch` is the directory a file write is tried in.
pub fn run_probes(scratch: &Path) -> Vec<ProbeOutcome> {
    let write_target = scratch.join(format!("host-playd-probe-{}", std::process::id()));
    vec![
        probe("open /etc/passwd for reading", || {
            File::open("/etc/passwd").map(drop)
        }),
        probe(&format!("write {}", write_target.display()), || {
            write_file(&write_target)
        }),
        probe("exec /bin/true", || {
            // Inherited stdio: opening /dev/null would be denied before
            // the exec is even tried.
            let status = Command::new("/bin/true").status()?;
            if status.success() {
                Ok(())
            } else {
                Err(io::Error::other(format!("/bin/true exited with {status}")))
            }
        }),
        probe("open an AF_NETLINK socket", || {
            socket::socket(
                AddressFamily::Netlink,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::NetlinkRoute,
            )
            .map(drop)
            .map_err(io::Error::from)
        }),
        probe("open an AF_PACKET socket", || {
            socket::socket(
                AddressFamily::Packet,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .map(drop)
            .map_err(io::Error::from)
        }),
        probe("become root again (setuid 0)", || {
            nix::unistd::setuid(nix::unistd::Uid::from_raw(0)).map_err(io::Error::from)
        }),
    ]
}

fn write_file(path: &PathBuf) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    let written = file.write_all(b"probe\n");
    drop(file);
    let _ = fs::remove_file(path);
    written
}

fn probe(what: &str, attempt: impl FnOnce() -> io::Result<()>) -> ProbeOutcome {
    ProbeOutcome {
        what: what.to_owned(),
        result: attempt().map_err(|e| e.to_string()),
        expect: Expect::Denied,
    }
}
