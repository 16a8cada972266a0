//! Drift, for real: host-playd's null backend with its clock 1000 ppm fast,
//! then 1000 ppm slow; the guest module streams all along. If the guest
//! follows the host's clock, the latency it reports stays flat.

#![forbid(unsafe_code)]

use std::{thread, time::Duration};

use anyhow::{Context as _, Result};
use secure_tunnel_bench::{
    clock,
    impulses::Coder,
    opts::Opts,
    pa::{PlayConfig, PlayProbe},
    setups::load,
    stats::{slope, Summary},
};
use secure_tunnel_e2e::{find_sink, guest_daemon, HostPlayd, TestDir, GUEST_SINK, MODULE_NAME};

const USAGE: &str = "bench-drift [--minutes M] [--latency-ms L] [--skews 1000,-1000]

Streams into module-secure-tunnel-sink for M minutes (default 10) per skew, host-playd
on its null backend with --null-skew-ppm SKEW, latency_msec=L (default 60); samples the
guest sink's latency every second. Also BENCH_MINUTES, BENCH_LATENCY_MS, BENCH_SKEWS.";

const WARMUP_S: f64 = 10.0;
const UNDERRUN_PROPERTY: &str = "secure_tunnel.underruns";

fn main() -> Result<()> {
    let opts = Opts::from_args(USAGE)?;
    let minutes = opts.f64("minutes", 10.0)?;
    let latency_ms = opts.f64("latency-ms", 60.0)? as u32;
    let skews: Vec<i32> = opts.list("skews", "1000,-1000")?;
    println!(
        "drift: {minutes} min per skew after {WARMUP_S} s warm-up, latency_msec={latency_ms}, \
         host-playd --backend null; load average at start: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "{:>9} | {:>8} {:>8} {:>8} {:>8} | {:>13} | {:>11} | {:>7}",
        "skew ppm", "min", "median", "max", "max-min", "slope ms/min", "samples", "underruns"
    );
    for skew in skews {
        eprintln!("skew {skew:+} ppm ...");
        match run(skew, minutes, latency_ms) {
            Ok(line) => println!("{skew:>+9} | {line}"),
            Err(e) => println!("{skew:>+9} | failed: {e:#}"),
        }
    }
    println!(
        "(guest sink latency from `pactl list sinks`, in ms; underruns: change of the guest sink's \
         {UNDERRUN_PROPERTY}, n/a when the module does not publish it; the null backend logs none)"
    );
    Ok(())
}

fn run(skew: i32, minutes: f64, latency_ms: u32) -> Result<String> {
    let dir = TestDir::new("drift").context("creating a scratch directory")?;
    let socket = dir.path().join("playd.sock");
    let skew_arg = skew.to_string();
    let _playd = HostPlayd::start_with(
        &socket,
        None,
        &["--backend", "null", "--null-skew-ppm", &skew_arg],
    )
    .context("starting host-playd")?;
    let guest = guest_daemon().context("starting the guest PulseAudio")?;
    let args = format!(
        "server=unix:{} sink_name={GUEST_SINK} rate=48000 channels=2 format=s16le latency_msec={latency_ms}",
        socket.display()
    );
    load(&guest, MODULE_NAME, &args)?;
    let player = PlayProbe::start(PlayConfig {
        server: guest.server(),
        sink: GUEST_SINK.to_owned(),
        tlength_ms: 10.0,
        coder: Coder::every_ms(300),
    })?;
    let start = clock::now();
    let end = start + WARMUP_S + minutes * 60.0;
    let mut samples = Vec::new();
    let property = |guest: &_| -> Option<u64> {
        find_sink(guest, GUEST_SINK)
            .ok()?
            .property(UNDERRUN_PROPERTY)?
            .parse()
            .ok()
    };
    let mut prop_start = None;
    let mut next = start + 1.0;
    while clock::now() < end {
        thread::sleep(Duration::from_secs_f64((next - clock::now()).max(0.0)));
        next += 1.0;
        let t = clock::now() - start;
        if t < WARMUP_S {
            continue;
        }
        if prop_start.is_none() {
            prop_start = Some(property(&guest));
        }
        let sink = find_sink(&guest, GUEST_SINK)?;
        if let (true, Some(us)) = (sink.state == "RUNNING", sink.latency_usec) {
            samples.push((t / 60.0, us as f64 / 1e3));
        }
    }
    player.stop()?;
    let underruns = match (prop_start.flatten(), property(&guest)) {
        (Some(a), Some(b)) => b.saturating_sub(a).to_string(),
        _ => "n/a".to_owned(),
    };
    let values: Vec<f64> = samples.iter().map(|s| s.1).collect();
    let s = Summary::of(&values);
    Ok(format!(
        "{:>8.2} {:>8.2} {:>8.2} {:>8.2} | {:>+13.3} | {:>11} | {:>7}",
        s.min,
        s.median,
        s.max,
        s.max - s.min,
        slope(&samples),
        samples.len(),
        underruns
    ))
}
