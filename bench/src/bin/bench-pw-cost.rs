//! Cost of a PipeWire guest's stream: CPU of the guest side (PipeWire,
//! WirePlumber, pipewire-pulse, and secure-tunnel-pipewire on its row) and
//! of the host side (host-playd, the host PulseAudio) while one player
//! plays 48 kHz stereo s16 through pipewire-pulse, through
//! secure-tunnel-pipewire and then through PipeWire's module-pulse-tunnel
//! (pipewire-pulse's `module-tunnel-sink`), in the same run on the same
//! daemons, after an idle baseline.

#![forbid(unsafe_code)]

use std::{thread, time::Duration};

use anyhow::Result;
use secure_tunnel_bench::{
    fleet::{cpu_between, tree_cpu_seconds},
    impulses::Coder,
    opts::Opts,
    pa::{PlayConfig, PlayProbe},
    procstat::clock_ticks,
    stats::ratio,
    Loaded, Row, World,
};

const USAGE: &str = "bench-pw-cost [--seconds S] [--latency-ms L] [--rounds N]

One stream from a PipeWire guest (a libpulse player on pipewire-pulse),
through secure-tunnel-pipewire (--latency-msec L, default 60) and through
PipeWire's module-pulse-tunnel, S seconds each (default 30), N rounds
(default 2) alternating; prints the CPU of the guest side and the host side
in % of one core, above an idle baseline, and the ratios. Also
BENCH_SECONDS, BENCH_LATENCY_MS, BENCH_ROUNDS.";

const WARMUP: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    /// PipeWire + WirePlumber + pipewire-pulse.
    pipewire: f64,
    /// secure-tunnel-pipewire.
    service: f64,
    /// host-playd and the host PulseAudio.
    host: f64,
}

impl Cost {
    fn guest(&self) -> f64 {
        self.pipewire + self.service
    }
}

fn main() -> Result<()> {
    let opts = Opts::from_args(USAGE)?;
    let seconds = opts.f64("seconds", 30.0)?;
    let latency_ms = opts.f64("latency-ms", 60.0)? as u32;
    let rounds = opts.f64("rounds", 2.0)? as usize;
    let ticks = clock_ticks()?;
    let world = World::start()?.with_pipewire()?;
    println!(
        "PipeWire guest cost: one 48 kHz s16 stereo stream, {seconds} s per row and round, \
         {rounds} round(s); --latency-msec {latency_ms}; {} cores; load average at start: {}",
        thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    eprintln!("idle baseline ...");
    let idle = sample(&world, ticks, seconds / 2.0, None)?;
    let mut totals = [
        (Row::PwOurs, Cost::default()),
        (Row::PwTunnel, Cost::default()),
    ];
    for round in 0..rounds.max(1) {
        for (row, total) in &mut totals {
            eprintln!("round {}: {} ...", round + 1, row.name());
            let loaded = row.load(&world, latency_ms)?;
            let player = PlayProbe::start(PlayConfig {
                server: loaded.server.clone(),
                sink: loaded.sink.clone(),
                tlength_ms: f64::from(latency_ms),
                coder: Coder::every_ms(500),
            })?;
            thread::sleep(WARMUP);
            let cost = sample(&world, ticks, seconds, Some(&loaded));
            let _ = player.stop();
            loaded.unload(&world)?;
            thread::sleep(Duration::from_secs(1));
            let cost = cost?;
            eprintln!("  {cost:?}");
            total.pipewire += cost.pipewire / rounds as f64;
            total.service += cost.service / rounds as f64;
            total.host += cost.host / rounds as f64;
        }
    }
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>9}",
        "row (% of one core, above idle)", "PipeWire", "service", "guest", "host"
    );
    let pct = |x: f64| x * 100.0;
    println!(
        "{:<34} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
        "idle (absolute)",
        pct(idle.pipewire),
        pct(idle.service),
        pct(idle.guest()),
        pct(idle.host)
    );
    for (row, c) in &totals {
        println!(
            "{:<34} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            row.name(),
            pct(c.pipewire - idle.pipewire),
            pct(c.service),
            pct(c.guest() - idle.guest()),
            pct(c.host - idle.host)
        );
    }
    let (ours, theirs) = (totals[0].1, totals[1].1);
    println!(
        "ratio secure-tunnel-pipewire / module-pulse-tunnel: guest {}, host {}, both {}",
        ratio(ours.guest() - idle.guest(), theirs.guest() - idle.guest()),
        ratio(ours.host - idle.host, theirs.host - idle.host),
        ratio(
            ours.guest() + ours.host - idle.guest() - idle.host,
            theirs.guest() + theirs.host - idle.guest() - idle.host
        )
    );
    Ok(())
}

fn sample(world: &World, ticks: f64, seconds: f64, loaded: Option<&Loaded>) -> Result<Cost> {
    let pw_pids = world
        .pipewire
        .as_ref()
        .map(|p| p.pids())
        .unwrap_or_default();
    let service = loaded.and_then(Loaded::service_pid);
    let read = |pids: &[u32]| -> Vec<(u32, f64)> {
        pids.iter()
            .flat_map(|&p| tree_cpu_seconds(p, ticks))
            .collect()
    };
    let host_pids = [world.playd.pid(), world.host.pid()];
    let (w0, s0, h0) = (read(&pw_pids), read(service.as_slice()), read(&host_pids));
    let t0 = std::time::Instant::now();
    thread::sleep(Duration::from_secs_f64(seconds));
    let (w1, s1, h1) = (read(&pw_pids), read(service.as_slice()), read(&host_pids));
    let wall = t0.elapsed().as_secs_f64();
    Ok(Cost {
        pipewire: cpu_between(&w0, &w1) / wall,
        service: cpu_between(&s0, &s1) / wall,
        host: cpu_between(&h0, &h1) / wall,
    })
}
