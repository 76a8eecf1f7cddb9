//! `idgate`: a zero-trust API gateway for identity-verification providers.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

mod audit;
mod demo;
mod hsm;
mod incidents;
mod keys;
mod ready_file;
mod webhooks;

// The system allocator cost the proxy about a tenth of its CPU per request; mimalloc's
// thread-local free lists take most of that back.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use idgate_config::{Config, LogFormat};
use idgate_proxy::access_log::AccessLog;
use idgate_proxy::gateway::{LogFilter, LogFilterError};
use idgate_proxy::{Bound, Gateway};
use idgate_tls::devpki::{self, DevPkiRequest};
use idgate_tls::{SpiffeId, TrustDomain};
use ready_file::{ReadyFile, ReadyFileError};

/// Exit code for a configuration or usage problem.
pub(crate) const EXIT_CONFIG: u8 = 2;
/// Exit codes when a second signal cuts the drain short: 128 + the signal's number, as a
/// shell reports a process killed by it.
const EXIT_SIGINT: i32 = 130;
const EXIT_SIGTERM: i32 = 143;

#[derive(Parser)]
#[command(
    name = "idgate",
    version,
    about = "A zero-trust API gateway in front of identity-verification providers",
    long_about = "idgate stands between your services and identity-verification providers. \
Callers prove who they are with SPIFFE X.509-SVIDs over mutual TLS; each route says which \
workload identities may use it; the provider's credential lives only in the gateway and is \
injected on the way out."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve traffic as the configuration file describes.
    ///
    /// Reloads the TLS material when its files change, the configuration when its file
    /// changes, and both on SIGHUP (see docs/configuration.md, Reloading). SIGTERM or Ctrl-C turns /readyz false, stops accepting after
    /// [lifecycle] drain_delay and drains in-flight requests up to drain_timeout, then exits
    /// 0; a second SIGTERM or Ctrl-C exits at once (status 143 or 130).
    ///
    /// Binding port 0 (in `listener.bind` or `admin.bind`) lets the system pick a free port;
    /// the start-up line "idgate is serving" and the `--ready-file` name the bound addresses.
    Serve {
        /// The TOML configuration file (see docs/configuration.md).
        #[arg(short, long, env = "IDGATE_CONFIG")]
        config: PathBuf,
        /// Once every listener is bound and the gateway serves, write
        /// `{"pid":…,"listener":"ip:port","admin":"ip:port"}` to this file (atomically: a
        /// temporary file in the same directory, renamed). Removed at a clean shutdown.
        #[arg(long, value_name = "PATH")]
        ready_file: Option<PathBuf>,
    },
    /// Validate a configuration without serving.
    ///
    /// Loads everything `serve` would (certificates, bundles, secrets) and prints every
    /// problem with its file, key path and reason. Exits 0 when valid, 2 otherwise.
    Check {
        /// The TOML configuration file.
        #[arg(short, long, env = "IDGATE_CONFIG")]
        config: PathBuf,
    },
    /// Write a development PKI: a CA bundle, a gateway SVID and one SVID per workload.
    ///
    /// For trying idgate and for tests, in place of SPIRE. Writes bundle.pem, ca.key,
    /// gateway.crt/.key (also valid for localhost, 127.0.0.1 and ::1) and, per workload,
    /// <path with '/' as '-'>.crt/.key. Keys are written with mode 0600.
    DevPki {
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// The trust domain, such as example.org.
        #[arg(long)]
        trust_domain: String,
        /// A workload SPIFFE ID to issue an SVID for; repeat for more.
        #[arg(long = "workload", value_name = "SPIFFE_ID")]
        workloads: Vec<String>,
        /// Validity of the SVIDs in hours, up to 87600 (ten years; the CA lives ten times
        /// longer).
        #[arg(long, default_value_t = 24,
              value_parser = clap::value_parser!(u64).range(1..=devpki::MAX_VALID_HOURS))]
        valid_hours: u64,
    },
    /// Run the whole path on this machine: dev PKI, HSM-held key, mock provider, gateway.
    ///
    /// Creates everything in a temporary directory, runs a verification round trip as an
    /// allowed workload and as one that is not allowed, explains each step, then keeps running
    /// with curl lines to try by hand until Ctrl-C.
    Demo {
        /// Listen on this port (default: a free one).
        #[arg(long)]
        port: Option<u16>,
        /// Exit after the round trip instead of waiting for Ctrl-C.
        #[arg(long)]
        no_wait: bool,
    },
    /// A local identity-verification provider speaking the Didit v3 API, for demos and tests.
    MockProvider(idgate_mock_provider::MockArgs),
    /// Keep upstream secrets in a PKCS#11 token (HSM or SoftHSM2).
    Hsm {
        #[command(subcommand)]
        command: hsm::HsmCommand,
    },
    /// Manage caller API keys: create (shown once), list, revoke, rotate.
    ///
    /// Keys live in the store named by the configuration's [api_keys] section, as keyed hashes
    /// only. A running gateway picks up every change within its reload_interval.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Inspect the webhook outbox: list, show, replay and purge events.
    ///
    /// Reads the [state] backend the configuration names (a redb file shared with the running
    /// gateway, or Redis). Event bodies are shown only with `show --body`.
    Webhooks {
        #[command(subcommand)]
        command: webhooks::WebhooksCommand,
    },
    /// The tamper-evident audit trail: verify it, show its records, make its keys.
    ///
    /// `verify` checks every entry's hash and place in the chain and every checkpoint's
    /// signature, and names the first entry that does not hold; `show` decrypts and filters
    /// records for an investigator (see docs/audit.md).
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Incidents the gateway detected: list them, show one, or render its report.
    ///
    /// `report ID --format md` gives a compliance officer what DORA's incident report asks:
    /// what, when, how long, who was affected, what the gateway did, and the audit records
    /// to extract (see docs/incidents.md).
    Incidents {
        #[command(subcommand)]
        command: incidents::IncidentsCommand,
    },
}

