//! Holds N connections to host-playd open without a word, re-opening each
//! one host-playd closes (at most every 100 ms), for S seconds: a peer the
//! policy denies, trying to keep every slot. The hostile tests run it under
//! another uid with setpriv(1), which a test thread cannot do for itself.
//!
//! Usage: hold-peers unix:PATH|tcp:ADDR:PORT N SECONDS
//! Prints "holding N" once the first N connects were made.

#![forbid(unsafe_code)]

use std::{
    thread,
    time::{Duration, Instant},
};

use secure_tunnel_e2e::wire::{Conn, Target};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [target, n, secs] = args.as_slice() else {
        eprintln!("usage: hold-peers unix:PATH|tcp:ADDR:PORT N SECONDS");
        std::process::exit(2);
    };
    let target: Target = target.parse().unwrap_or_else(|e: String| fail(&e));
    let n: usize = n.parse().unwrap_or_else(|_| fail("N is not a number"));
    let secs: f64 = secs
        .parse()
        .unwrap_or_else(|_| fail("SECONDS is not a number"));
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut conns: Vec<Option<Conn>> = (0..n).map(|_| target.connect().ok()).collect();
    println!("holding {}", conns.iter().flatten().count());
    let mut reconnects = 0u64;
    while Instant::now() < end {
        thread::sleep(Duration::from_millis(100));
        for c in &mut conns {
            let closed = c.as_mut().is_none_or(Conn::peer_closed);
            if closed {
                *c = target.connect().ok();
                reconnects += 1;
            }
        }
    }
    println!("reconnected {reconnects} times");
}

fn fail(why: &str) -> ! {
    eprintln!("hold-peers: {why}");
    std::process::exit(2)
}
