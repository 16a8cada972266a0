//! The host half of `scripts/vm-test.sh`: a host PulseAudio, host-playd on
//! TCP (reached from QEMU's user network) and on the unix socket
//! vhost-device-vsock maps the guest's vsock port to, the vsock backend,
//! QEMU, and the control port `vm-guest` connects to. Plays over each path,
//! judges, and prints the verdict as its last line: `vm-test: PASS ...` or
//! `vm-test: FAIL ...` (exit status 0 or 1).
//!
//! Usage: `vm-host --kernel VMLINUZ --initrd INITRD --accel kvm|tcg
//!         --vhost-device-vsock BIN --guest VM_GUEST --dir RUN_DIR --timeout SECONDS
//!         --tolerance-ms MS`

#![forbid(unsafe_code)]

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    thread,
    time::{Duration, Instant},
};

use secure_tunnel_bench::{
    clock,
    impulses::Coder,
    pa::{Prediction, RecordProbe},
    probe::{pair, Pair},
};
use secure_tunnel_e2e::{
    host_daemon,
    signal::{locate_bit_exact, median},
    vm::{self, EchoSample},
    HostPlayd, PulseDaemon, Recorder, HOST_SINK,
};

const GUEST_CID: u32 = 3;

fn main() -> ExitCode {
    clock::now(); // the epoch
    let started = Instant::now();
    match run(started) {
        Ok(summary) => {
            println!(
                "vm-test: PASS ({summary}; {:.0} s in all)",
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("vm-test: FAIL ({e})");
            ExitCode::FAILURE
        }
    }
}

/// A child process killed on drop.
struct Killed(Child, &'static str);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Args {
    kernel: PathBuf,
    initrd: PathBuf,
    accel: String,
    vhost: PathBuf,
    guest: PathBuf,
    dir: PathBuf,
    timeout: Duration,
    /// How far the median of heard − predicted may be from zero.
    tolerance_ms: f64,
}

fn parse_args() -> Result<Args, String> {
    let mut map = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
        map.insert(k, v);
    }
    let mut take = |k: &str| map.remove(k).ok_or_else(|| format!("{k} is required"));
    Ok(Args {
        kernel: take("--kernel")?.into(),
        initrd: take("--initrd")?.into(),
        accel: take("--accel")?,
        vhost: take("--vhost-device-vsock")?.into(),
        guest: take("--guest")?.into(),
        dir: take("--dir")?.into(),
        timeout: Duration::from_secs(
            take("--timeout")?
                .parse()
                .map_err(|e| format!("--timeout: {e}"))?,
        ),
        tolerance_ms: take("--tolerance-ms")?
            .parse()
            .map_err(|e| format!("--tolerance-ms: {e}"))?,
    })
}

