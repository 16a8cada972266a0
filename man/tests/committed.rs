//! docs/host-playd.8 is what the generator renders from the current CLI.
use std::path::Path;

#[test]
fn committed_man_page_is_the_generated_one() {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/host-playd.8");
    let committed = std::fs::read_to_string(&committed).expect("docs/host-playd.8");
    let generated = String::from_utf8(host_playd_man::render().expect("render")).expect("UTF-8");
    assert!(
        committed == generated,
        "docs/host-playd.8 is stale (host-playd's CLI or man/*.8 changed): run\n  \
         cargo run -p host-playd-man -- --write docs/host-playd.8\nfirst difference at line {}",
        committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or(
                committed.lines().count().min(generated.lines().count()),
                |i| i
            )
            + 1
    );
}
