//! `--check-sandbox`: things a compromised daemon would try, each of which
//! the sandbox must deny.
#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::socket::{self, AddressFamily, SockFlag, SockProtocol, SockType};

/// How one probe went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutcome {
    /// What was tried.
    pub what: String,
    /// `Err(reason)` when it was denied.
    pub result: Result<(), String>,
}

impl ProbeOutcome {
    pub fn denied(&self) -> bool {
        self.result.is_err()
    }
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
    }
}
