//! Every committed page in docs/ is what the generator renders from the
//! current command lines.
use std::path::Path;

#[test]
fn committed_man_pages_are_the_generated_ones() {
    for page in &host_playd_man::PAGES {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(page.committed);
        let committed =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", page.committed));
        let generated = String::from_utf8(page.render().expect("render")).expect("UTF-8");
        assert!(
            committed == generated,
            "{} is stale ({}'s CLI or man/{}/*.roff changed): run\n  \
             cargo run -p host-playd-man -- --write-all\nfirst difference at line {}",
            page.committed,
            page.name,
            page.name,
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
}
