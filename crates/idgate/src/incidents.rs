//! `idgate incidents`: list the stored incidents, show one, or render its report for a
//! compliance officer (Markdown) or a program (JSON). Reads the incidents directory (from
//! `--config`'s `[incidents] dir`, or `--dir`); the gateway need not run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use idgate_incidents::{Store, StoreError, report};

use crate::EXIT_CONFIG;

#[derive(Subcommand)]
pub(crate) enum IncidentsCommand {
    /// One line per incident, newest first: id, state, severity, rule, opened, failed
    /// requests.
    List(Where),
    /// The whole incident as JSON.
    Show {
        #[command(flatten)]
        at: Where,
        /// The incident's id (from `list`).
        id: String,
    },
    /// The incident's report: what, when, how long, who was affected, what the gateway
    /// did, its DORA classification and the audit records to extract.
    Report {
        #[command(flatten)]
        at: Where,
        id: String,
        #[arg(long, value_enum, default_value_t = Format::Md)]
        format: Format,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Format {
    Json,
    Md,
}

/// Where the incidents are.
#[derive(Args)]
pub(crate) struct Where {
    /// The gateway's configuration: its [incidents] dir.
    #[arg(short, long, value_name = "FILE", required_unless_present = "dir")]
    config: Option<PathBuf>,
    /// The incidents directory itself.
    #[arg(long, value_name = "DIR", conflicts_with = "config")]
    dir: Option<PathBuf>,
}

impl Where {
    fn store(&self) -> Result<Store, String> {
        if let Some(dir) = &self.dir {
            return Ok(Store::at(dir));
        }
        let Some(file) = &self.config else {
            return Err("give --config or --dir".into());
        };
        // Only the directory is needed: none of the secrets the configuration names.
        let config = idgate_config::load_without_secrets(file).map_err(|errors| {
            errors
                .0
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\nerror: ")
        })?;
        let incidents = config
            .incidents
            .ok_or_else(|| format!("{}: has no [incidents] section", file.display()))?;
        Ok(Store::at(&incidents.dir))
    }
}

pub(crate) fn run(command: IncidentsCommand) -> ExitCode {
    match execute(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Store(e)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Usage(String),
    Store(StoreError),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

fn execute(command: IncidentsCommand) -> Result<(), Failure> {
    match command {
        IncidentsCommand::List(at) => {
            let store = at.store().map_err(Failure::Usage)?;
            println!("ID\tSTATE\tSEVERITY\tRULE\tOPENED\tFAILED");
            for i in store.load_all()?.iter().rev() {
                let state = serde_json::to_value(i.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                println!(
                    "{}\t{state}\t{}\t{}{}\t{}\t{}",
                    i.id,
                    i.severity,
                    i.rule.as_str(),
                    i.subject
                        .as_deref()
                        .map(|s| format!(":{s}"))
                        .unwrap_or_default(),
                    i.opened_at,
                    i.requests_failed
                );
            }
        }
        IncidentsCommand::Show { at, id } => {
            let store = at.store().map_err(Failure::Usage)?;
            println!("{}", report::json(&store.load(&id)?));
        }
        IncidentsCommand::Report { at, id, format } => {
            let store = at.store().map_err(Failure::Usage)?;
            let incident = store.load(&id)?;
            match format {
                Format::Json => println!("{}", report::json(&incident)),
                Format::Md => {
                    let config = at.config.as_ref().map(|c| c.display().to_string());
                    print!("{}", report::markdown(&incident, config.as_deref()));
                }
            }
        }
    }
    Ok(())
}
