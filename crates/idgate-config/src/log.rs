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
        "\"{0}\" is not a level: use trace, debug, info, warn, error or off, optionally as target=level"
    )]
    NotALevel(String),
}

const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// Checks a `tracing` filter such as `info` or `info,idgate_proxy=debug`. A bare word that is
/// not a level would be read as a target name and silence everything else, so it is refused.
pub fn check_log_filter(filter: &str) -> Result<(), LogFilterError> {
    for directive in filter.split(',').map(str::trim) {
        let level = match directive.rsplit_once('=') {
            Some((target, level)) if !target.is_empty() => level,
            Some(_) => return Err(LogFilterError::NoTarget(directive.to_owned())),
            None => directive,
        };
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(LogFilterError::NotALevel(directive.to_owned()));
        }
    }
    Ok(())
}
