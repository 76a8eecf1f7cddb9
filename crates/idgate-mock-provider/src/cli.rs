//! The command line, shared by the `idgate-mock-provider` binary and `idgate mock-provider`
//! (which flattens [`MockArgs`] into its subcommand and calls [`run_from_args`]).
//!
//! Secrets never come from the command line, where `ps` and shell history would show them:
//! each is read from an environment variable named by a flag, or from a file.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use secrecy::SecretString;

use crate::{AuthMode, MockConfig, MockError, WebhookTarget};

/// Exit code for a usage or configuration problem (as `idgate` uses).
const EXIT_USAGE: u8 = 2;

/// Which provider's credential check the mock enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// `x-api-key` (the key from --api-key-env/--api-key-file).
    Didit,
    /// `X-App-Token` (the API key) and `X-App-Access-Sig` signed with the secret.
    Sumsub,
    /// `X-AUTH-CLIENT` (the API key) and `X-HMAC-SIGNATURE` signed with the secret; also
    /// serves Veriff's `POST /v1/sessions` and `GET /v1/sessions/{id}/decision`.
    Veriff,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Options of the mock provider.
#[derive(Debug, Clone, clap::Args)]
pub struct MockArgs {
    /// Address to listen on. Port 0 picks a free port; the URL is printed on stdout as
    /// `listening on <URL> (<mode>)`.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9443")]
    pub listen: SocketAddr,

    /// Serve HTTPS with this certificate chain (PEM), e.g. gateway.crt from `idgate dev-pki`.
    /// Without it the mock serves plain HTTP, and only on a loopback address.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert, e.g. gateway.key.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Which provider's credential check to enforce.
    #[arg(long, value_enum, default_value_t = Mode::Didit)]
    pub mode: Mode,

    /// Environment variable holding the API key (Didit x-api-key, Sumsub app token, Veriff
    /// client key).
    #[arg(long, value_name = "NAME", default_value = "MOCK_PROVIDER_API_KEY")]
    pub api_key_env: String,

    /// Read the API key from this file instead (one trailing newline is ignored).
    #[arg(long, value_name = "PATH")]
    pub api_key_file: Option<PathBuf>,

    /// Environment variable holding the HMAC secret of the sumsub and veriff modes.
    #[arg(long, value_name = "NAME", default_value = "MOCK_PROVIDER_SECRET")]
    pub secret_env: String,

    /// Read the HMAC secret from this file instead.
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,

    /// Send Didit `status.updated` webhooks here when a session's status changes
    /// (https://, or http:// to a loopback host).
    #[arg(long, value_name = "URL")]
    pub webhook_url: Option<String>,

    /// Environment variable holding the webhook signing secret.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "MOCK_PROVIDER_WEBHOOK_SECRET"
    )]
    pub webhook_secret_env: String,

    /// Read the webhook signing secret from this file instead.
    #[arg(long, value_name = "PATH")]
    pub webhook_secret_file: Option<PathBuf>,

    /// Extra CA certificates (PEM) to trust for the webhook receiver, e.g. bundle.pem.
    #[arg(long, value_name = "PEM")]
    pub webhook_ca: Option<PathBuf>,

    /// Multiplies Didit's webhook retry delays (about 1 and 4 minutes) by this factor, from
    /// 0 to 1: 0.001 retries after 60 and 240 ms.
    #[arg(long, value_name = "FACTOR", default_value_t = 1.0)]
    pub webhook_retry_scale: f64,

    /// In veriff mode, the `code` of an abandoned session's decision, which Veriff's
    /// documents do not settle (without it: null).
    #[arg(long, value_name = "CODE")]
    pub veriff_abandoned_code: Option<u16>,

    /// Log format (logs go to stderr; filter with IDGATE_LOG, default "info").
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Reads a secret from `file` if given, else from the environment variable `env`.
fn read_secret(
    what: &str,
    env: &str,
    file: Option<&Path>,
    flag: &str,
) -> Result<SecretString, MockError> {
    let value = match file {
        Some(path) => {
            let mut text = std::fs::read_to_string(path)
                .map_err(|e| MockError::Usage(format!("{what}: {}: {e}", path.display())))?;
            if text.ends_with('\n') {
                text.pop();
                if text.ends_with('\r') {
                    text.pop();
                }
            }
            text
        }
        None => std::env::var(env).map_err(|_| {
            MockError::Usage(format!(
                "{what}: the environment variable {env} is not set (or use --{flag}-file)"
            ))
        })?,
    };
    if value.is_empty() {
        return Err(MockError::Usage(format!("{what} is empty")));
    }
    Ok(SecretString::from(value))
}

