//! Latency accuracy: how far `pa_stream_get_latency` in the guest is from
//! the truth, for direct playback (the calibration), our tunnel,
//! module-tunnel-sink-new and pipe-sink + simple-protocol-tcp from a
//! PulseAudio guest, and secure-tunnel-pipewire and PipeWire's
//! module-pulse-tunnel from a PipeWire guest (the player on pipewire-pulse),
//! all in one run on one host PulseAudio.

#![forbid(unsafe_code)]

use std::{thread, time::Duration};

use anyhow::{Context as _, Result};
use secure_tunnel_bench::{
    impulses::Coder,
    logs,
    opts::Opts,
    pa::{PlayConfig, RecordProbe},
    probe::{measure, Measurement, Phases},
    stats::{ratio, Summary},
    Row, World,
};
use secure_tunnel_e2e::HOST_SINK;

const USAGE: &str = "latency-accuracy [--measure S] [--warmup S] [--period-ms MS] [--tlength-ms MS] [--fragsize-ms MS]
              [--rows direct,ours,tunnel-new,pipe,pw-ours,pw-tunnel] [--targets 20,200] [--dump DIR]

Plays coded impulses through each path at latency targets 20 and 200 ms and
prints, per path, heard - predicted relative to direct playback on the host.
--dump writes every paired impulse of every row to DIR/<target>-<row>.csv.
Options may also be given as BENCH_MEASURE, BENCH_WARMUP, ... in the environment.";

struct RowResult {
    row: Row,
    outcome: Result<Measurement>,
    underflows: usize,
}

fn main() -> Result<()> {
    let opts = Opts::from_args(USAGE)?;
    let phases = Phases {
        warmup: opts.f64("warmup", 3.0)?,
        measure: opts.f64("measure", 20.0)?,
        tail: 1.5,
        settle: 1.5,
    };
    let period_ms = opts.f64("period-ms", 300.0)? as u64;
    let tlength_ms = opts.f64("tlength-ms", 10.0)?;
    let fragsize_ms = opts.f64("fragsize-ms", 5.0)?;
    let coder = Coder::every_ms(period_ms);
    let rows = opts.select(
        "rows",
        "direct,ours,tunnel-new,pipe,pw-ours,pw-tunnel",
        &Row::ALL,
        Row::key,
    );
    let targets: Vec<u32> = opts.list("targets", "20,200")?;

    let dump = opts.text("dump", "");
    let mut world = World::start()?;
    if rows.iter().any(|r| r.is_pipewire()) {
        world = world.with_pipewire()?;
    }
    let mut recorder = RecordProbe::start(
        &world.host.server(),
        &format!("{HOST_SINK}.monitor"),
        fragsize_ms,
    )?;
    println!(
        "latency accuracy: impulses every {period_ms} ms, {:.0} s counted per row after {:.0} s warm-up; \
         player tlength {tlength_ms} ms (ADJUST_LATENCY|INTERPOLATE_TIMING|AUTO_TIMING_UPDATE); \
         recorder fragsize {fragsize_ms} ms on {HOST_SINK}.monitor",
        phases.measure, phases.warmup
    );
    for &target in &targets {
        let mut results = Vec::new();
        for &row in &rows {
            eprintln!("target {target} ms: {} ...", row.name());
            results.push(run_row(
                &world,
                &mut recorder,
                row,
                target,
                tlength_ms,
                coder,
                phases,
            ));
        }
        print_table(target, &results);
        if !dump.is_empty() {
            write_dump(&dump, target, &results)?;
        }
    }
    Ok(())
}

fn run_row(
    world: &World,
    recorder: &mut RecordProbe,
    row: Row,
    target: u32,
    tlength_ms: f64,
    coder: Coder,
    phases: Phases,
) -> RowResult {
    let mut underflows = 0;
    let outcome = (|| {
        let loaded = row.load(world, target)?;
        thread::sleep(Duration::from_millis(300));
        let mark = logs::mark(&world.host)?;
        let config = PlayConfig {
            server: loaded.server.clone(),
            sink: loaded.sink.clone(),
            tlength_ms,
            coder,
        };
        let m = measure(recorder, config, phases, |_| Ok(()));
        underflows = logs::count_since(&world.host, mark, logs::UNDERFLOW)?;
        loaded.unload(world)?;
        m
    })();
    RowResult {
        row,
        outcome,
        underflows,
    }
}

