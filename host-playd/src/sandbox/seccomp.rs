//! The seccomp allowlists, kept as reviewed data in `seccomp/<arch>.json`
//! (seccompiler's JSON format, as in Firecracker): every syscall each of
//! host-playd's processes may make after entering its sandbox, each with
//! the reason it is needed. One allowlist per [`Role`]: the guest-facing
//! process may make no socket, connect nowhere and look up no path; the
//! player may make only the sockets its sound server needs, and no thread.
//!
//! Two filters are installed, on every thread (TSYNC), in this order:
//! - [`ENOSYS_LIST`]: `clone3` fails with ENOSYS, so glibc falls back to
//!   `clone` (which the allowlist admits for threads only, by its flags);
//!   everything else passes to the next filter;
//! - the role's allowlist ([`allowlist`]): the listed syscalls pass (some only with given
//!   arguments), anything else fails with EPERM. It lists `clone3` so that
//!   the first filter's ENOSYS stands: the kernel runs every filter and
//!   keeps the strictest answer (an errno beats allow). Installing it last
//!   also means the `seccomp` and `prctl` calls that install filters need
//!   not be on it.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;

use seccompiler::{BpfMap, TargetArch};
use serde::Deserialize;

use super::{Outcome, Role};

/// Names of the allowlist filters in the JSON data, one per role.
pub const ALLOWLISTS: [&str; 3] = ["guest_facing", "player", "player_tcp"];

/// The allowlist for `role`.
pub fn allowlist(role: Role) -> &'static str {
    match role {
        Role::GuestFacing => ALLOWLISTS[0],
        Role::Player => ALLOWLISTS[1],
        Role::PlayerTcp => ALLOWLISTS[2],
    }
}
/// Name of the filter answering ENOSYS.
pub const ENOSYS_LIST: &str = "host_playd_enosys";

/// The reviewed policy for this architecture.
#[cfg(target_arch = "x86_64")]
pub const POLICY_JSON: Option<&str> = Some(include_str!("../../seccomp/x86_64.json"));
#[cfg(not(target_arch = "x86_64"))]
pub const POLICY_JSON: Option<&str> = None;

#[cfg(target_arch = "x86_64")]
const ARCH: Option<TargetArch> = Some(TargetArch::x86_64);
#[cfg(not(target_arch = "x86_64"))]
const ARCH: Option<TargetArch> = None;

#[derive(Debug, Deserialize)]
struct Filter {
    filter: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
struct Rule {
    syscall: String,
    comment: Option<String>,
}

/// One reviewed entry: the filter, the syscall, and why it is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub filter: String,
    pub syscall: String,
    pub reason: String,
}

/// Every rule of the policy, refusing one without a reason.
pub fn entries(json: &str) -> Result<Vec<Entry>, String> {
    let filters: std::collections::BTreeMap<String, Filter> =
        serde_json::from_str(json).map_err(|e| format!("seccomp policy: {e}"))?;
    let mut out = Vec::new();
    for (name, filter) in filters {
        for rule in filter.filter {
            let reason = rule.comment.unwrap_or_default();
            if reason.trim().is_empty() {
                return Err(format!(
                    "seccomp policy: {name}/{} has no comment giving its reason",
                    rule.syscall
                ));
            }
            out.push(Entry {
                filter: name.clone(),
                syscall: rule.syscall,
                reason,
            });
        }
    }
    Ok(out)
}

/// The distinct syscalls that can succeed for `role`: on its allowlist
/// (some only with certain arguments) and not answered ENOSYS by the other
/// filter.
pub fn allowed_syscalls(json: &str, role: Role) -> Result<BTreeSet<String>, String> {
    let allowlist = allowlist(role);
    let entries = entries(json)?;
    let enosys: BTreeSet<&str> = entries
        .iter()
        .filter(|e| e.filter == ENOSYS_LIST)
        .map(|e| e.syscall.as_str())
        .collect();
    Ok(entries
        .iter()
        .filter(|e| e.filter == allowlist && !enosys.contains(e.syscall.as_str()))
        .map(|e| e.syscall.clone())
        .collect())
}

/// Compiles the policy to BPF; unknown syscall names are an error.
pub fn compile(json: &str, arch: TargetArch) -> Result<BpfMap, String> {
    entries(json)?;
    let map = seccompiler::compile_from_json(json.as_bytes(), arch)
        .map_err(|e| format!("seccomp policy: {e}"))?;
    for name in ALLOWLISTS.iter().chain([&ENOSYS_LIST]) {
        if !map.contains_key(*name) {
            return Err(format!("seccomp policy: no filter named {name:?}"));
        }
    }
    Ok(map)
}

