//! `[log]`: the format and filter of the gateway's logs.

use crate::context::Ctx;
use crate::raw;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter directive, such as `info` or `info,idgate_proxy=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

pub(crate) fn parse(cx: &mut Ctx<'_>, l: raw::Log) -> LogConfig {
    let format = match l.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            cx.err(
                "log.format",
                format!("\"{other}\" is not allowed: use \"text\" or \"json\""),
            );
            LogFormat::Text
        }
    };
    let level = l.level.unwrap_or_else(|| "info".to_owned());
    if let Err(e) = check_log_filter(&level) {
        cx.err("log.level", e.to_string());
    }
    LogConfig { format, level }
}

/// Why a log filter was refused; each names the directive at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogFilterError {
    #[error("\"{0}\" has no target before '='")]
    NoTarget(String),
    #[error(
        "\"{0}\" does not name a target: a module path (letters, digits, '_', separated by \"::\"), with no space"
    )]
    NotATarget(String),
    #[error(
        "\"{0}\" is not a level: use trace, debug, info, warn, error or off, optionally as target=level"
    )]
    NotALevel(String),
}

const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// A module path: `idgate_proxy`, `idgate::access`.
fn is_target(target: &str) -> bool {
    target.split("::").all(|part| {
        !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

/// Checks a `tracing` filter such as `info` or `info,idgate_proxy=debug`. A bare word that is
/// not a level would be read as a target name and silence everything else, so it is refused.
/// Only what the log's filter reads exactly as written passes: no space around a directive,
/// a target that is a module path, one `=`; a filter it could not read would leave the
/// gateway at its default level, the access log on whatever the filter said.
pub fn check_log_filter(filter: &str) -> Result<(), LogFilterError> {
    for directive in filter.split(',') {
        let level = match directive.split_once('=') {
            Some(("", _)) => return Err(LogFilterError::NoTarget(directive.to_owned())),
            Some((target, level)) if is_target(target) => level,
            Some(_) => return Err(LogFilterError::NotATarget(directive.to_owned())),
            None => directive,
        };
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(LogFilterError::NotALevel(directive.to_owned()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_passes_only_as_the_log_filter_reads_it() {
        for ok in [
            "info",
            "WARN",
            "warn,idgate::access=off",
            "info,idgate_proxy=debug,hyper=warn",
            "off",
        ] {
            assert_eq!(check_log_filter(ok), Ok(()), "{ok}");
        }
        for bad in [
            "info, idgate_proxy=debug",
            " info",
            "warn,idgate::access=off ",
            "*=debug",
            "a=b=info",
            "x[y=info",
            "idgate:access=off",
            "idgate::=off",
            "=info",
            "verbose",
            "",
        ] {
            assert!(check_log_filter(bad).is_err(), "{bad:?}");
        }
    }
}
