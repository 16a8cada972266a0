//! User, groups, capabilities, dumpable and no_new_privs. Every call's
//! result is checked, and the outcome is read back from the kernel.
#![forbid(unsafe_code)]

use caps::CapSet;
use nix::sys::prctl;
use nix::unistd::{self, Gid, Uid, User};

use super::{Outcome, DEFAULT_USER};

/// The user to become, or `None` to stay who we are.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
}

/// Looks `name` up (before Landlock hides /etc/passwd). Without a name,
/// root becomes [`DEFAULT_USER`] and anyone else stays.
pub fn resolve_user(name: Option<&str>) -> Result<Option<Target>, String> {
    let name = match name {
        Some(name) => name,
        None if Uid::effective().is_root() || Uid::current().is_root() => DEFAULT_USER,
        None => return Ok(None),
    };
    let user = match name.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(name),
    }
    .map_err(|e| format!("cannot look up user {name:?}: {e}"))?
    .ok_or_else(|| format!("no such user {name:?}"))?;
    if user.uid.is_root() {
        return Err(format!(
            "refusing to run as {name:?}: it is root (uid 0); pick an unprivileged user"
        ));
    }
    Ok(Some(Target {
        name: user.name,
        uid: user.uid,
        gid: user.gid,
    }))
}

/// Empties the bounding set (needs CAP_SETPCAP, so before the user change)
/// and the ambient set.
pub fn drop_bounding_and_ambient() -> Result<Outcome, String> {
    caps::clear(None, CapSet::Ambient).map_err(|e| format!("clearing the ambient set: {e}"))?;
    let setpcap = caps::has_cap(None, CapSet::Effective, caps::Capability::CAP_SETPCAP)
        .map_err(|e| e.to_string())?;
    if !setpcap {
        return Ok(Outcome::Skipped(
            "ambient set cleared; the bounding set needs CAP_SETPCAP to shrink \
             (harmless: no_new_privs forbids gaining capabilities)"
                .to_owned(),
        ));
    }
    for cap in caps::all() {
        // Capabilities the kernel does not know cannot be dropped.
        if caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| format!("dropping {cap} from the bounding set: {e}"))?;
        }
    }
    let left = caps::read(None, CapSet::Bounding).map_err(|e| e.to_string())?;
    if !left.is_empty() {
        return Err(format!("bounding set still holds {left:?}"));
    }
    Ok(Outcome::Applied(
        "bounding and ambient sets empty".to_owned(),
    ))
}

/// `setgroups([])`, `setresgid`, `setresuid`, then checks that none of the
/// old ids can be regained.
pub fn change_user(target: Option<&Target>) -> Result<Outcome, String> {
    let Some(target) = target else {
        return Ok(Outcome::Skipped(format!(
            "already unprivileged (uid {})",
            Uid::current()
        )));
    };
    if Uid::current() == target.uid
        && Uid::effective() == target.uid
        && Gid::current() == target.gid
        && Gid::effective() == target.gid
    {
        return Ok(Outcome::Skipped(format!("already {}", target.name)));
    }
    let (uid, gid) = (target.uid, target.gid);
    unistd::setgroups(&[]).map_err(|e| format!("setgroups([]): {e}"))?;
    unistd::setresgid(gid, gid, gid).map_err(|e| format!("setresgid({gid}): {e}"))?;
    unistd::setresuid(uid, uid, uid).map_err(|e| format!("setresuid({uid}): {e}"))?;

    let r = unistd::getresuid().map_err(|e| e.to_string())?;
    let g = unistd::getresgid().map_err(|e| e.to_string())?;
    if [r.real, r.effective, r.saved] != [uid; 3] || [g.real, g.effective, g.saved] != [gid; 3] {
        return Err(format!("ids did not change: uid {r:?} gid {g:?}"));
    }
    let groups = unistd::getgroups().map_err(|e| e.to_string())?;
    if groups.iter().any(|&g| g != gid) {
        return Err(format!("supplementary groups left: {groups:?}"));
    }
    if unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err("setuid(0) still succeeds".to_owned());
    }
    Ok(Outcome::Applied(format!(
        "now {} (uid {uid}, gid {gid}), no supplementary groups",
        target.name
    )))
}

/// Empties the effective, permitted and inheritable sets (and ambient again:
/// it is cleared whenever permitted shrinks, but say so explicitly).
pub fn clear_capabilities() -> Result<Outcome, String> {
    for set in [
        CapSet::Effective,
        CapSet::Permitted,
        CapSet::Inheritable,
        CapSet::Ambient,
    ] {
        caps::clear(None, set).map_err(|e| format!("clearing {set:?}: {e}"))?;
    }
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        let left = caps::read(None, set).map_err(|e| e.to_string())?;
        if !left.is_empty() {
            return Err(format!("{set:?} still holds {left:?}"));
        }
    }
    Ok(Outcome::Applied(
        "effective, permitted, inheritable and ambient sets empty".to_owned(),
    ))
}

/// Not dumpable (no ptrace, no core by the same user), and no exec can ever
/// grant privileges again.
pub fn no_new_privs() -> Result<Outcome, String> {
    prctl::set_dumpable(false).map_err(|e| format!("PR_SET_DUMPABLE: {e}"))?;
    prctl::set_no_new_privs().map_err(|e| format!("PR_SET_NO_NEW_PRIVS: {e}"))?;
    if !prctl::get_no_new_privs().map_err(|e| e.to_string())? {
        return Err("PR_GET_NO_NEW_PRIVS still reads 0".to_owned());
    }
    Ok(Outcome::Applied(
        "PR_SET_NO_NEW_PRIVS set, not dumpable".to_owned(),
    ))
}
