//! N guests at once for the cost benchmark: N tunnel sinks in the guest
//! PulseAudio (ours or module-tunnel-sink-new), each with its own `pacat`
//! playing silence from `/dev/zero` (pacat reads only as fast as its stream
//! asks, so the stream, not the file, sets the pace), and what the host-side
//! processes cost meanwhile, read from `/proc` over every process of each.

use std::{
    fs::File,
    process::{Child, Stdio},
};

use anyhow::{Context as _, Result};
use secure_tunnel_e2e::{proctree, HOST_SINK, MODULE_NAME};

use crate::{
    procstat::cpu_seconds,
    setups::{load, unload},
    Row, World,
};

const FORMAT: &str = "rate=48000 channels=2 format=s16le";

/// N sinks and their players; unloaded by [`Fleet::stop`].
#[derive(Debug)]
pub struct Fleet {
    modules: Vec<u32>,
    players: Vec<Child>,
}

impl Fleet {
    /// Loads `n` sinks of `row` (ours at `latency_msec=latency_ms`) and
    /// starts a player on each, asking `latency_ms` of its stream.
    pub fn start(world: &World, row: Row, n: usize, latency_ms: u32) -> Result<Self> {
        let mut fleet = Fleet {
            modules: Vec::new(),
            players: Vec::new(),
        };
        for i in 0..n {
            let (module, args, sink) = match row {
                Row::Ours => (
                    MODULE_NAME,
                    format!(
                        "server=unix:{} sink_name=st{i} {FORMAT} latency_msec={latency_ms}",
                        world.socket.display()
                    ),
                    format!("st{i}"),
                ),
                Row::TunnelNew => (
                    "module-tunnel-sink-new",
                    format!(
                        "server={} sink={HOST_SINK} sink_name=tn{i} {FORMAT}",
                        world.host.server()
                    ),
                    format!("tn{i}"),
                ),
                other => anyhow::bail!("the cost fleet has no {} row", other.name()),
            };
            match load(&world.guest, module, &args) {
                Ok(m) => fleet.modules.push(m),
                Err(e) => {
                    fleet.stop(world)?;
                    return Err(e);
                }
            }
            let zero = File::open("/dev/zero").context("opening /dev/zero")?;
            let mut cmd = world.guest.client("pacat")?;
            cmd.arg(format!("--device={sink}"))
                .args(["--raw", "--format=s16le", "--rate=48000", "--channels=2"])
                .arg(format!("--latency-msec={latency_ms}"))
                .stdin(zero)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            fleet
                .players
                .push(cmd.spawn().context("starting a pacat player")?);
        }
        Ok(fleet)
    }

    /// How many players still run (a player whose sink failed exits).
    pub fn running(&mut self) -> usize {
        let mut n = 0;
        for p in &mut self.players {
            if p.try_wait().ok().flatten().is_none() {
                n += 1;
            }
        }
        n
    }

    /// Stops the players and unloads the sinks; returns how many had
    /// unloaded themselves already (module-tunnel-sink-new does when its
    /// connection to the host fails).
    pub fn stop(mut self, world: &World) -> Result<usize> {
        for p in &mut self.players {
            let _ = p.kill();
            let _ = p.wait();
        }
        self.players.clear();
        let loaded = world.guest.pactl_ok(&["list", "short", "modules"])?;
        let present = |m: u32| {
            loaded
                .lines()
                .any(|l| l.split_whitespace().next() == Some(&m.to_string()))
        };
        let mut gone = 0;
        let mut result = Ok(());
        for m in self.modules.drain(..).rev() {
            if present(m) {
                result = result.and(unload(&world.guest, m));
            } else {
                gone += 1;
            }
        }
        result.map(|()| gone)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for p in &mut self.players {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// CPU seconds used so far by `pid` and every process it started.
pub fn tree_cpu_seconds(pid: u32, ticks: f64) -> Vec<(u32, f64)> {
    proctree::process_tree(pid)
        .into_iter()
        .filter_map(|p| cpu_seconds(p, ticks).ok().map(|s| (p, s)))
        .collect()
}

/// CPU seconds between two [`tree_cpu_seconds`] readings, counting only
/// the processes present in both.
pub fn cpu_between(before: &[(u32, f64)], after: &[(u32, f64)]) -> f64 {
    after
        .iter()
        .filter_map(|(p, a)| before.iter().find(|(q, _)| q == p).map(|(_, b)| a - b))
        .sum()
}
