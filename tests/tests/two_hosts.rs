//! Guest and host in separate network namespaces, over TCP through a veth
//! pair, as a real deployment would run them: host-playd listens on the host
//! namespace's address, the guest PulseAudio (inside the guest namespace)
//! loads the module with `server=tcp:...`, and a signal crosses bit-exact.
//!
//! The host PulseAudio stays in the test's namespace: host-playd reaches it
//! through its unix socket, which is not bound to a network namespace.
//!
//! This test changes PATH for the whole process (so the harness starts the
//! guest's `pulseaudio` through `ip netns exec`), hence its own test binary
//! with a single test.

use std::time::Duration;

use secure_tunnel_e2e::{
    find_sink, guest_daemon, host_daemon, host_playd,
    netns::{net_ns_of, NetnsPair, GUEST_ADDR, HOST_ADDR},
    signal, Player, Recorder, TestDir, GUEST_SINK, HOST_SINK, MODULE_NAME,
};

const PORT: u16 = 47_130;

#[test]
fn guest_and_host_in_separate_network_namespaces_over_tcp() {
    let pair = NetnsPair::create().unwrap_or_else(|why| {
        panic!("cannot create network namespaces (needs root and iproute2): {why}")
    });
    let host = host_daemon().expect("host PulseAudio");
    let dir = TestDir::new("twohosts").expect("test dir");
    let ready = dir.path().join("playd.sock");
    let listen = format!("tcp:{HOST_ADDR}:{PORT}");
    // TCP peers are denied by default (issue 4): allow the guest's address.
    let config = dir.path().join("host-playd.toml");
    std::fs::write(
        &config,
        format!("[[rule]]\nname = \"guest-netns\"\ntcp = \"{GUEST_ADDR}/32\"\nallow = true\n"),
    )
    .expect("writing the host-playd config");
    let mut cmd = NetnsPair::command(&pair.host, &host_playd().expect("host-playd binary"));
    cmd.args(["--listen", &listen])
        .arg("--config")
        .arg(&config)
        .arg("--listen")
        .arg(format!("unix:{}", ready.display()))
        .args(["--pulse-server", &host.server(), "--sink", HOST_SINK])
        .env("HOME", host.dir().join("home"))
        .env("XDG_RUNTIME_DIR", host.dir().join("runtime"))
        .env("PULSE_RUNTIME_PATH", host.dir().join("runtime"))
        .env_remove("PULSE_SERVER")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut playd = NetnsPair::spawn("host-playd (host netns)", &mut cmd).expect("host-playd");
    let start = std::time::Instant::now();
    while !ready.exists() {
        assert!(playd.is_alive(), "host-playd exited in the host namespace");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "host-playd never got ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The harness runs `pulseaudio` from PATH: put a wrapper first that
    // enters the guest namespace.
    let real = which("pulseaudio");
    let wrappers = dir.subdir("bin").expect("wrapper dir");
    let wrapper = wrappers.join("pulseaudio");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec ip netns exec {} {real} \"$@\"\n",
            pair.guest
        ),
    )
    .expect("writing the wrapper");
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let old_path = std::env::var("PATH").unwrap_or_default();
    std::env::set_var("PATH", format!("{}:{old_path}", wrappers.display()));
    let guest = guest_daemon();
    std::env::set_var("PATH", old_path);
    let guest = guest.expect("guest PulseAudio in the guest namespace");

    let own = net_ns_of(std::process::id());
    let guest_ns = net_ns_of(guest.pid());
    let host_ns = net_ns_of(playd.pid());
    assert!(
        guest_ns != own && host_ns != own && guest_ns != host_ns,
        "namespaces not separate: test {own:?}, guest {guest_ns:?}, host-playd {host_ns:?}"
    );

    guest
        .load_module(
            MODULE_NAME,
            &format!(
                "server=tcp:{HOST_ADDR}:{PORT} sink_name={GUEST_SINK} \
                 rate=48000 channels=2 format=s16le latency_msec=60"
            ),
        )
        .unwrap_or_else(|e| panic!("load-module: {e}\n{}", guest.log_tail()));
    find_sink(&guest, GUEST_SINK).expect("tunnel sink");

    let mut rec = Recorder::start(&host, &format!("{HOST_SINK}.monitor")).expect("parec");
    rec.wait_live(Duration::from_secs(5))
        .expect("host monitor live");
    let played = signal::pseudo_random(0x0002_4057, 3 * 48_000);
    Player::play(
        &guest,
        GUEST_SINK,
        signal::to_bytes(&played),
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", guest.log_tail()));
    let recording = rec
        .wait_until(Duration::from_secs(5), "the signal over TCP", |r| {
            signal::locate_bit_exact(&r.samples(), &played, 256).is_ok()
        })
        .unwrap_or_else(|e| {
            let why = signal::locate_bit_exact(&rec.snapshot().samples(), &played, 256);
            panic!(
                "{e}\n{}\n{}",
                why.err().unwrap_or_default(),
                guest.log_tail()
            )
        });
    let offset = signal::locate_bit_exact(&recording.samples(), &played, 256).expect("located");
    println!(
        "two hosts: {} frames bit-exact over tcp:{HOST_ADDR}:{PORT} between namespaces \
         (guest {guest_ns:?}, host {host_ns:?}), at host frame {}",
        played.len() / 2,
        offset / 2
    );
    assert!(playd.is_alive(), "host-playd exited");
    drop(guest);
    drop(playd);
    drop(pair);
}

fn which(program: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .expect("sh");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(!path.is_empty(), "{program} not found in PATH");
    path
}
