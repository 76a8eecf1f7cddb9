//! `idgate audit show`: the trail's records for an investigator, decrypted and filtered, as
//! JSON lines (the entries as written, one per line) or a table.

use std::io::{BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use idgate_audit::reader::{self, Lines};
use idgate_audit::verify::{printable, printable_json};
use idgate_audit::{EntryKind, json};
use serde_json::Value;

use super::TrailArgs;
use crate::EXIT_CONFIG;

#[derive(Args)]
pub(crate) struct ShowArgs {
    #[command(flatten)]
    trail: TrailArgs,
    /// Records at or after this time: RFC 3339 UTC (2026-11-23T16:45:48Z) or a date.
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Records before this time: RFC 3339 UTC or a date (its midnight).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Records of this caller: the principal as recorded (a SPIFFE ID, apikey:NAME,
    /// client:ID, sub:…) or the connection's SPIFFE ID.
    #[arg(long)]
    caller: Option<String>,
    /// Records of this route (its name).
    #[arg(long)]
    route: Option<String>,
    /// Records with this status: a code (403) or a class (4xx, 5xx).
    #[arg(long)]
    status: Option<String>,
    /// Also the trail's own entries: file openings, checkpoints, gaps, dropped counts.
    #[arg(long)]
    all: bool,
    /// How to print.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// Each entry as written, one JSON object per line.
    Json,
    /// One line per record: time, status, decision, route, method, path, caller, request id.
    Table,
}

/// What a record must match.
struct Filter {
    since: Option<u64>,
    until: Option<u64>,
    caller: Option<String>,
    route: Option<String>,
    status: Option<StatusFilter>,
    all: bool,
}

enum StatusFilter {
    Code(u64),
    Class(u64),
}

impl Filter {
    fn new(args: &ShowArgs) -> Result<Self, String> {
        let time = |flag: &str, v: &Option<String>| -> Result<Option<u64>, String> {
            v.as_deref()
                .map(|s| {
                    json::parse_time(s).ok_or_else(|| {
                        format!(
                            "{flag} {s}: not an RFC 3339 UTC time (2026-11-23T16:45:48Z) or a date"
                        )
                    })
                })
                .transpose()
        };
        let status = match args.status.as_deref() {
            None => None,
            Some(s) => Some(
                match s.strip_suffix("xx").or_else(|| s.strip_suffix("XX")) {
                    Some(d) if d.len() == 1 => StatusFilter::Class(
                        d.parse()
                            .map_err(|_| format!("--status {s}: a code or a class like 4xx"))?,
                    ),
                    _ => StatusFilter::Code(
                        s.parse()
                            .map_err(|_| format!("--status {s}: a code or a class like 4xx"))?,
                    ),
                },
            ),
        };
        Ok(Self {
            since: time("--since", &args.since)?,
            until: time("--until", &args.until)?,
            caller: args.caller.clone(),
            route: args.route.clone(),
            status,
            all: args.all,
        })
    }

    fn matches(&self, kind: EntryKind, v: &Value) -> bool {
        if kind != EntryKind::Record {
            // The trail's own entries go with --all, and are not filtered further.
            return self.all;
        }
        let time = v["time"].as_u64().unwrap_or_default();
        if self.since.is_some_and(|s| time < s) || self.until.is_some_and(|u| time >= u) {
            return false;
        }
        if let Some(c) = &self.caller {
            let actor = v["actor"]["user"]["uid"].as_str();
            let peer = v["unmapped"]["peer"].as_str();
            if actor != Some(c.as_str()) && peer != Some(c.as_str()) {
                return false;
            }
        }
        if let Some(r) = &self.route
            && v["api"]["operation"].as_str() != Some(r.as_str())
        {
            return false;
        }
        if let Some(s) = &self.status {
            let Some(code) = v["http_response"]["code"].as_u64() else {
                return false;
            };
            let ok = match s {
                StatusFilter::Code(c) => code == *c,
                StatusFilter::Class(c) => code / 100 == *c,
            };
            if !ok {
                return false;
            }
        }
        true
    }
}

pub(crate) fn run(args: &ShowArgs) -> ExitCode {
    let usage = |msg: String| {
        eprintln!("error: {msg}");
        ExitCode::from(EXIT_CONFIG)
    };
    let filter = match Filter::new(args) {
        Ok(f) => f,
        Err(e) => return usage(e),
    };
    let (files, keys): (Vec<PathBuf>, _) = match args.trail.open() {
        Ok(t) => (t.files, t.decrypt),
        Err(e) => return usage(e),
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if matches!(args.format, Format::Table) {
        let _ = writeln!(
            out,
            "{:<24} {:>6} {:<32} {:<20} {:<7} {:<40} {:<40} REQUEST_ID",
            "TIME", "STATUS", "DECISION", "ROUTE", "METHOD", "PATH", "CALLER"
        );
    }
    let mut skipped = 0u64;
    for (i, f) in files.iter().enumerate() {
        let last_file = i + 1 == files.len();
        // A file's name is printed only escaped, as is all text from the trail.
        let name = printable(&f.display().to_string()).into_owned();
        let file = match std::fs::File::open(f) {
            Ok(file) => file,
            Err(e) => return usage(format!("{name}: cannot read: {e}")),
        };
        let mut lines = Lines::new(BufReader::with_capacity(256 * 1024, file));
        loop {
            let line = match lines.next_line() {
                Ok(Some(l)) => l,
                Ok(None) => break,
                Err(e) => return usage(format!("{name}: cannot read: {e}")),
            };
            if !line.complete && !line.too_long && last_file {
                // Without its newline at the very end of the trail: the batch the writer is
                // writing (`verify` calls it the open end). Shown once it is whole.
                eprintln!(
                    "note: {name}:{}: the trail's last line is still being written; not shown",
                    line.number
                );
                continue;
            }
            let decoded = if line.too_long {
                // Its end may be far away (a file that is mostly a hole): not read.
                Err(
                    "the line is longer than any entry; the rest of the file is not read"
                        .to_owned(),
                )
            } else if line.complete {
                reader::decode(&line.bytes, &keys).map_err(|e| e.to_string())
            } else {
                Err("the line is incomplete".to_owned())
            };
            let (entry, plain) = match decoded {
                Ok(d) => d,
                Err(e) => {
                    eprintln!(
                        "warning: {name}:{}: skipped: {}",
                        line.number,
                        printable(&e)
                    );
                    skipped += 1;
                    continue;
                }
            };
            if !filter.matches(entry.kind, &entry.value) {
                continue;
            }
            let written = match args.format {
                Format::Json => out
                    .write_all(&printable_json(&plain))
                    .and_then(|()| out.write_all(b"\n")),
                Format::Table => writeln!(out, "{}", printable(&row(entry.kind, &entry.value))),
            };
            if written.is_err() {
                // The reader went away (a closed pipe): nothing more to say.
                return ExitCode::SUCCESS;
            }
        }
    }
    let _ = out.flush();
    if skipped > 0 {
        eprintln!("warning: {skipped} line(s) skipped; run `idgate audit verify` on the trail");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// One table row.
fn row(kind: EntryKind, v: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let time = v["time"]
        .as_u64()
        .or_else(|| v[kind.as_str()]["time"].as_u64())
        .map_or_else(|| "-".to_owned(), json::format_millis);
    if kind != EntryKind::Record {
        return format!("{time:<24} {:>6} {}", "", kind.as_str());
    }
    let status = v["http_response"]["code"]
        .as_u64()
        .map_or_else(|| "-".to_owned(), |c| c.to_string());
    let decision = v["unmapped"]["decision"]
        .as_str()
        .map_or_else(|| s(&v["status_detail"]), str::to_owned);
    format!(
        "{time:<24} {status:>6} {decision:<32} {:<20} {:<7} {:<40} {:<40} {}",
        s(&v["api"]["operation"]),
        s(&v["http_request"]["http_method"]),
        s(&v["http_request"]["url"]["path"]),
        v["actor"]["user"]["uid"]
            .as_str()
            .or(v["src_endpoint"]["ip"].as_str())
            .unwrap_or("-"),
        s(&v["metadata"]["uid"]),
    )
}