fn main() -> ExitCode {
    // mimalloc asks for transparent huge pages for its memory: a 2 MiB page is then resident
    // whole, however little of it is in use, and idle connections cost a third more resident
    // memory (bench/RESULTS.md). Where the kernel cannot say no, nothing else changes.
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    keep_memory_private();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, ready_file } => serve(&config, ready_file),
        Command::Check { config } => check(&config),
        Command::DevPki {
            out,
            trust_domain,
            workloads,
            valid_hours,
        } => dev_pki(&out, &trust_domain, &workloads, valid_hours),
        Command::Hsm { command } => hsm::run(command),
        Command::Keys { command } => keys::run(command),
        Command::Webhooks { command } => webhooks::run(command),
        Command::Audit { command } => audit::run(command),
        Command::Incidents { command } => incidents::run(command),
        Command::Demo { port, no_wait } => demo::run(!no_wait, port),
        Command::MockProvider(args) => idgate_mock_provider::run_from_args(args),
    }
}

/// Keeps the process's memory (the provider's keys, the Vault token, the SVID's private key,
/// the PINs the `hsm` commands read) out of core files and core handlers, whatever limits
/// the host or the container runtime set: no core dump (`RLIMIT_CORE` 0), and the process
/// is not dumpable, which also keeps another process of the same user from attaching to it
/// or reading its memory. Both are refused only where the kernel has neither (then the
/// host's own settings stand).
fn keep_memory_private() {
    let none = rustix::process::Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    let _ = rustix::process::setrlimit(rustix::process::Resource::Core, none);
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
}

fn print_config_errors(errors: &idgate_config::ConfigErrors) {
    for e in &errors.0 {
        eprintln!("error: {e}");
    }
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    idgate_config::load(path).map_err(|errors| {
        print_config_errors(&errors);
        ExitCode::from(EXIT_CONFIG)
    })
}

