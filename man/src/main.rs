//! `host-playd-man` prints host-playd(8); `--write PATH` writes it there.
use std::io::Write;

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let page = host_playd_man::render().context("rendering host-playd(8)")?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => std::io::stdout()
            .write_all(&page)
            .context("writing to stdout")?,
        [flag, path] if flag == "--write" => {
            std::fs::write(path, &page).with_context(|| format!("writing {path}"))?
        }
        _ => bail!("usage: host-playd-man [--write PATH]"),
    }
    Ok(())
}
