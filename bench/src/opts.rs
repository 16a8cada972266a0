//! The few options a benchmark takes: `--name value` on the command line,
//! else the environment variable `BENCH_NAME`, else a default.

use anyhow::{bail, Context as _, Result};

/// Parsed `--name value` pairs.
#[derive(Debug, Default)]
pub struct Opts {
    pairs: Vec<(String, String)>,
}

impl Opts {
    /// Reads the process arguments; `--help` prints `usage` and exits.
    pub fn from_args(usage: &str) -> Result<Self> {
        let mut pairs = Vec::new();
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            if a == "--help" || a == "-h" {
                println!("{usage}");
                std::process::exit(0);
            }
            let Some(name) = a.strip_prefix("--") else {
                bail!("unexpected argument {a:?}\n{usage}");
            };
            let (name, value) = match name.split_once('=') {
                Some((n, v)) => (n.to_owned(), v.to_owned()),
                None => {
                    let v = args
                        .next()
                        .with_context(|| format!("--{name} needs a value\n{usage}"))?;
                    (name.to_owned(), v)
                }
            };
            pairs.push((name, value));
        }
        Ok(Self { pairs })
    }

    /// `--name` as text, else `BENCH_NAME`, else `default`.
    pub fn text(&self, name: &str, default: &str) -> String {
        let env = format!("BENCH_{}", name.to_uppercase().replace('-', "_"));
        self.pairs
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(&env).ok())
            .unwrap_or_else(|| default.to_owned())
    }

    /// `--name` as a number, else `BENCH_NAME` (upper case, `-` as `_`),
    /// else `default`.
    pub fn f64(&self, name: &str, default: f64) -> Result<f64> {
        let env = format!("BENCH_{}", name.to_uppercase().replace('-', "_"));
        match self.text(name, "") {
            t if t.is_empty() => Ok(default),
            t => t
                .parse()
                .with_context(|| format!("--{name} (or {env}) is not a number: {t:?}")),
        }
    }

    /// `--name` as a comma-separated list of numbers (or anything that
    /// parses), else `BENCH_NAME`, else `default`.
    pub fn list<T: std::str::FromStr>(&self, name: &str, default: &str) -> Result<Vec<T>> {
        self.text(name, default)
            .split(',')
            .map(|t| {
                t.trim()
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--{name}: {t:?} is not a number"))
            })
            .collect()
    }

    /// `--name` as a comma-separated selection of `all`'s items by `key`,
    /// else `BENCH_NAME`, else `default`.
    pub fn select<T: Copy>(
        &self,
        name: &str,
        default: &str,
        all: &[T],
        key: fn(T) -> &'static str,
    ) -> Vec<T> {
        let wanted = self.text(name, default);
        all.iter()
            .copied()
            .filter(|r| wanted.split(',').any(|w| w.trim() == key(*r)))
            .collect()
    }
}
