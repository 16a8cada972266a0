//! `host-playd-man` prints host-playd(8); `--page NAME` another page
//! (`secure-tunnel-pipewire`); `--write PATH` writes the page there;
//! `--write-all` writes every page where it is committed (run from the
//! workspace root).
use std::io::Write;

use anyhow::{bail, Context, Result};
use host_playd_man::{page, Page, PAGES};

const USAGE: &str = "usage: host-playd-man [--page NAME] [--write PATH] | --write-all";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut chosen: &Page = &PAGES[0];
    let mut write: Option<String> = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--page" => {
                let name = args.next().context(USAGE)?;
                chosen = page(&name).with_context(|| format!("no page {name:?}"))?;
            }
            "--write" => write = Some(args.next().context(USAGE)?),
            "--write-all" => {
                for p in &PAGES {
                    let text = p
                        .render()
                        .with_context(|| format!("rendering {}", p.name))?;
                    std::fs::write(p.committed, &text)
                        .with_context(|| format!("writing {}", p.committed))?;
                }
                return Ok(());
            }
            _ => bail!(USAGE),
        }
    }
    let text = chosen
        .render()
        .with_context(|| format!("rendering {}({})", chosen.name, chosen.section))?;
    match write {
        None => std::io::stdout()
            .write_all(&text)
            .context("writing to stdout")?,
        Some(path) => std::fs::write(&path, &text).with_context(|| format!("writing {path}"))?,
    }
    Ok(())
}
