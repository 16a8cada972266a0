//! Two network namespaces joined by a veth pair, for tests that run guest
//! and host as separate machines would: only the addresses inside the
//! namespaces this creates are touched, and both are deleted on drop.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use crate::{process::ChildGuard, HarnessError};

/// The host end's address (inside the host namespace only).
pub const HOST_ADDR: &str = "10.203.0.1";
/// The guest end's address (inside the guest namespace only).
pub const GUEST_ADDR: &str = "10.203.0.2";

/// A host and a guest namespace linked by a veth pair; deleted on drop.
#[derive(Debug)]
pub struct NetnsPair {
    /// Name of the host namespace.
    pub host: String,
    /// Name of the guest namespace.
    pub guest: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetnsPair {
    /// Creates the pair, or says why it cannot (no `ip`, no permission):
    /// the caller skips then.
    pub fn create() -> Result<Self, String> {
        let id = std::process::id() % 100_000;
        let pair = NetnsPair {
            host: format!("st-host-{id}"),
            guest: format!("st-guest-{id}"),
        };
        ip(&["netns", "add", &pair.host])?;
        // From here on, Drop cleans up whatever was made.
        ip(&["netns", "add", &pair.guest])?;
        let (vh, vg) = (format!("sth{id}"), format!("stg{id}"));
        ip(&[
            "link",
            "add",
            &vh,
            "netns",
            &pair.host,
            "type",
            "veth",
            "peer",
            "name",
            &vg,
            "netns",
            &pair.guest,
        ])?;
        for (ns, dev, addr) in [(&pair.host, &vh, HOST_ADDR), (&pair.guest, &vg, GUEST_ADDR)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }

    /// `program args...` run inside namespace `ns` with `ip netns exec`
    /// (which execs, so the child's pid is the program's).
    pub fn command(ns: &str, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(program);
        cmd
    }

    /// Spawns `cmd` under a guard that kills it on drop.
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<NsProcess, HarnessError> {
        ChildGuard::spawn(name, cmd).map(NsProcess)
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and so the pair.
        let _ = ip(&["netns", "del", &self.guest]);
        let _ = ip(&["netns", "del", &self.host]);
    }
}

/// A process started in a namespace, killed on drop.
#[derive(Debug)]
pub struct NsProcess(ChildGuard);

impl NsProcess {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Whether it still runs.
    pub fn is_alive(&mut self) -> bool {
        self.0.exit_status().is_none()
    }
}

/// The network namespace `pid` lives in (the `net:[inode]` link).
pub fn net_ns_of(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|p| p.display().to_string())
}