/// Installs the ENOSYS filter and `role`'s allowlist on every thread of the
/// process.
pub fn install(role: Role) -> Result<Outcome, String> {
    let (Some(json), Some(arch)) = (POLICY_JSON, ARCH) else {
        return Ok(Outcome::Unavailable(format!(
            "no reviewed seccomp policy for {}",
            std::env::consts::ARCH
        )));
    };
    let map = compile(json, arch)?;
    for name in [ENOSYS_LIST, allowlist(role)] {
        let program = map
            .get(name)
            .ok_or_else(|| format!("no filter named {name:?}"))?;
        match seccompiler::apply_filter_all_threads(program) {
            Ok(()) => {}
            Err(seccompiler::Error::Seccomp(e)) if e.raw_os_error() == Some(libc::EINVAL) => {
                return Ok(Outcome::Unavailable(format!(
                    "the kernel refused a seccomp filter: {e}"
                )));
            }
            Err(e) => return Err(format!("installing {name}: {e}")),
        }
    }
    let count = allowed_syscalls(json, role)?.len();
    Ok(Outcome::Applied(format!(
        "{} allowlist: {count} syscalls allowed on every thread (others: EPERM; clone3: ENOSYS)",
        allowlist(role)
    )))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_syscall_name_resolves_and_has_a_reason() {
        let json = POLICY_JSON.unwrap();
        let map = compile(json, TargetArch::x86_64).unwrap();
        let entries = entries(json).unwrap();
        assert!(entries.iter().all(|e| e.reason.len() > 10), "{entries:?}");
        for role in [Role::GuestFacing, Role::Player, Role::PlayerTcp] {
            assert!(!map[allowlist(role)].is_empty());
            let allowed = allowed_syscalls(json, role).unwrap();
            assert!(!allowed.contains("clone3"), "answered ENOSYS, not allowed");
            for forbidden in [
                "execve", "execveat", "fork", "vfork", "ptrace", "setuid", "mount", "kill", "bind",
                "listen",
            ] {
                assert!(
                    !allowed.contains(forbidden),
                    "{role:?}: {forbidden} must not be allowed"
                );
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_guest_facing_process_can_reach_nothing_new() {
        let json = POLICY_JSON.unwrap();
        let allowed = allowed_syscalls(json, Role::GuestFacing).unwrap();
        for forbidden in [
            "socket",
            "socketpair",
            "connect",
            "open",
            "openat",
            "openat2",
            "creat",
            "stat",
            "lstat",
            "newfstatat",
            "statx",
            "access",
            "faccessat",
            "readlink",
            "getdents64",
        ] {
            assert!(!allowed.contains(forbidden), "guest-facing: {forbidden}");
        }
        assert!(allowed.contains("accept4"));
        let player = allowed_syscalls(json, Role::Player).unwrap();
        for forbidden in ["clone", "accept4", "setpriority"] {
            assert!(!player.contains(forbidden), "player: {forbidden}");
        }
        // Only AF_UNIX sockets for a unix server: one rule, on the family.
        let sockets: Vec<_> = entries(json)
            .unwrap()
            .into_iter()
            .filter(|e| e.filter == "player" && e.syscall == "socket")
            .collect();
        assert_eq!(sockets.len(), 1, "{sockets:?}");
        let raw: serde_json::Value = serde_json::from_str(json).unwrap();
        let rule = raw["player"]["filter"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["syscall"] == "socket")
            .unwrap();
        assert_eq!(rule["args"][0]["val"], 1, "AF_UNIX");
    }

    #[test]
    fn a_misspelt_syscall_or_a_missing_reason_is_refused() {
        let bad_name = r#"{"guest_facing": {"mismatch_action": {"errno": 1},
            "match_action": "allow", "filter": [{"syscall": "raed", "comment": "typo"}]},
            "host_playd_enosys": {"mismatch_action": "allow", "match_action": {"errno": 38},
            "filter": [{"syscall": "clone3", "comment": "fallback"}]}}"#;
        let e = compile(bad_name, TargetArch::x86_64).unwrap_err();
        assert!(e.contains("raed"), "{e}");
        let no_reason = bad_name.replace(
            r#""syscall": "raed", "comment": "typo""#,
            r#""syscall": "read""#,
        );
        let e = compile(&no_reason, TargetArch::x86_64).unwrap_err();
        assert!(e.contains("guest_facing/read has no comment"), "{e}");
    }
}
