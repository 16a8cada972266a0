//! A daemon and every process it started, read from `/proc`: host-playd
//! may run as several processes, and a budget counts all of them.

use std::fs;

/// `pid` and all its descendants that are alive now.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(pp) = parent_of(p) {
                parents.push((p, pp));
            }
        }
    }
    let mut tree = Vec::new();
    if fs::metadata(format!("/proc/{pid}")).is_ok() {
        tree.push(pid);
    }
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces and ')'.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn status_field(pid: u32, name: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resident memory of `pid` and its descendants together, in KiB.
pub fn tree_rss_kib(pid: u32) -> u64 {
    process_tree(pid)
        .into_iter()
        .filter_map(|p| status_field(p, "VmRSS:"))
        .sum()
}

/// Threads of `pid` and its descendants together.
pub fn tree_threads(pid: u32) -> u64 {
    process_tree(pid)
        .into_iter()
        .filter_map(|p| status_field(p, "Threads:"))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_process_and_a_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("spawning sleep");
        let me = std::process::id();
        let tree = process_tree(me);
        assert!(tree.contains(&me) && tree.contains(&child.id()), "{tree:?}");
        assert!(tree_threads(me) >= 2 && tree_rss_kib(me) > 0);
        let _ = child.kill();
        let _ = child.wait();
    }
}
