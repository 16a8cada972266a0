//! Landlock: the file system is denied except a few read-only paths, TCP
//! bind is denied and TCP connect allowed only to a TCP PulseAudio server,
//! and (ABI 6+) abstract unix sockets and signals outside the sandbox are
//! out of reach.
//!
//! Connecting to a *pathname* unix socket (the host's PulseAudio) is not a
//! file system access Landlock governs before ABI 9 (`RESOLVE_UNIX`): on
//! such kernels the reconnection works whatever the rules say; on newer
//! ones the socket path gets an explicit rule.
#![forbid(unsafe_code)]

use landlock::{
    Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

use super::{Outcome, SandboxConfig};

/// The newest Landlock ABI this code was written and tested against; newer
/// kernels are asked for no more than this.
pub const TARGET_ABI: ABI = ABI::V10;

pub fn restrict(config: &SandboxConfig) -> Result<Outcome, String> {
    let err = |e: landlock::RulesetError| e.to_string();
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(TARGET_ABI))
        .map_err(err)?
        .handle_access(AccessNet::from_all(TARGET_ABI))
        .map_err(err)?
        .scope(Scope::from_all(TARGET_ABI))
        .map_err(err)?
        .create()
        .map_err(err)?;
    let mut allowed = Vec::new();
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    for path in &config.read_only {
        // Missing paths are simply not allowed (nothing to read there).
        let Ok(fd) = PathFd::new(path) else { continue };
        let access = if path.is_dir() {
            read
        } else {
            AccessFs::ReadFile.into()
        };
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, access))
            .map_err(err)?;
        allowed.push(format!("{} (read)", path.display()));
    }
    for path in &config.connect_unix {
        let Ok(fd) = PathFd::new(path) else { continue };
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, AccessFs::ResolveUnix))
            .map_err(err)?;
        allowed.push(format!("{} (connect)", path.display()));
    }
    for &port in &config.connect_tcp {
        ruleset = ruleset
            .add_rule(NetPort::new(port, AccessNet::ConnectTcp))
            .map_err(err)?;
        allowed.push(format!("tcp port {port} (connect)"));
    }
    let status = ruleset.restrict_self().map_err(err)?;
    let allowed = if allowed.is_empty() {
        "nothing".to_owned()
    } else {
        allowed.join(", ")
    };
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => Outcome::Applied(format!(
            "file system and network denied except {allowed}; abstract sockets and signals scoped"
        )),
        RulesetStatus::PartiallyEnforced => Outcome::Applied(format!(
            "file system denied except {allowed} (partially: this kernel's Landlock ABI lacks \
             some rights, e.g. network rules need ABI 4, scoping ABI 6, unix connect ABI 9)"
        )),
        RulesetStatus::NotEnforced => {
            Outcome::Unavailable("the kernel does not support Landlock".to_owned())
        }
    })
}