fn print_table(target: u32, results: &[RowResult]) {
    println!();
    println!(
        "== target {target} ms (our latency_msec / --latency-msec = {target}; tunnel-sink-new, \
         pipe-sink and module-pulse-tunnel have no latency argument here and run as they are; \
         the PipeWire rows' player is on pipewire-pulse) =="
    );
    let calibration = results
        .iter()
        .find(|r| r.row == Row::Direct)
        .and_then(|r| r.outcome.as_ref().ok())
        .map(|m| Summary::of(&m.errors_ms()));
    let offset = calibration.map_or(0.0, |c| c.mean);
    if let Some(c) = calibration {
        println!(
            "calibration (direct playback): raw error mean {:+.2} ms, std {:.2} ms; \
             its mean is subtracted from every row below",
            c.mean, c.std
        );
    }
    println!(
        "{:<32} {:>6} {:>6} {:>8} | {:>9} {:>7} {:>8} {:>9} | {:>9} {:>9} {:>5}",
        "row (errors in ms)",
        "played",
        "paired",
        "detected",
        "mean err",
        "std",
        "max|err|",
        "mean|err|",
        "reported",
        "heard",
        "undfl"
    );
    let mut summaries = Vec::new();
    for r in results {
        match &r.outcome {
            Ok(m) => {
                let rel: Vec<f64> = m.errors_ms().iter().map(|e| e - offset).collect();
                let s = Summary::of(&rel);
                println!(
                    "{:<32} {:>6} {:>6} {:>8} | {:>+9.2} {:>7.2} {:>8.2} {:>9.2} | {:>9.1} {:>9.1} {:>5}",
                    r.row.name(),
                    m.played,
                    m.pairs.len(),
                    m.detected,
                    s.mean,
                    s.std,
                    s.max_abs,
                    s.mean_abs,
                    Summary::of(&m.reported_ms()).median,
                    Summary::of(&m.delays_ms()).median,
                    r.underflows
                );
                summaries.push((r.row, s));
            }
            Err(e) => println!("{:<32} failed: {e:#}", r.row.name()),
        }
    }
    println!(
        "(reported: median pa_stream_get_latency after the write; heard: median write-to-heard \
         delay; undfl: underflows the host PulseAudio signalled during the row)"
    );
    let find = |row| summaries.iter().find(|(r, _)| *r == row).map(|(_, s)| *s);
    if let (Some(ours), Some(theirs)) = (find(Row::Ours), find(Row::TunnelNew)) {
        println!(
            "ratio ours / tunnel-sink-new: std {}, mean|err| {}, max|err| {}",
            ratio(ours.std, theirs.std),
            ratio(ours.mean_abs, theirs.mean_abs),
            ratio(ours.max_abs, theirs.max_abs)
        );
    }
    if let (Some(ours), Some(theirs)) = (find(Row::PwOurs), find(Row::PwTunnel)) {
        println!(
            "ratio secure-tunnel-pipewire / module-pulse-tunnel: std {}, mean|err| {}, max|err| {}",
            ratio(ours.std, theirs.std),
            ratio(ours.mean_abs, theirs.mean_abs),
            ratio(ours.max_abs, theirs.max_abs)
        );
    }
}

fn write_dump(dir: &str, target: u32, results: &[RowResult]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
    for r in results {
        let Ok(m) = &r.outcome else { continue };
        let path = format!("{dir}/{target}-{}.csv", r.row.key());
        let mut text = String::from("index,written_s,reported_ms,predicted_s,heard_s,error_ms\n");
        for p in &m.pairs {
            let q = p.prediction;
            text.push_str(&format!(
                "{},{:.6},{:.3},{:.6},{:.6},{:.3}\n",
                q.index,
                q.written - m.window.0,
                q.reported * 1e3,
                q.predicted - m.window.0,
                p.heard - m.window.0,
                p.error_ms()
            ));
        }
        std::fs::write(&path, text).with_context(|| format!("writing {path}"))?;
    }
    Ok(())
}