/// Turns the options into a [`MockConfig`], reading the secrets. For callers that run the
/// mock inside their own runtime (`idgate demo`).
pub fn config_from_args(args: &MockArgs) -> Result<MockConfig, MockError> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (None, None) => None,
        _ => {
            return Err(MockError::Usage(
                "--tls-cert and --tls-key go together".to_owned(),
            ));
        }
    };
    if tls.is_none() && !args.listen.ip().is_loopback() {
        return Err(MockError::PlainHttpNotLoopback(args.listen));
    }
    let api_key = read_secret(
        "API key",
        &args.api_key_env,
        args.api_key_file.as_deref(),
        "api-key",
    )?;
    let secret = || {
        read_secret(
            "HMAC secret",
            &args.secret_env,
            args.secret_file.as_deref(),
            "secret",
        )
    };
    let auth = match args.mode {
        Mode::Didit => AuthMode::DiditApiKey(api_key),
        Mode::Sumsub => AuthMode::Sumsub {
            app_token: api_key,
            secret: secret()?,
        },
        Mode::Veriff => AuthMode::Veriff {
            client: api_key,
            secret: secret()?,
        },
    };
    let mut config = MockConfig::new(args.listen, auth);
    config.veriff_abandoned_code = args.veriff_abandoned_code;
    if let Some((cert, key)) = tls {
        config = config.with_tls(cert, key);
    }
    if let Some(url) = &args.webhook_url {
        config = config.with_webhook(WebhookTarget {
            url: url.clone(),
            secret: read_secret(
                "webhook secret",
                &args.webhook_secret_env,
                args.webhook_secret_file.as_deref(),
                "webhook-secret",
            )?,
            ca: args.webhook_ca.clone(),
            retry_scale: args.webhook_retry_scale,
        });
    }
    Ok(config)
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("IDGATE_LOG")
        .ok()
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // `try_init`: a host program (idgate) may already have installed a subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}

/// Completes on SIGINT or on `term`, the SIGTERM listener registered by the caller.
async fn shutdown_signal(term: std::io::Result<tokio::signal::unix::Signal>) {
    let term = async {
        match term {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Runs the mock until SIGTERM or Ctrl-C. Prints `listening on <URL> (<mode>)` on stdout
/// once the port is bound; logs go to stderr. Exit codes: 0 after a clean stop, 2 for a
/// usage or configuration problem, 1 when it cannot serve.
pub fn run_from_args(args: MockArgs) -> ExitCode {
    init_logging(args.log_format);
    let config = match config_from_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let handle = crate::start(config).await?;
        // Registered before the line says the mock listens: a SIGTERM sent as soon as it
        // is read stops the mock cleanly instead of killing it.
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {} ({})", handle.url(), handle.mode());
        let _ = out.flush();
        drop(out);
        handle.run_until(shutdown_signal(term)).await;
        Ok::<_, MockError>(())
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(
            e @ (MockError::Usage(_)
            | MockError::TlsFile { .. }
            | MockError::WebhookUrl(_)
            | MockError::WebhookCa(_)
            | MockError::PlainHttpNotLoopback(_)
            | MockError::Tls(_)),
        ) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser, Subcommand};

    use super::*;

    /// The shape `idgate mock-provider` uses: the options flattened into a subcommand.
    #[derive(Parser)]
    struct Host {
        #[command(subcommand)]
        command: HostCommand,
    }

    #[derive(Subcommand)]
    enum HostCommand {
        MockProvider(MockArgs),
    }

    #[test]
    fn flattens_into_a_host_subcommand() {
        Host::command().debug_assert();
        let host = Host::try_parse_from([
            "idgate",
            "mock-provider",
            "--listen",
            "127.0.0.1:0",
            "--mode",
            "veriff",
            "--webhook-url",
            "https://localhost:8443/hooks",
        ])
        .unwrap();
        let HostCommand::MockProvider(args) = host.command;
        assert_eq!(args.mode, Mode::Veriff);
        assert_eq!(args.api_key_env, "MOCK_PROVIDER_API_KEY");
        assert_eq!(args.secret_env, "MOCK_PROVIDER_SECRET");
        assert_eq!(args.webhook_secret_env, "MOCK_PROVIDER_WEBHOOK_SECRET");
        assert_eq!(args.webhook_retry_scale, 1.0);
    }

    #[test]
    fn secrets_come_from_files_without_their_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("mock-provider-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key");
        std::fs::write(&key, "k-123\r\n").unwrap();
        let secret = read_secret("API key", "UNUSED", Some(&key), "api-key").unwrap();
        assert_eq!(secrecy::ExposeSecret::expose_secret(&secret), "k-123");
        std::fs::write(&key, "\n").unwrap();
        assert!(read_secret("API key", "UNUSED", Some(&key), "api-key").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
