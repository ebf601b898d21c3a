//! A small command-line parser for the examples: `--flag value` and
//! `--flag=value`, errors as one line for the usage message.

use std::str::FromStr;
use std::time::Duration;

/// The arguments after the program name.
pub struct Args {
    items: std::vec::IntoIter<String>,
    /// The value of the last `--flag=value`, if the flag came with one.
    inline: Option<String>,
}

impl Args {
    pub fn from_env() -> Args {
        Args::new(std::env::args().skip(1).collect())
    }

    pub fn new(items: Vec<String>) -> Args {
        Args {
            items: items.into_iter(),
            inline: None,
        }
    }

    /// The next flag (`--name`), `None` at the end.
    pub fn next_flag(&mut self) -> Result<Option<String>, String> {
        if let Some(v) = self.inline.take() {
            return Err(format!("unexpected value '{v}'"));
        }
        let Some(item) = self.items.next() else {
            return Ok(None);
        };
        if !item.starts_with("--") {
            return Err(format!("unexpected argument '{item}'"));
        }
        match item.split_once('=') {
            Some((flag, value)) => {
                self.inline = Some(value.to_string());
                Ok(Some(flag.to_string()))
            }
            None => Ok(Some(item)),
        }
    }

    /// The value of `flag`.
    pub fn value(&mut self, flag: &str) -> Result<String, String> {
        self.inline
            .take()
            .or_else(|| self.items.next())
            .ok_or_else(|| format!("{flag} needs a value"))
    }

    /// The value of `flag`, parsed.
    pub fn parse<T: FromStr>(&mut self, flag: &str) -> Result<T, String> {
        let v = self.value(flag)?;
        v.parse()
            .map_err(|_| format!("invalid value '{v}' for {flag}"))
    }

    /// A duration given in milliseconds.
    pub fn millis(&mut self, flag: &str) -> Result<Duration, String> {
        self.parse::<u64>(flag).map(Duration::from_millis)
    }

    /// A flag that takes no value.
    pub fn switch(&mut self, flag: &str) -> Result<(), String> {
        match self.inline.take() {
            Some(v) => Err(format!("{flag} takes no value (got '{v}')")),
            None => Ok(()),
        }
    }
}

/// A usage error: the reason (none for `--help`), the usage line, exit code 2.
pub fn usage_error(program: &str, usage: &str, reason: &str) -> std::process::ExitCode {
    if !reason.is_empty() {
        eprintln!("{program}: {reason}");
    }
    eprintln!("{usage}");
    std::process::ExitCode::from(2)
}

/// The mode names of the command line (`send-only`, with a dash).
pub fn mode(name: &str) -> Result<closenotify::Mode, String> {
    match name {
        "bidirectional" => Ok(closenotify::Mode::Bidirectional),
        "send-only" => Ok(closenotify::Mode::SendOnly),
        "quiet" => Ok(closenotify::Mode::Quiet),
        other => Err(format!(
            "invalid mode '{other}' (bidirectional, send-only or quiet)"
        )),
    }
}
