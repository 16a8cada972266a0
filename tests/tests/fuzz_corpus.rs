//! Replays every committed fuzz input (`fuzz/corpus/<target>/*`) through the
//! very harnesses the fuzzer runs (`fuzz/src/lib.rs`, included below), so a
//! crash the fuzzer once found stays fixed and CI needs no nightly compiler.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::path::{Path, PathBuf};

#[allow(dead_code, missing_debug_implementations)]
#[path = "../../fuzz/src/lib.rs"]
mod harness;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no corpus", dir.display());
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).expect("reading a corpus file");
            (p, bytes)
        })
        .collect()
}

fn replay(target: &str, run: fn(&[u8])) {
    let inputs = corpus(target);
    for (path, bytes) in &inputs {
        if let Err(panic) = std::panic::catch_unwind(|| run(bytes)) {
            std::panic::resume_unwind(Box::new(format!(
                "{target}: {} failed: {panic:?}",
                path.display()
            )));
        }
    }
    println!("{target}: {} corpus inputs replayed", inputs.len());
}

#[test]
fn frame_reader_corpus() {
    replay("frame_reader", harness::frame_reader);
}

#[test]
fn message_decode_corpus() {
    replay("message_decode", harness::message_decode);
}

#[test]
fn host_session_corpus() {
    replay("host_session", harness::host_session);
}

#[test]
fn module_engine_corpus() {
    replay("module_engine", harness::module_engine);
}

#[test]
fn capture_host_session_corpus() {
    replay("capture_host_session", harness::capture_host_session);
}

#[test]
fn capture_guest_corpus() {
    replay("capture_guest", harness::capture_guest);
}
