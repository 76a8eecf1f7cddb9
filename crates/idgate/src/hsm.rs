//! `idgate hsm`: put upstream secrets into a PKCS#11 token and look at what is there,
//! without a secret ever passing through argv, the environment or a log.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use idgate_secrets::pkcs11::{Hsm, ObjectKind, Pkcs11Uri};
use zeroize::Zeroizing;

#[derive(Subcommand)]
pub(crate) enum HsmCommand {
    /// How to create a token for idgate (idgate never holds the Security Officer PIN).
    InitToken,
    /// Store a secret read from standard input in the token.
    ///
    /// `--kind wrapped` (for static API keys) stores it encrypted under the token's
    /// non-extractable AES-256 key; `--kind hmac` (for Sumsub and Veriff request signing)
    /// stores it as a non-extractable HMAC key that never leaves the token. The value is read
    /// from stdin, never from the command line: `idgate hsm import-secret --uri ... < key.txt`.
    ImportSecret {
        #[command(flatten)]
        target: Target,
        /// How the secret is kept and used.
        #[arg(long, value_enum, default_value_t = Kind::Wrapped)]
        kind: Kind,
    },
    /// List the token's objects: labels, kinds, versions and protection flags, never values.
    List {
        /// A pkcs11: URI naming the token (object= may be left out).
        #[arg(long)]
        uri: String,
    },
    /// Store a new version of an existing secret (read from stdin) and delete versions older
    /// than the previous one. A running gateway picks the new version up within its
    /// credential's `refresh_interval`.
    Rotate {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Args)]
pub(crate) struct Target {
    /// The object's pkcs11: URI (RFC 7512), as in the configuration, e.g.
    /// "pkcs11:token=idgate;object=didit-api-key?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/idgate/pin"
    #[arg(long)]
    uri: String,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Kind {
    /// An API key, AES-256-GCM wrapped by a non-extractable token key.
    Wrapped,
    /// An HMAC-SHA256 signing key that never leaves the token.
    Hmac,
}

const INIT_TOKEN_HELP: &str = "\
idgate uses an existing PKCS#11 token; creating one needs the Security Officer PIN, which
idgate never asks for. With SoftHSM2 (Debian/Ubuntu: apt-get install softhsm2):

  # a private token directory (or use the system one from /etc/softhsm/softhsm2.conf)
  mkdir -p /var/lib/idgate/tokens
  echo 'directories.tokendir = /var/lib/idgate/tokens' > /etc/idgate/softhsm2.conf
  export SOFTHSM2_CONF=/etc/idgate/softhsm2.conf

  # create the token; keep the SO PIN offline, give idgate only the user PIN
  softhsm2-util --init-token --free --label idgate --so-pin <SO-PIN> --pin <USER-PIN>
  install -m 600 /dev/null /run/idgate/pin && printf '%s' '<USER-PIN>' > /run/idgate/pin

  # store the provider's API key, read from stdin
  idgate hsm import-secret --uri 'pkcs11:token=idgate;object=didit-api-key?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/idgate/pin' < didit-key.txt

  # then reference the same URI in the configuration:
  #   [upstreams.credential]
  #   header = \"x-api-key\"
  #   secret = \"pkcs11:token=idgate;object=didit-api-key?module-path=...&pin-source=file:/run/idgate/pin\"

For a hardware HSM, use its vendor's tool to create the token and its PKCS#11 module path.";

fn parse_uri(uri: &str, token_only: bool) -> Result<Pkcs11Uri, String> {
    let rest = uri
        .strip_prefix("pkcs11:")
        .ok_or("--uri must start with pkcs11:")?;
    let base = Path::new(".");
    if token_only {
        Pkcs11Uri::parse_token(rest, base)
    } else {
        Pkcs11Uri::parse(rest, base)
    }
    .map_err(|e| e.to_string())
}

fn read_stdin_secret() -> Result<Zeroizing<Vec<u8>>, String> {
    let mut buf = Zeroizing::new(Vec::new());
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read the secret from stdin: {e}"))?;
    // A final newline from `echo` or an editor is not part of the secret.
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    if buf.is_empty() {
        return Err("no secret on stdin".into());
    }
    Ok(buf)
}

pub(crate) fn run(cmd: HsmCommand) -> ExitCode {
    let result = match cmd {
        HsmCommand::InitToken => {
            println!("{INIT_TOKEN_HELP}");
            Ok(())
        }
        HsmCommand::ImportSecret { target, kind } => import(&target.uri, kind),
        HsmCommand::List { uri } => list(&uri),
        HsmCommand::Rotate { target } => rotate(&target.uri),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(crate::EXIT_CONFIG)
        }
    }
}

fn import(uri: &str, kind: Kind) -> Result<(), String> {
    let uri = parse_uri(uri, false)?;
    let value = read_stdin_secret()?;
    let hsm = Hsm::open(&uri).map_err(|e| e.to_string())?;
    let version = match kind {
        Kind::Wrapped => hsm.import_wrapped(&uri.object, &uri.wrap_key, &value),
        Kind::Hmac => hsm.import_hmac_key(&uri.object, &value),
    }
    .map_err(|e| e.to_string())?;
    let what = match kind {
        Kind::Wrapped => format!("wrapped under non-extractable key \"{}\"", uri.wrap_key),
        Kind::Hmac => "as a non-extractable HMAC-SHA256 key".to_owned(),
    };
    println!("stored \"{}\" version {version} {what}", uri.object);
    Ok(())
}

fn rotate(uri: &str) -> Result<(), String> {
    let uri = parse_uri(uri, false)?;
    let hsm = Hsm::open(&uri).map_err(|e| e.to_string())?;
    let kind = hsm.kind_of(&uri.object).map_err(|e| e.to_string())?;
    let value = read_stdin_secret()?;
    let version = match kind {
        ObjectKind::WrappedValue => hsm.import_wrapped(&uri.object, &uri.wrap_key, &value),
        ObjectKind::HmacKey => hsm.import_hmac_key(&uri.object, &value),
    }
    .map_err(|e| e.to_string())?;
    // Keep the previous version for requests still in flight with it.
    let pruned = hsm
        .prune(&uri.object, version.saturating_sub(1))
        .map_err(|e| e.to_string())?;
    println!(
        "stored \"{}\" version {version}; removed {pruned} older version(s), kept version {}",
        uri.object,
        version.saturating_sub(1)
    );
    Ok(())
}

fn list(uri: &str) -> Result<(), String> {
    let uri = parse_uri(uri, true)?;
    let hsm = Hsm::open(&uri).map_err(|e| e.to_string())?;
    let objects = hsm.list().map_err(|e| e.to_string())?;
    println!(
        "{:<32} {:<14} {:>7}  {:<11} {:<9}",
        "LABEL", "KIND", "VERSION", "EXTRACTABLE", "SENSITIVE"
    );
    let flag = |b: Option<bool>| b.map_or("-", |b| if b { "yes" } else { "no" });
    for o in objects {
        println!(
            "{:<32} {:<14} {:>7}  {:<11} {:<9}",
            o.label,
            o.kind,
            o.version,
            flag(o.extractable),
            flag(o.sensitive)
        );
    }
    Ok(())
}
