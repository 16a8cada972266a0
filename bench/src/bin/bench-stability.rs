//! Stability: our tunnel for N minutes at a 20 ms target on an idle machine,
//! then at 40 ms with both cores loaded by busy loops. Prints underruns and
//! the latency range, reported and observed.

#![forbid(unsafe_code)]

use anyhow::Result;
use secure_tunnel_bench::{
    hog::Hog,
    impulses::Coder,
    logs,
    opts::Opts,
    pa::{PlayConfig, RecordProbe},
    probe::{measure, Phases},
    setups::load,
    stats::Summary,
    World,
};
use secure_tunnel_e2e::{find_sink, GUEST_SINK, HOST_SINK, MODULE_NAME};

const USAGE: &str = "bench-stability [--minutes M] [--hogs N] [--phases idle,loaded,idle10]

Runs module-secure-tunnel-sink for M minutes (default 10) per phase: latency_msec=20
on an idle machine (idle), then latency_msec=40 with N busy loops (default 2, one per
core; loaded); idle10 is latency_msec=10 on an idle machine. --phases picks which
(default idle,loaded). Also BENCH_MINUTES, BENCH_HOGS, BENCH_PHASES.";

/// The guest sink property our module may publish its underrun count in.
const UNDERRUN_PROPERTY: &str = "secure_tunnel.underruns";

struct Phase {
    target_ms: u32,
    hogs: usize,
}

fn main() -> Result<()> {
    let opts = Opts::from_args(USAGE)?;
    let minutes = opts.f64("minutes", 10.0)?;
    let hogs = opts.f64("hogs", 2.0)? as usize;
    let wanted = opts.text("phases", "idle,loaded");
    let mut phases = Vec::new();
    for name in wanted.split(',').map(str::trim) {
        match name {
            "idle" => phases.push(Phase {
                target_ms: 20,
                hogs: 0,
            }),
            "loaded" => phases.push(Phase {
                target_ms: 40,
                hogs,
            }),
            "idle10" => phases.push(Phase {
                target_ms: 10,
                hogs: 0,
            }),
            other => anyhow::bail!("unknown phase {other:?} (idle, loaded, idle10)\n{USAGE}"),
        }
    }
    println!(
        "stability: {minutes} min per phase; player tlength 10 ms with impulses every 300 ms; \
         load average at start: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "{:<22} {:>7} | {:>6} {:>8} | {:>15} | {:>22} | {:>22} | {:>20}",
        "phase",
        "minutes",
        "undfl",
        "prop",
        "impulses",
        "sink latency min/med/max",
        "write->heard min/med/max",
        "error mean/std/max|e|"
    );
    for phase in &phases {
        let label = format!(
            "{} ms, {}",
            phase.target_ms,
            if phase.hogs == 0 {
                "idle".to_owned()
            } else {
                format!("{} hogs", phase.hogs)
            }
        );
        eprintln!("{label} ...");
        match run(phase, minutes) {
            Ok(line) => println!("{label:<22} {line}"),
            Err(e) => println!("{label:<22} failed: {e:#}"),
        }
    }
    println!(
        "(undfl: underflows the host PulseAudio signalled for host-playd's stream; prop: change of \
         the guest sink's {UNDERRUN_PROPERTY}, n/a when the module does not publish it; impulses: \
         heard/played; sink latency: `pactl list sinks` in the guest, every second, in ms; \
         write->heard and error (heard - predicted) from the impulse probe, in ms)"
    );
    Ok(())
}

fn underrun_property(world: &World) -> Option<u64> {
    find_sink(&world.guest, GUEST_SINK)
        .ok()?
        .property(UNDERRUN_PROPERTY)?
        .parse()
        .ok()
}

fn run(phase: &Phase, minutes: f64) -> Result<String> {
    let world = World::start()?;
    load(&world.guest, MODULE_NAME, &world.ours_args(phase.target_ms))?;
    let mut recorder =
        RecordProbe::start(&world.host.server(), &format!("{HOST_SINK}.monitor"), 5.0)?;
    let _hog = Hog::start(phase.hogs)?;
    let phases = Phases {
        warmup: 5.0,
        measure: minutes * 60.0,
        tail: 1.5,
        settle: 1.5,
    };
    let config = PlayConfig {
        server: world.guest.server(),
        sink: GUEST_SINK.to_owned(),
        tlength_ms: 10.0,
        coder: Coder::every_ms(300),
    };
    let mut mark = None;
    let mut prop_start = None;
    let mut sink_ms = Vec::new();
    let m = measure(&mut recorder, config, phases, |elapsed| {
        if elapsed < phases.warmup || elapsed > phases.warmup + phases.measure {
            return Ok(());
        }
        if mark.is_none() {
            mark = Some(logs::mark(&world.host)?);
            prop_start = underrun_property(&world);
        }
        let sink = find_sink(&world.guest, GUEST_SINK)?;
        if sink.state == "RUNNING" {
            if let Some(us) = sink.latency_usec {
                sink_ms.push(us as f64 / 1e3);
            }
        }
        Ok(())
    })?;
    let underflows = match mark {
        Some(mark) => logs::count_since(&world.host, mark, logs::UNDERFLOW)?.to_string(),
        None => "?".to_owned(),
    };
    let prop = match (prop_start, underrun_property(&world)) {
        (Some(a), Some(b)) => b.saturating_sub(a).to_string(),
        _ => "n/a".to_owned(),
    };
    let (s, d, e) = (
        Summary::of(&sink_ms),
        Summary::of(&m.delays_ms()),
        Summary::of(&m.errors_ms()),
    );
    Ok(format!(
        "{:>7.1} | {:>6} {:>8} | {:>7}/{:<7} | {:>6.1} {:>6.1} {:>8.1} | {:>6.1} {:>6.1} {:>8.1} | {:>+6.2} {:>5.2} {:>7.2}",
        phases.measure / 60.0,
        underflows,
        prop,
        m.pairs.len(),
        m.played,
        s.min,
        s.median,
        s.max,
        d.min,
        d.median,
        d.max,
        e.mean,
        e.std,
        e.max_abs
    ))
}
