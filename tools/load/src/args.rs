//! Command-line flags: `--name value` and bare switches, checked against
//! the list each mode accepts, so a mistyped flag is named instead of
//! silently ignored.

use std::io::IsTerminal;
use std::str::FromStr;

pub struct Args {
    pairs: Vec<(String, String)>,
}

/// Prints one line naming the problem and exits with status 2.
pub fn die(msg: &str) -> ! {
    eprintln!("corepin-load: {msg}");
    std::process::exit(2)
}

impl Args {
    /// `spec` lists the flags (without `--`); each takes a value.
    pub fn parse(mode: &str, args: &[String], spec: &[&str]) -> Args {
        let mut pairs = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let Some(name) = a.strip_prefix("--") else {
                die(&format!("{mode}: unexpected argument '{a}'"));
            };
            if spec.contains(&name) {
                let Some(v) = it.next() else {
                    die(&format!("{mode}: --{name} needs a value"));
                };
                pairs.push((name.to_string(), v.clone()));
            } else {
                die(&format!(
                    "{mode}: unknown flag --{name} (see corepin-load --help)"
                ));
            }
        }
        Args { pairs }
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value given for a repeatable flag, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The flag's value parsed as `T`, if given; a value that does not
    /// parse is fatal.
    pub fn opt<T: FromStr>(&self, name: &str) -> Option<T> {
        self.value(name).map(|v| {
            v.parse()
                .unwrap_or_else(|_| die(&format!("--{name}: invalid value '{v}'")))
        })
    }

    pub fn get<T: FromStr>(&self, name: &str, default: T) -> T {
        self.opt(name).unwrap_or(default)
    }

    pub fn string(&self, name: &str, default: &str) -> String {
        self.value(name).unwrap_or(default).to_string()
    }
}

/// Paces the progress line: four times a second on a terminal, once a
/// second when stderr is a file or pipe (so logs stay short).
pub struct Ticker {
    last: Option<std::time::Instant>,
    every: std::time::Duration,
}

impl Default for Ticker {
    fn default() -> Self {
        let tty = std::io::stderr().is_terminal();
        Ticker {
            last: None,
            every: std::time::Duration::from_millis(if tty { 250 } else { 1000 }),
        }
    }
}

impl Ticker {
    /// True when the progress line is due again.
    pub fn due(&mut self) -> bool {
        if self.last.is_some_and(|t| t.elapsed() < self.every) {
            return false;
        }
        self.last = Some(std::time::Instant::now());
        true
    }
}
