//! Cost: CPU time of the guest PulseAudio, host-playd and the host
//! PulseAudio while one 48 kHz stereo s16 stream plays through our tunnel,
//! then through module-tunnel-sink-new, in the same run.

#![forbid(unsafe_code)]

use std::{thread, time::Duration};

use anyhow::Result;
use secure_tunnel_bench::{
    impulses::Coder,
    opts::Opts,
    pa::{PlayConfig, PlayProbe},
    procstat::{clock_ticks, cpu_seconds},
    stats::ratio,
    Row, World,
};

const USAGE: &str = "bench-cost [--seconds S] [--latency-ms L]

Plays one stream for S seconds (default 60) through module-secure-tunnel-sink
(latency_msec=L, default 60) and through module-tunnel-sink-new, after an idle
baseline of S/4 seconds, and prints each process's CPU time (utime+stime).
Also BENCH_SECONDS, BENCH_LATENCY_MS.";

const WARMUP: Duration = Duration::from_secs(3);

/// CPU seconds per second of wall time of (guest PA, host-playd, host PA).
#[derive(Debug, Clone, Copy, Default)]
struct Load {
    guest: f64,
    playd: f64,
    host: f64,
}

impl Load {
    fn host_side(&self) -> f64 {
        self.playd + self.host
    }

    fn total(&self) -> f64 {
        self.guest + self.playd + self.host
    }
}

fn main() -> Result<()> {
    let opts = Opts::from_args(USAGE)?;
    let seconds = opts.f64("seconds", 60.0)?;
    let latency_ms = opts.f64("latency-ms", 60.0)? as u32;
    let ticks = clock_ticks()?;
    let world = World::start()?;
    println!(
        "cost: CPU time over {seconds} s of one 48 kHz s16 stereo stream (player tlength {latency_ms} ms), \
         in % of one core; our latency_msec={latency_ms}; load average at start: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );

    eprintln!("idle baseline ...");
    let idle = sample(&world, ticks, seconds / 4.0)?;
    let mut rows = vec![("idle (nothing playing)", idle)];
    for row in [Row::Ours, Row::TunnelNew] {
        eprintln!("{} ...", row.name());
        let loaded = row.load(&world, latency_ms)?;
        let player = PlayProbe::start(PlayConfig {
            server: loaded.server.clone(),
            sink: loaded.sink.clone(),
            // tunnel-sink-new sizes its host stream from the guest's
            // requested latency: asking for L puts both tunnels at L.
            tlength_ms: f64::from(latency_ms),
            coder: Coder::every_ms(300),
        })?;
        thread::sleep(WARMUP);
        let load = sample(&world, ticks, seconds);
        player.stop()?;
        loaded.unload(&world)?;
        rows.push((row.name(), load?));
    }

    println!(
        "{:<28} | {:>9} {:>10} {:>8} | {:>10} {:>7}",
        "", "guest PA", "host-playd", "host PA", "host side", "total"
    );
    for (name, l) in &rows {
        println!(
            "{:<28} | {:>8.2}% {:>9.2}% {:>7.2}% | {:>9.2}% {:>6.2}%",
            name,
            l.guest * 100.0,
            l.playd * 100.0,
            l.host * 100.0,
            l.host_side() * 100.0,
            l.total() * 100.0
        );
    }
    let (ours, theirs) = (rows[1].1, rows[2].1);
    let extra = |l: Load| Load {
        guest: l.guest - idle.guest,
        playd: l.playd - idle.playd,
        host: l.host - idle.host,
    };
    let (eo, et) = (extra(ours), extra(theirs));
    println!(
        "ratio ours / tunnel-sink-new (minus idle): guest PA {}, host side {}, total {}",
        ratio(eo.guest, et.guest),
        ratio(eo.host_side(), et.host_side()),
        ratio(eo.total(), et.total())
    );
    println!(
        "(host side: host-playd + host PulseAudio; for tunnel-sink-new host-playd sits idle with \
         no client; /proc ticks are {:.0} ms)",
        1e3 / ticks
    );
    Ok(())
}

fn sample(world: &World, ticks: f64, seconds: f64) -> Result<Load> {
    let pids = [world.guest.pid(), world.playd.pid(), world.host.pid()];
    let read = || -> Result<Vec<f64>> { pids.iter().map(|&p| cpu_seconds(p, ticks)).collect() };
    let before = read()?;
    let t0 = std::time::Instant::now();
    thread::sleep(Duration::from_secs_f64(seconds));
    let after = read()?;
    let wall = t0.elapsed().as_secs_f64();
    let d = |i: usize| (after[i] - before[i]) / wall;
    Ok(Load {
        guest: d(0),
        playd: d(1),
        host: d(2),
    })
}