/// Builds what a configuration describes, the same way for `check` and `serve`. Logging is
/// in place by then, so that what the parts warn about while they load is seen.
///
/// The parts are built on a blocking thread of `runtime` while the runtime runs: a Redis
/// state store belongs to the runtime that drives its connections, and the API keys it
/// holds are read through them before the gateway serves.
fn prepare(config: Config, runtime: &tokio::runtime::Runtime) -> Result<Gateway, ExitCode> {
    let built = runtime.block_on(runtime.spawn_blocking(move || Gateway::prepare(config)));
    match built {
        Ok(Ok(gateway)) => Ok(gateway),
        Ok(Err(errors)) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            Err(ExitCode::from(EXIT_CONFIG))
        }
        Err(e) => {
            eprintln!("error: the configuration could not be built: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

fn check(path: &Path) -> ExitCode {
    let mut config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_check_logging(path);
    for w in &config.warnings {
        eprintln!("warning: {}: {w}", path.display());
    }
    let trust = match &config.identity.source {
        idgate_config::IdentitySource::Files(f) => {
            format!("{} trust domains", f.trust_bundles.len())
        }
        idgate_config::IdentitySource::WorkloadApi(e) => {
            format!("SVID and trust bundles from the Workload API at {e}")
        }
    };
    let summary = format!(
        "{}: valid ({} upstreams, {} routes, {trust})",
        path.display(),
        config.upstreams.len(),
        config.routes.len(),
    );
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    leave_a_missing_state_file_to_serve(&mut config);
    match prepare(config, &runtime) {
        Ok(_) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// `check` opens the redb state file to find its problems, but never creates it: made by
/// whoever runs `check` (often root), it would be refused to the gateway running as its own
/// user. A file that does not exist yet, in a directory that does, is left to `serve`, and
/// the rest is checked against state held in memory. Without the directory, the open fails
/// as it would at start-up, creating nothing.
fn leave_a_missing_state_file_to_serve(config: &mut Config) {
    let idgate_config::StateBackend::Redb { path } = &config.state else {
        return;
    };
    // The configuration makes every path name its directory (`./` at the least).
    let missing = matches!(path.try_exists(), Ok(false));
    if missing && path.parent().is_some_and(Path::is_dir) {
        tracing::warn!(
            "the state file {} does not exist yet; `idgate serve` creates it (mode 0600, owned by the user it runs as)",
            path.display()
        );
        config.state = idgate_config::StateBackend::Memory;
    }
}

/// `check` reports on standard error as `warning: FILE: …`, like its own findings; what the
/// parts log below `warn` is of no use to it.
fn init_check_logging(path: &Path) {
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours for a person at a terminal; plain text for a file, a pipe or a CI log.
        .with_ansi(std::io::stderr().is_terminal())
        .with_max_level(tracing::Level::WARN)
        .event_format(CheckFormat {
            file: path.display().to_string(),
        })
        .try_init();
}

struct CheckFormat {
    file: String,
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for CheckFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = if *event.metadata().level() == tracing::Level::ERROR {
            "error"
        } else {
            "warning"
        };
        write!(writer, "{level}: {}: ", self.file)?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// The rest of the log is written by `tracing`'s non-blocking writer (flushed when its guard
/// drops); access lines by the access log's own writer, when the filter lets them through.
fn init_logging(
    config: &Config,
) -> (
    tracing_appender::non_blocking::WorkerGuard,
    Option<Arc<AccessLog>>,
    Arc<LogLevel>,
) {
    use tracing_subscriber::EnvFilter;
    // A mistyped IDGATE_LOG must not silence the access log: it is ignored, with a word.
    let env =
        std::env::var("IDGATE_LOG")
            .ok()
            .filter(|s| match idgate_config::check_log_filter(s) {
                Ok(()) => true,
                Err(e) => {
                    eprintln!("warning: IDGATE_LOG ignored: {e}");
                    false
                }
            });
    let env_filter = env.and_then(|s| EnvFilter::try_new(s).ok());
    let filter = env_filter.clone().unwrap_or_else(|| {
        // The configuration checked the level; a filter that still did not read would leave
        // the gateway at `info`, whatever `[log] level` said of the access log: said so.
        EnvFilter::try_new(&config.log.level).unwrap_or_else(|e| {
            eprintln!("warning: [log] level cannot be read ({e}); logging at info");
            EnvFilter::new("info")
        })
    });
    // Log lines are written by a background thread so the request path never waits on stdout.
    // Should the output stall, lines beyond the buffer are dropped rather than block the
    // runtime, and the number dropped is reported on stderr.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(128 * 1024)
        .finish(std::io::stdout());
    let dropped = writer.error_counter();
    std::thread::Builder::new()
        .name("log-drops".into())
        .spawn(move || {
            let mut reported = 0;
            loop {
                std::thread::sleep(Duration::from_secs(10));
                let now = dropped.dropped_lines();
                if now > reported {
                    eprintln!(
                        "idgate: {} log line(s) dropped: the log output is not keeping up",
                        now - reported
                    );
                    reported = now;
                }
            }
        })
        .ok();
    let from_env = env_filter.is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    // The filter can be replaced while serving (a reload's new `[log] level`).
    let reload: ReloadFilter = match config.log.format {
        LogFormat::Json => {
            let builder = builder.json().flatten_event(true).with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            Box::new(move |f| handle.reload(f))
        }
        LogFormat::Text => {
            let builder = builder.with_ansi(false).with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            Box::new(move |f| handle.reload(f))
        }
    };
    let log_filter = Arc::new(LogLevel { reload, from_env });
    // The same filter decides, once, whether requests are logged at all.
    let access_log = if tracing::enabled!(target: "idgate::access", tracing::Level::INFO) {
        match AccessLog::start(config.log.format, Box::new(std::io::stdout())) {
            Ok(log) => Some(Arc::new(log)),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the access log writer; requests are not logged");
                None
            }
        }
    } else {
        None
    };
    (guard, access_log, log_filter)
}

/// Replaces the log subscriber's filter.
type ReloadFilter = Box<
    dyn Fn(tracing_subscriber::EnvFilter) -> Result<(), tracing_subscriber::reload::Error>
        + Send
        + Sync,
>;

/// The log filter as a reload sees it: `[log] level`, unless `IDGATE_LOG` overrides it.
struct LogLevel {
    reload: ReloadFilter,
    /// Set by `IDGATE_LOG`, which a reload of the file does not override.
    from_env: bool,
}

impl LogFilter for LogLevel {
    fn set_level(&self, level: &str) -> Result<(), LogFilterError> {
        if self.from_env {
            tracing::info!("[log] level changed, but IDGATE_LOG sets the filter: it stays");
            return Ok(());
        }
        let filter = tracing_subscriber::EnvFilter::try_new(level)
            .map_err(|e| LogFilterError(e.to_string()))?;
        (self.reload)(filter).map_err(|e| LogFilterError(e.to_string()))
    }
}

fn serve(path: &Path, ready_file: Option<PathBuf>) -> ExitCode {
    let ready_file = match ready_file.map(ReadyFile::new).transpose() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (_guard, access_log, log_filter) = init_logging(&config);
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let open_files = raise_open_file_limit();
    let needed = open_files_needed(&config);
    if let Some(limit) = open_files
        && limit < needed
    {
        tracing::warn!(
            limit,
            needed,
            "the open-file limit is below what listener.max_connections, admin.max_connections and the upstreams' max_connections may hold: past it, connections are refused (EMFILE) and the audit trail, state and secrets cannot open files; raise LimitNOFILE (systemd) or the container runtime's nofile limit, or lower the caps"
        );
    }
    let workers = config.workers;
    // One worker runs everything on the current thread: no cross-thread handoffs, which is
    // the fastest shape for a single core's worth of traffic.
    let runtime = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    // Caught before the slow part of the start (secrets, Vault, the HSM, Redis, the audit
    // trail): SIGHUP's default action would end the process, and a service manager does not
    // restart one ended by it. One that comes meanwhile reloads once the gateway runs.
    let hangup = {
        let _runtime = runtime.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    };
    let hangup = match hangup {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP");
            return ExitCode::FAILURE;
        }
    };
    let gateway = match prepare(config, &runtime) {
        Ok(g) => g,
        Err(code) => return code,
    };
    let gateway = gateway.with_log_filter(log_filter).with_hangup(hangup);
    let gateway = match &access_log {
        Some(log) => gateway.with_access_log(log.clone()),
        None => gateway,
    };
    // Set when the ready file could not be written: the gateway then stops, since whoever
    // asked for the file is waiting for it.
    let ready_failed: Cell<Option<ReadyFileError>> = Cell::new(None);
    let ready_written = Cell::new(false);
    let result = runtime.block_on(async {
        // Registered before the gateway reports ready, so a SIGTERM is never fatal.
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<()>();
        let on_bound = |bound: Bound| {
            let Some(file) = &ready_file else { return };
            match file.write(bound) {
                Ok(()) => {
                    ready_written.set(true);
                    tracing::info!(path = %file.path().display(), "ready file written");
                }
                Err(e) => {
                    ready_failed.set(Some(e));
                    let _ = failed_tx.send(());
                }
            }
        };
        let shutdown = async {
            tokio::select! {
                () = shutdown_signal(term) => {}
                // A dropped sender (the file was written, or none was asked for) is no
                // reason to stop: that branch is then disabled.
                Ok(()) = failed_rx => {}
            }
        };
        gateway.run(shutdown, on_bound).await
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    if let (Some(file), true) = (&ready_file, ready_written.get())
        && let Err(e) = file.remove()
    {
        tracing::warn!(error = %e, "cannot remove the ready file");
    }
    // Every request has ended: its line is written before the process exits.
    if let Some(log) = &access_log {
        log.close();
    }
    match (result, ready_failed.into_inner()) {
        (Err(e), _) => {
            tracing::error!(error = %e, "cannot serve");
            ExitCode::FAILURE
        }
        (Ok(()), Some(e)) => {
            tracing::error!(error = %e, "cannot write the ready file; stopped");
            ExitCode::FAILURE
        }
        (Ok(()), None) => ExitCode::SUCCESS,
    }
}

/// Completes on the first SIGTERM or SIGINT, which starts the drain. A second one while
/// draining ends the process at once, with 128 + the signal's number as its status (the
/// audit trail is then not closed: `audit verify` reports its last entries unsealed).
async fn shutdown_signal(mut term: tokio::signal::unix::Signal) {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tokio::spawn(async move {
        let status = tokio::select! {
            _ = tokio::signal::ctrl_c() => EXIT_SIGINT,
            _ = term.recv() => EXIT_SIGTERM,
        };
        // Straight to standard error: the log writer's thread may not get to run again.
        eprintln!("idgate: second stop signal while draining: exiting now");
        std::process::exit(status);
    });
}

fn dev_pki(out: &Path, trust_domain: &str, workloads: &[String], valid_hours: u64) -> ExitCode {
    let td = match TrustDomain::new(trust_domain) {
        Ok(td) => td,
        Err(e) => {
            eprintln!("error: --trust-domain {trust_domain}: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut ids = Vec::new();
    for w in workloads {
        match SpiffeId::new(w) {
            Ok(id) => ids.push(id),
            Err(e) => {
                eprintln!("error: --workload {w}: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    let req = DevPkiRequest {
        trust_domain: td,
        workloads: ids,
        validity: Duration::from_secs(valid_hours.saturating_mul(3600)),
    };
    match devpki::generate(out, &req) {
        Ok(files) => {
            println!("trust bundle (CA):  {}", files.bundle.display());
            println!("CA private key:     {}", files.ca_key.display());
            println!(
                "gateway SVID:       {} / {}  ({}, localhost, 127.0.0.1, ::1)",
                files.gateway_cert.display(),
                files.gateway_key.display(),
                files.gateway_id
            );
            for (id, crt, key) in &files.workloads {
                println!(
                    "workload SVID:      {} / {}  ({id})",
                    crt.display(),
                    key.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e @ (devpki::DevPkiError::ForeignWorkload(..) | devpki::DevPkiError::Validity(..))) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files to the hard one, as nginx, Envoy and Go programs do:
/// a container starts with a soft limit of 1,024 (Kubernetes has no field to raise it), far
/// below the connections a gateway holds. The limit after it (`None`: unlimited).
fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    // An unlimited hard limit is not a soft limit Linux takes for open files (it is bound by
    // fs.nr_open, 1,048,576 by default).
    let target = limit.maximum.unwrap_or(1 << 20);
    if limit.current.is_some_and(|current| current < target) {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(target),
                maximum: limit.maximum,
            },
        );
    }
    getrlimit(Resource::Nofile).current
}

/// The open files the configuration may need at once: every caller and admin connection,
/// every upstream connection, and room for the rest (the listening sockets, the state
/// backend, Vault, the audit trail's and the logs' files, the HSM's).
fn open_files_needed(config: &Config) -> u64 {
    const REST: usize = 256;
    let upstreams: usize = config.upstreams.iter().map(|u| u.max_connections).sum();
    u64::try_from(
        config
            .listener
            .max_connections
            .saturating_add(config.admin.max_connections)
            .saturating_add(upstreams)
            .saturating_add(REST),
    )
    .unwrap_or(u64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rustix::process::{
        DumpableBehavior, Resource, Rlimit, dumpable_behavior, getrlimit, setrlimit,
    };

    /// Every `[log] level` the configuration accepts is read by the log's filter as it is.
    #[test]
    fn every_log_level_the_configuration_accepts_the_log_filter_reads() {
        for level in [
            "info",
            "WARN",
            "off",
            "warn,idgate::access=off",
            "info,idgate_proxy=debug,hyper=warn",
            "error,idgate_proxy::listener=trace",
        ] {
            assert_eq!(idgate_config::check_log_filter(level), Ok(()), "{level}");
            assert!(
                tracing_subscriber::EnvFilter::try_new(level).is_ok(),
                "{level}"
            );
        }
        // What the log's filter cannot read, the configuration refuses.
        for level in [
            "info, idgate_proxy=debug",
            "*=debug",
            "a=b=info",
            "x[y=info",
        ] {
            assert!(
                tracing_subscriber::EnvFilter::try_new(level).is_err(),
                "{level}"
            );
            assert!(idgate_config::check_log_filter(level).is_err(), "{level}");
        }
    }

    #[test]
    fn the_gateway_raises_its_open_file_limit_to_the_hard_limit() {
        let before = getrlimit(Resource::Nofile);
        let Some(hard) = before.maximum.filter(|&h| h > 256) else {
            return;
        };
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(256),
                maximum: Some(hard),
            },
        )
        .unwrap();
        assert_eq!(super::raise_open_file_limit(), Some(hard));
        assert_eq!(getrlimit(Resource::Nofile).current, Some(hard));
    }

    #[test]
    fn the_process_keeps_its_memory_out_of_core_dumps() {
        super::keep_memory_private();
        assert_eq!(dumpable_behavior().unwrap(), DumpableBehavior::NotDumpable);
        let core = getrlimit(Resource::Core);
        assert_eq!((core.current, core.maximum), (Some(0), Some(0)));
    }
}
