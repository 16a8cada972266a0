//! The seccomp allowlist, kept as reviewed data in `seccomp/<arch>.json`
//! (seccompiler's JSON format, as in Firecracker): every syscall host-playd
//! may make after entering the sandbox, each with the reason it is needed.
//!
//! Two filters are installed, on every thread (TSYNC), in this order:
//! - [`ENOSYS_LIST`]: `clone3` fails with ENOSYS, so glibc falls back to
//!   `clone` (which the allowlist admits for threads only, by its flags);
//!   everything else passes to the next filter;
//! - [`ALLOWLIST`]: the listed syscalls pass (some only with given
//!   arguments), anything else fails with EPERM. It lists `clone3` so that
//!   the first filter's ENOSYS stands: the kernel runs every filter and
//!   keeps the strictest answer (an errno beats allow). Installing it last
//!   also means the `seccomp` and `prctl` calls that install filters need
//!   not be on it.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;

use seccompiler::{BpfMap, TargetArch};
use serde::Deserialize;

use super::Outcome;

/// Name of the allowlist filter in the JSON data.
pub const ALLOWLIST: &str = "host_playd";
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

/// The distinct syscalls that can succeed: on the allowlist (some only
/// with certain arguments) and not answered ENOSYS by the other filter.
pub fn allowed_syscalls(json: &str) -> Result<BTreeSet<String>, String> {
    let entries = entries(json)?;
    let enosys: BTreeSet<&str> = entries
        .iter()
        .filter(|e| e.filter == ENOSYS_LIST)
        .map(|e| e.syscall.as_str())
        .collect();
    Ok(entries
        .iter()
        .filter(|e| e.filter == ALLOWLIST && !enosys.contains(e.syscall.as_str()))
        .map(|e| e.syscall.clone())
        .collect())
}

/// Compiles the policy to BPF; unknown syscall names are an error.
pub fn compile(json: &str, arch: TargetArch) -> Result<BpfMap, String> {
    entries(json)?;
    let map = seccompiler::compile_from_json(json.as_bytes(), arch)
        .map_err(|e| format!("seccomp policy: {e}"))?;
    for name in [ALLOWLIST, ENOSYS_LIST] {
        if !map.contains_key(name) {
            return Err(format!("seccomp policy: no filter named {name:?}"));
        }
    }
    Ok(map)
}

/// Installs both filters on every thread of the process.
pub fn install() -> Result<Outcome, String> {
    let (Some(json), Some(arch)) = (POLICY_JSON, ARCH) else {
        return Ok(Outcome::Unavailable(format!(
            "no reviewed seccomp policy for {}",
            std::env::consts::ARCH
        )));
    };
    let map = compile(json, arch)?;
    for name in [ENOSYS_LIST, ALLOWLIST] {
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
    let count = allowed_syscalls(json)?.len();
    Ok(Outcome::Applied(format!(
        "{count} syscalls allowed on every thread (others: EPERM; clone3: ENOSYS)"
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
        assert!(!map[ALLOWLIST].is_empty());
        let entries = entries(json).unwrap();
        assert!(entries.iter().all(|e| e.reason.len() > 10), "{entries:?}");
        let allowed = allowed_syscalls(json).unwrap();
        assert!(!allowed.contains("clone3"), "answered ENOSYS, not allowed");
        for forbidden in [
            "execve", "execveat", "fork", "vfork", "ptrace", "setuid", "mount",
        ] {
            assert!(
                !allowed.contains(forbidden),
                "{forbidden} must not be allowed"
            );
        }
    }

    #[test]
    fn a_misspelt_syscall_or_a_missing_reason_is_refused() {
        let bad_name = r#"{"host_playd": {"mismatch_action": {"errno": 1},
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
        assert!(e.contains("host_playd/read has no comment"), "{e}");
    }
}
