//! Capture latency accuracy: the playback benchmark in reverse. Coded
//! impulses are played into the host's sink; its monitor is the "room
//! microphone". A recorder on the host's monitor itself is the calibration;
//! each row records the same impulses in the guest, through our
//! `module-secure-tunnel-source` (host-playd recording the monitor) or
//! PulseAudio's `module-tunnel-source-new`. Every recorder dates each
//! impulse by its own stream's reported latency (arrival − latency = when
//! the microphone took it), so a row's error for one impulse is its date
//! minus the calibration's date of the same impulse. Rows run one after the
//! other against one host PulseAudio, one host player throughout.

#![forbid(unsafe_code)]

use std::{thread, time::Duration};

use anyhow::{Context as _, Result};
use secure_tunnel_bench::{
    impulses::{Coder, Impulse},
    opts::Opts,
    pa::{PlayConfig, PlayProbe, RecordProbe},
    setups::{load, unload},
    stats::{ratio, Summary},
    World,
};
use secure_tunnel_e2e::{HOST_SINK, SOURCE_MODULE_NAME};

const USAGE: &str = "bench-capture [--measure S] [--warmup S] [--period-ms MS] [--fragsize-ms MS]
              [--targets 20,40,200] [--rows ours,tunnel-new]

Records coded impulses from the host's sink monitor in the guest, through
module-secure-tunnel-source (latency_msec = each target) and
module-tunnel-source-new, and prints each row's capture-time error against a
recorder on the host itself. Options may also be given as BENCH_MEASURE, ...";

const MONITOR_SMOOTHING_S: f64 = 0.5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Row {
    Ours,
    TunnelNew,
}

impl Row {
    fn key(self) -> &'static str {
        match self {
            Row::Ours => "ours",
            Row::TunnelNew => "tunnel-new",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Row::Ours => "module-secure-tunnel-source",
            Row::TunnelNew => "module-tunnel-source-new",
        }
    }

    /// Loads the row's source in the guest; (module index, source name).
    fn load(self, world: &World, target: u32) -> Result<(u32, String)> {
        let (module, source, args) = match self {
            Row::Ours => (
                SOURCE_MODULE_NAME,
                "secure_tunnel_mic",
                format!(
                    "server=unix:{} source_name=secure_tunnel_mic format=s16le rate=48000 \
                     channels=2 latency_msec={target}",
                    world.socket.display()
                ),
            ),
            Row::TunnelNew => (
                "module-tunnel-source-new",
                "patnew_mic",
                format!(
                    "server={} source={HOST_SINK}.monitor source_name=patnew_mic format=s16le \
                     rate=48000 channels=2",
                    world.host.server()
                ),
            ),
        };
        Ok((load(&world.guest, module, &args)?, source.to_owned()))
    }
}

/// Row error per impulse: its date minus the calibration's date of the same
/// impulse (same code, nearest in time), in ms.
fn errors_ms(row: &[Impulse], calibration: &[Impulse], period_s: f64) -> Vec<f64> {
    let half_cycle = period_s * Coder::CODES as f64 / 2.0;
    row.iter()
        .filter_map(|r| {
            let code = Coder::code(r.amplitude)?;
            calibration
                .iter()
                .filter(|c| Coder::code(c.amplitude) == Some(code))
                .map(|c| r.heard - c.heard)
                .filter(|d| d.abs() < half_cycle)
                .min_by(|a, b| a.abs().total_cmp(&b.abs()))
                .map(|d| d * 1e3)
        })
        .collect()
}

fn main() -> Result<()> {
    let opts = Opts::from_args(USAGE)?;
    let warmup = opts.f64("warmup", 3.0)?;
    let measure = opts.f64("measure", 20.0)?;
    let period_ms = opts.f64("period-ms", 300.0)? as u64;
    let fragsize_ms = opts.f64("fragsize-ms", 5.0)?;
    let rows = opts.select(
        "rows",
        "ours,tunnel-new",
        &[Row::Ours, Row::TunnelNew],
        Row::key,
    );
    let targets: Vec<u32> = opts.list("targets", "20,40,200")?;

    let config = std::env::temp_dir().join(format!("bench-capture-{}.toml", std::process::id()));
    std::fs::write(&config, "[defaults]\ncapture = \"allow\"\n")
        .with_context(|| format!("writing {}", config.display()))?;
    let monitor = format!("{HOST_SINK}.monitor");
    let config_arg = config.display().to_string();
    let world = World::start_playd(&[
        "--capture-source",
        &monitor,
        "--capture-allow-monitor",
        "--config",
        &config_arg,
    ])?;
    let _ = std::fs::remove_file(&config);
    let coder = Coder::every_ms(period_ms);
    let player = PlayProbe::start(PlayConfig {
        server: world.host.server(),
        sink: HOST_SINK.to_owned(),
        tlength_ms: 20.0,
        coder,
    })?;
    let mut calibration = RecordProbe::start(&world.host.server(), &monitor, fragsize_ms)?;
    println!(
        "capture latency accuracy: impulses every {period_ms} ms into {HOST_SINK}; recorders \
         (fragsize {fragsize_ms} ms, ADJUST_LATENCY) on {monitor} (calibration) and in the guest; \
         {measure:.0} s per row after {warmup:.0} s warm-up"
    );
    for &target in &targets {
        println!();
        println!(
            "== target {target} ms (our latency_msec={target}; module-tunnel-source-new has no \
             latency argument in PulseAudio 16.1 and runs as it is) =="
        );
        println!(
            "{:<30} {:>7} | {:>9} {:>7} {:>8} {:>9}",
            "row (errors in ms)", "paired", "mean err", "std", "max|err|", "mean|err|"
        );
        let mut summaries = Vec::new();
        for &row in &rows {
            eprintln!("target {target} ms: {} ...", row.name());
            let outcome = (|| -> Result<Summary> {
                let (index, source) = row.load(&world, target)?;
                thread::sleep(Duration::from_secs_f64(warmup));
                let recorder = RecordProbe::start(&world.guest.server(), &source, fragsize_ms)?;
                thread::sleep(Duration::from_secs_f64(warmup + measure));
                calibration.check()?;
                let errors = errors_ms(
                    &recorder.impulses(MONITOR_SMOOTHING_S),
                    &calibration.impulses(MONITOR_SMOOTHING_S),
                    period_ms as f64 / 1e3,
                );
                drop(recorder);
                unload(&world.guest, index)?;
                // The first impulses meet a source still starting.
                let skip = (warmup * 1e3 / period_ms as f64) as usize;
                Ok(Summary::of(errors.get(skip..).unwrap_or(&[])))
            })();
            match outcome {
                Ok(s) => {
                    println!(
                        "{:<30} {:>7} | {:>+9.2} {:>7.2} {:>8.2} {:>9.2}",
                        row.name(),
                        s.n,
                        s.mean,
                        s.std,
                        s.max_abs,
                        s.mean_abs
                    );
                    summaries.push((row, s));
                }
                Err(e) => println!("{:<30} failed: {e:#}", row.name()),
            }
        }
        let find = |row| summaries.iter().find(|(r, _)| *r == row).map(|(_, s)| *s);
        if let (Some(ours), Some(theirs)) = (find(Row::Ours), find(Row::TunnelNew)) {
            println!(
                "ratio ours / tunnel-source-new: std {}, mean|err| {}, max|err| {}",
                ratio(ours.std, theirs.std),
                ratio(ours.mean_abs, theirs.mean_abs),
                ratio(ours.max_abs, theirs.max_abs)
            );
        }
    }
    player.stop()?;
    Ok(())
}