fn io<T>(what: &str, r: std::io::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn run(base: Instant) -> Result<String, String> {
    let args = parse_args()?;
    let deadline = base + args.timeout;
    let dir = &args.dir;
    let xchg = dir.join("xchg");
    io("creating the exchange directory", fs::create_dir_all(&xchg))?;

    let host = host_daemon().map_err(|e| e.to_string())?;
    // QEMU's user network connects from the host's loopback: that is the
    // peer host-playd sees for tcp:10.0.2.2:PORT.
    let tcp_port = io("picking a port", TcpListener::bind("127.0.0.1:0"))?
        .local_addr()
        .map_err(|e| e.to_string())?
        .port();
    let config = dir.join("host-playd.toml");
    io(
        "writing host-playd.toml",
        fs::write(
            &config,
            "[[rule]]\nname = \"vm-user-network\"\ntcp = \"127.0.0.1/32\"\nallow = true\n",
        ),
    )?;
    let uds = dir.join("vsock");
    let vsock_listen = PathBuf::from(format!("{}_{}", uds.display(), vm::VSOCK_PORT));
    let playd = HostPlayd::start_with(
        &vsock_listen,
        Some(&host),
        &[
            "--listen",
            &format!("tcp:127.0.0.1:{tcp_port}"),
            "--config",
            &config.display().to_string(),
        ],
    )
    .map_err(|e| e.to_string())?;

    let vhost_socket = dir.join("vhost-user.sock");
    let backend_log = dir.join("vhost-device-vsock.log");
    let backend = Killed(
        io(
            "starting vhost-device-vsock",
            Command::new(&args.vhost)
                .arg("--vm")
                .arg(format!(
                    "guest-cid={GUEST_CID},socket={},uds-path={}",
                    vhost_socket.display(),
                    uds.display()
                ))
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(io("backend log", fs::File::create(&backend_log))?)
                .spawn(),
        )?,
        "vhost-device-vsock",
    );
    wait_for_path(&vhost_socket, Duration::from_secs(10))
        .map_err(|e| format!("{e}\n{}", tail(&backend_log, 20)))?;

    let control = io("binding the control port", TcpListener::bind("127.0.0.1:0"))?;
    let control_port = control.local_addr().map_err(|e| e.to_string())?.port();
    let guest_log = xchg.join("guest.log");
    io(
        "writing run.sh",
        fs::write(
            xchg.join("run.sh"),
            format!(
                "export HOME=/tmp RUST_LOG=info SECURE_TUNNEL_TIMEOUT_SCALE=6\n\
                 exec {} --control 10.0.2.2:{control_port} >{} 2>&1\n",
                args.guest.display(),
                Path::new("/run/xchg/guest.log").display()
            ),
        ),
    )?;

    let console = dir.join("console.log");
    let mut qemu = Killed(spawn_qemu(&args, &xchg, &vhost_socket, &console)?, "qemu");
    let logs = || {
        format!(
            "\n--- console ---\n{}\n--- guest ---\n{}\n--- host-playd ---\n{}\n--- vhost-device-vsock ---\n{}",
            tail(&console, 30),
            tail(&guest_log, 40),
            playd.log_tail(),
            tail(&backend_log, 10)
        )
    };
    let stream = accept(&control, &mut qemu, deadline).map_err(|e| format!("{e}{}", logs()))?;
    let boot_s = base.elapsed().as_secs_f64();
    eprintln!("vm-host: guest connected {boot_s:.1} s after start");
    let mut ctl = Control::new(stream, deadline)?;
    let hello = ctl.line().map_err(|e| format!("{e}{}", logs()))?;
    if hello != "hello" {
        return Err(format!("guest said {hello:?}{}", logs()));
    }

    let mut summary = format!("accel {}, guest up in {boot_s:.1} s", args.accel);
    let mut failures = Vec::new();
    let paths = [
        ("tcp", format!("tcp:10.0.2.2:{tcp_port}")),
        ("vsock", format!("vsock:2:{}", vm::VSOCK_PORT)),
    ];
    for (name, server) in &paths {
        let dry_before = playd.log().matches("ran dry").count();
        let outcome = one_path(&mut ctl, &host, name, server, args.tolerance_ms);
        let dry = playd.log().matches("ran dry").count() - dry_before;
        match outcome
            .map(|l| format!("{l}, {dry} host underrun(s)"))
            .map_err(|e| format!("{e} ({dry} host underrun(s))"))
        {
            Ok(line) => {
                eprintln!("vm-host: {name}: {line}");
                let _ = write!(summary, "; {name}: {line}");
            }
            Err(e) => {
                eprintln!("vm-host: {name}: FAILED: {e}");
                failures.push(format!("{name}: {e}"));
            }
        }
    }
    let _ = ctl.send("quit");
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end && matches!(qemu.0.try_wait(), Ok(None)) {
        thread::sleep(Duration::from_millis(100));
    }
    let log = playd.log();
    // Kept with the run directory (the harness removes its own).
    let _ = fs::write(dir.join("host-playd.log"), &log);
    drop(backend);
    if failures.is_empty() {
        // host-playd must have seen one peer on each listener.
        if !log.contains("127.0.0.1") {
            failures.push("host-playd's log names no TCP peer 127.0.0.1".to_owned());
        }
        Ok(summary)
    } else {
        Err(format!("{}{}", failures.join("; "), logs()))
    }
}

fn spawn_qemu(args: &Args, xchg: &Path, vhost: &Path, console: &Path) -> Result<Child, String> {
    let mut cmd = Command::new("qemu-system-x86_64");
    let accel = if args.accel == "tcg" {
        "tcg,thread=multi".to_owned()
    } else {
        args.accel.clone()
    };
    cmd.args(["-accel", &accel, "-cpu", "max", "-smp", "2", "-m", "1024"])
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .args(["-object", "memory-backend-memfd,id=mem,size=1024M,share=on"])
        .args(["-machine", "q35,memory-backend=mem"])
        .arg("-kernel")
        .arg(&args.kernel)
        .arg("-initrd")
        .arg(&args.initrd)
        .args(["-append", "console=ttyS0 quiet loglevel=4 panic=-1"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .args([
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ])
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=xchg,security_model=none,multidevs=remap",
            xchg.display()
        ))
        .args([
            "-netdev",
            "user,id=net0",
            "-device",
            "virtio-net-pci,netdev=net0",
        ])
        .arg("-chardev")
        .arg(format!("socket,id=vsock0,path={}", vhost.display()))
        .args(["-device", "vhost-user-vsock-pci,chardev=vsock0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(io(
            "qemu log",
            fs::File::create(console.with_extension("qemu.log")),
        )?);
    io("starting qemu-system-x86_64", cmd.spawn())
}

fn wait_for_path(path: &Path, timeout: Duration) -> Result<(), String> {
    let end = Instant::now() + timeout;
    while !path.exists() {
        if Instant::now() > end {
            return Err(format!("{} did not appear in {timeout:?}", path.display()));
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn accept(
    listener: &TcpListener,
    qemu: &mut Killed,
    deadline: Instant,
) -> Result<TcpStream, String> {
    io("control port", listener.set_nonblocking(true))?;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                io("control stream", s.set_nonblocking(false))?;
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(format!("accepting the guest: {e}")),
        }
        if let Ok(Some(status)) = qemu.0.try_wait() {
            return Err(format!(
                "{} exited ({status}) before the guest connected",
                qemu.1
            ));
        }
        if Instant::now() > deadline {
            return Err("the guest did not connect before the deadline".to_owned());
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The control connection, every read bounded by the run's deadline.
struct Control {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    deadline: Instant,
}

impl Control {
    fn new(stream: TcpStream, deadline: Instant) -> Result<Self, String> {
        let writer = io("control stream", stream.try_clone())?;
        Ok(Self {
            reader: BufReader::new(stream),
            writer,
            deadline,
        })
    }

    fn send(&mut self, line: &str) -> Result<(), String> {
        io(
            "writing to the guest",
            self.writer.write_all(format!("{line}\n").as_bytes()),
        )
    }

    fn line(&mut self) -> Result<String, String> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("deadline passed waiting for the guest".to_owned());
        }
        io(
            "control stream",
            self.reader.get_ref().set_read_timeout(Some(left)),
        )?;
        let mut s = String::new();
        match self.reader.read_line(&mut s) {
            Ok(0) => Err("the guest closed the control connection".to_owned()),
            Ok(_) => Ok(s.trim_end().to_owned()),
            Err(e) => Err(format!("reading from the guest: {e}")),
        }
    }

    /// `rounds` pings; the guest's clock related to ours.
    fn relate(&mut self, rounds: usize) -> Result<vm::ClockRelation, String> {
        let mut samples = Vec::new();
        for _ in 0..rounds {
            let sent = clock::now() * 1e3;
            self.send(&format!("ping {sent:.4}"))?;
            let answer = self.line()?;
            let received = clock::now() * 1e3;
            let guest = match answer.split_whitespace().collect::<Vec<_>>().as_slice() {
                ["pong", _, g] => g
                    .parse::<f64>()
                    .map_err(|e| format!("pong {answer:?}: {e}"))?,
                _ => return Err(format!("expected a pong, got {answer:?}")),
            };
            samples.push(EchoSample {
                host_sent_ms: sent,
                guest_ms: guest,
                host_received_ms: received,
            });
        }
        vm::relate_clocks(&samples).ok_or_else(|| "no usable echo".to_owned())
    }
}

fn one_path(
    ctl: &mut Control,
    host: &PulseDaemon,
    name: &str,
    server: &str,
    tolerance_ms: f64,
) -> Result<String, String> {
    let before = ctl.relate(20)?;
    let mut recorder =
        Recorder::start(host, &format!("{HOST_SINK}.monitor")).map_err(|e| e.to_string())?;
    recorder
        .wait_live(Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let mut probe = RecordProbe::start(&host.server(), &format!("{HOST_SINK}.monitor"), 10.0)
        .map_err(|e| format!("starting the host recorder: {e:#}"))?;
    ctl.send(&format!("run {name} {server}"))?;
    let mut predictions = Vec::new();
    let mut flags = String::new();
    loop {
        let line = ctl.line()?;
        let (word, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        match word {
            "done" => break,
            "prediction" => predictions.push(parse_prediction(rest)?),
            "flags" => flags = rest.to_owned(),
            "error" => return Err(format!("the guest failed: {rest}")),
            _ => return Err(format!("unexpected line from the guest: {line:?}")),
        }
    }
    thread::sleep(Duration::from_millis(700));
    probe
        .check()
        .map_err(|e| format!("the host recorder: {e:#}"))?;
    let recording = recorder.stop();
    let after = ctl.relate(20)?;

    locate_bit_exact(&recording.samples(), &vm::noise(), 4800)
        .map_err(|e| format!("not bit-exact: {e}"))?;
    if !(flags.contains("NETWORK") && flags.contains("LATENCY")) {
        return Err(format!("sink flags {flags:?} lack NETWORK or LATENCY"));
    }

    // Guest times onto the host's clock.
    let offset_s = (before.offset_ms + after.offset_ms) / 2e3;
    let uncertainty = before.uncertainty_ms.max(after.uncertainty_ms);
    let drift = after.offset_ms - before.offset_ms;
    let on_host: Vec<Prediction> = predictions
        .iter()
        .map(|p| Prediction {
            written: p.written + offset_s,
            predicted: p.predicted + offset_s,
            raw_predicted: p.raw_predicted.map(|r| r + offset_s),
            ..*p
        })
        .collect();
    let heard = probe.impulses(0.5);
    let pairs = pair(&on_host, &heard, &Coder::every_ms(vm::IMPULSE_PERIOD_MS));
    let errors: Vec<f64> = pairs.iter().map(Pair::error_ms).collect();
    let reported: Vec<f64> = pairs.iter().map(|p| p.prediction.reported * 1e3).collect();
    if pairs.len() * 10 < predictions.len() * 9 || pairs.len() < 5 {
        return Err(format!(
            "only {} of {} impulses written were heard on the host",
            pairs.len(),
            predictions.len()
        ));
    }
    let error = median(&errors).ok_or("no impulse")?;
    let worst = errors.iter().fold(0.0f64, |m, e| m.max(e.abs()));
    let line = format!(
        "bit-exact; pa_stream_get_latency {:.1} ms, heard - predicted median {error:+.1} ms, \
         worst {worst:.1} ms over {} impulses; clocks {:+.3} s apart ±{uncertainty:.2} ms, \
         drift {drift:+.2} ms",
        median(&reported).unwrap_or(0.0),
        pairs.len(),
        offset_s
    );
    if error.abs() > tolerance_ms {
        return Err(format!(
            "latency off by more than {tolerance_ms} ms: {line}"
        ));
    }
    Ok(line)
}

fn parse_prediction(rest: &str) -> Result<Prediction, String> {
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| -> Result<f64, String> {
        f.get(i)
            .and_then(|s| s.parse::<f64>().ok())
            .ok_or_else(|| format!("bad prediction line {rest:?}"))
    };
    Ok(Prediction {
        index: f
            .first()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad prediction line {rest:?}"))?,
        written: num(1)? / 1e3,
        reported: num(2)? / 1e3,
        predicted: num(3)? / 1e3,
        raw_predicted: None,
    })
}
