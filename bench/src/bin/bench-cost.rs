//! Cost: CPU time, threads and memory of the host side (host-playd, every
//! process of it, and the host PulseAudio) while 1, 16 and 64 guests play
//! 48 kHz stereo s16 streams through our tunnel, then through
//! module-tunnel-sink-new, in the same run on the same daemons.

#![forbid(unsafe_code)]

use std::{thread, time::Duration};

use anyhow::{Context as _, Result};
use secure_tunnel_bench::{
    fleet::{cpu_between, tree_cpu_seconds, Fleet},
    logs,
    opts::Opts,
    procstat::clock_ticks,
    stats::ratio,
    Row, World,
};
use secure_tunnel_e2e::{proctree, TestDir};

const USAGE: &str = "bench-cost [--seconds S] [--latency-ms L] [--guests 1,16,64]

For each guest count N: N sinks in the guest PulseAudio, each with a pacat
playing, through module-secure-tunnel-sink (latency_msec=L, default 60) and
then through module-tunnel-sink-new; S seconds (default 60) measured after a
warm-up, following an idle baseline of S/4 seconds. Prints each side's CPU
time (utime+stime of every process), threads and resident memory, per
stream and as ratios. Also BENCH_SECONDS, BENCH_LATENCY_MS, BENCH_GUESTS.";

const WARMUP: Duration = Duration::from_secs(3);

/// What one row cost: CPU seconds per second of wall time, and the state at
/// the end of its window.
#[derive(Debug, Clone, Copy, Default)]
struct Load {
    guest: f64,
    playd: f64,
    host: f64,
    playd_threads: u64,
    host_threads: u64,
    playd_rss_kib: u64,
    host_rss_kib: u64,
    underflows: usize,
    running: usize,
}

impl Load {
    fn host_side(&self) -> f64 {
        self.playd + self.host
    }
}

fn main() -> Result<()> {
    let opts = Opts::from_args(USAGE)?;
    let seconds = opts.f64("seconds", 60.0)?;
    let latency_ms = opts.f64("latency-ms", 60.0)? as u32;
    let counts: Vec<usize> = opts.list("guests", "1,16,64")?;
    let most = counts.iter().copied().max().unwrap_or(1).max(1);
    let ticks = clock_ticks()?;
    // Every guest connects as the same user: let it hold them all.
    let config_dir = TestDir::new("cost")?;
    let config = config_dir.path().join("host-playd.toml");
    std::fs::write(&config, format!("[defaults]\nmax_streams = {most}\n"))
        .context("writing host-playd's config")?;
    let max = most.to_string();
    let config_arg = config.display().to_string();
    let world = World::start_playd(&["--max-clients", &max, "--config", &config_arg])?;
    println!(
        "cost: CPU over {seconds} s per row of N 48 kHz s16 stereo streams (pacat --latency-msec={latency_ms}), \
         in % of one core; our latency_msec={latency_ms}; {} cores; load average at start: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );

    eprintln!("idle baseline ...");
    let idle = sample(&world, ticks, seconds / 4.0, None)?;
    let mut table = vec![("idle".to_owned(), 0usize, idle)];
    for &n in &counts {
        for row in [Row::Ours, Row::TunnelNew] {
            eprintln!("{n} guest(s), {} ...", row.name());
            let mut fleet = Fleet::start(&world, row, n, latency_ms)?;
            thread::sleep(WARMUP + Duration::from_millis(50 * n as u64));
            let load = sample(&world, ticks, seconds, Some(&mut fleet));
            let gone = fleet.stop(&world)?;
            if gone > 0 {
                println!(
                    "({n} x {}: {gone} sink(s) had unloaded themselves)",
                    short(row)
                );
            }
            // Let the host streams go before the next row.
            thread::sleep(Duration::from_secs(1));
            let load = load?;
            eprintln!("  {load:?}");
            table.push((format!("{n:>2} x {}", short(row)), n, load));
        }
    }
    print_table(&table, idle);
    Ok(())
}

fn short(row: Row) -> &'static str {
    match row {
        Row::Ours => "secure-tunnel",
        _ => "tunnel-sink-new",
    }
}

fn sample(world: &World, ticks: f64, seconds: f64, fleet: Option<&mut Fleet>) -> Result<Load> {
    let playd = world.playd.pid();
    let single = |pid: u32| tree_cpu_seconds(pid, ticks);
    let (g0, p0, h0) = (
        single(world.guest.pid()),
        single(playd),
        single(world.host.pid()),
    );
    let mark = logs::mark(&world.host)?;
    let t0 = std::time::Instant::now();
    thread::sleep(Duration::from_secs_f64(seconds));
    let (g1, p1, h1) = (
        single(world.guest.pid()),
        single(playd),
        single(world.host.pid()),
    );
    let wall = t0.elapsed().as_secs_f64();
    Ok(Load {
        guest: cpu_between(&g0, &g1) / wall,
        playd: cpu_between(&p0, &p1) / wall,
        host: cpu_between(&h0, &h1) / wall,
        playd_threads: proctree::tree_threads(playd),
        host_threads: proctree::tree_threads(world.host.pid()),
        playd_rss_kib: proctree::tree_rss_kib(playd),
        host_rss_kib: proctree::tree_rss_kib(world.host.pid()),
        underflows: logs::count_since(&world.host, mark, logs::UNDERFLOW)?,
        running: fleet.map_or(0, |f| f.running()),
    })
}

fn print_table(table: &[(String, usize, Load)], idle: Load) {
    println!(
        "{:<20} | {:>8} {:>10} {:>8} | {:>9} {:>10} | {:>7} {:>7} | {:>9} {:>9} | {:>6} {:>7}",
        "",
        "guest PA",
        "host-playd",
        "host PA",
        "host side",
        "per stream",
        "thr pld",
        "thr hPA",
        "RSS pld",
        "RSS hPA",
        "undfl",
        "players"
    );
    for (name, n, l) in table {
        let per = if *n == 0 {
            String::new()
        } else {
            format!(
                "{:.3}%",
                (l.host_side() - idle.host_side()) * 100.0 / *n as f64
            )
        };
        println!(
            "{:<20} | {:>7.2}% {:>9.2}% {:>7.2}% | {:>8.2}% {:>10} | {:>7} {:>7} | {:>6} MiB {:>5} MiB | {:>6} {:>7}",
            name,
            l.guest * 100.0,
            l.playd * 100.0,
            l.host * 100.0,
            l.host_side() * 100.0,
            per,
            l.playd_threads,
            l.host_threads,
            l.playd_rss_kib / 1024,
            l.host_rss_kib / 1024,
            l.underflows,
            l.running
        );
    }
    for pair in table[1..].chunks(2) {
        let [(_, n, ours), (_, _, theirs)] = pair else {
            continue;
        };
        let extra = |l: &Load| l.host_side() - idle.host_side();
        println!(
            "{n:>2} guest(s): host-side CPU ours / tunnel-sink-new (minus idle) {}; guest PA {}; \
             host-playd threads {} vs {} (idle); host-playd RSS {} MiB",
            ratio(extra(ours), extra(theirs)),
            ratio(ours.guest - idle.guest, theirs.guest - idle.guest),
            ours.playd_threads,
            idle.playd_threads,
            ours.playd_rss_kib / 1024
        );
    }
    println!(
        "(host side: every host-playd process + host PulseAudio; per stream: host side minus idle, \
         divided by N; thr/RSS: at the end of the window, pld = host-playd, hPA = host \
         PulseAudio; undfl: underflows the host PulseAudio signalled in the window; players: \
         pacats still running at its end)"
    );
}
