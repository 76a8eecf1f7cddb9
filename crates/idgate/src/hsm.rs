//! `idgate hsm`: put upstream secrets into a PKCS#11 token and look at what is there,
//! without a secret ever passing through argv, the environment or a log.

use anyhow::anyhow;
use std::io::{BufRead, IsTerminal, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use idgate_secrets::hmac::MIN_OWN_KEY_BYTES;
use idgate_secrets::pkcs11::{self, Hsm, HsmError, ObjectKind, Pkcs11Uri, SlotChoice};
use idgate_secrets::{ExposeSecret, SecretRef, SecretString};
use rustix::termios::{LocalModes, OptionalActions, Termios, tcgetattr, tcsetattr};
use zeroize::Zeroizing;

#[derive(Subcommand)]
pub(crate) enum HsmCommand {
    /// Initialise a token: set its label, Security Officer PIN and user PIN.
    ///
    /// The PINs come from files (--so-pin-file, --pin-file) or, for those not given, from
    /// standard input, one per line: the SO PIN first, then the user PIN. Never from the
    /// command line or the environment. A slot that already holds an initialised token is
    /// refused unless --force: initialising erases every object in it.
    InitToken(InitToken),
    /// Store a secret read from standard input in the token.
    ///
    /// `--kind wrapped` (for static API keys) stores it encrypted under the token's
    /// non-extractable AES-256 key; `--kind hmac` (for Sumsub and Veriff request signing,
    /// pseudonyms, webhook signatures) stores it as a non-extractable HMAC key that never
    /// leaves the token. An HMAC key shorter than 32 bytes is stored with a warning: a
    /// provider's signing secret is used as issued, but the gateway refuses a pseudonym key
    /// or a subscriber's secret that short. The value is read from stdin, never from the
    /// command line: `idgate hsm import-secret --uri ... < key.txt`; typed at a terminal, it
    /// is one line and not echoed.
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
    /// Store a new version of an existing secret (read from stdin, as import-secret reads
    /// it) and delete versions older than the previous one. A running gateway picks the new
    /// version up within its credential's `refresh_interval`.
    Rotate {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Args)]
pub(crate) struct InitToken {
    /// The PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so (Debian's SoftHSM2).
    #[arg(long, value_name = "FILE")]
    module_path: PathBuf,
    /// The token's label (1 to 32 bytes), as in the URI's token=.
    #[arg(long)]
    label: String,
    /// The slot id to initialise. Without it: the slot already holding a token with this
    /// label, else the first slot with an uninitialised token.
    #[arg(long)]
    slot: Option<u64>,
    /// A file holding the Security Officer PIN (mode 0600 or stricter).
    #[arg(long, value_name = "FILE")]
    so_pin_file: Option<PathBuf>,
    /// A file holding the user PIN (mode 0600 or stricter): the gateway's pin-source.
    #[arg(long, value_name = "FILE")]
    pin_file: Option<PathBuf>,
    /// Initialise the slot even if it holds an initialised token, erasing everything in it.
    #[arg(long)]
    force: bool,
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

fn parse_uri(uri: &str, token_only: bool) -> anyhow::Result<Pkcs11Uri> {
    let rest = uri
        .strip_prefix("pkcs11:")
        .ok_or_else(|| anyhow!("--uri must start with pkcs11:"))?;
    let base = Path::new(".");
    if token_only {
        Pkcs11Uri::parse_token(rest, base)
    } else {
        Pkcs11Uri::parse(rest, base)
    }
    .map_err(anyhow::Error::from)
}

/// What to tell about an HMAC key of `len` bytes, when it is shorter than a key the gateway
/// signs with on its own behalf may be. The token does not say what a key is for, so a short
/// one is stored all the same: a provider's signing secret (Sumsub, Veriff) is used at the
/// length the provider issued it. A pseudonym key or a subscriber's secret that short is
/// refused by the gateway, when it loads the key and before every signature.
fn short_hmac_key_warning(len: usize) -> Option<String> {
    (len < MIN_OWN_KEY_BYTES).then(|| {
        format!(
            "warning: the HMAC key is {len} bytes long. Stored: a provider's request-signing secret (Sumsub, Veriff) is used at the length the provider issued it, where the token signs with a key that short (SoftHSM2 does not). As a masking pseudonym_key or a webhook subscriber's secret the gateway refuses it: those need at least {MIN_OWN_KEY_BYTES} bytes (for example `openssl rand -base64 32`), and signing with this label fails while its newest version is shorter"
        )
    })
}

/// Longest secret typed at a terminal (a terminal's line is shorter still).
const MAX_TYPED_SECRET: usize = 64 * 1024;

/// The secret on standard input: all of it when piped in; typed at a terminal, one line,
/// prompted for on stderr and not echoed.
fn read_stdin_secret() -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let stdin = std::io::stdin();
    let mut buf = if stdin.is_terminal() {
        let quiet = EchoOff::new(std::io::stdin())
            .map_err(|e| anyhow!("cannot turn off the terminal's echo: {e}"))?;
        quiet.restore_on_interrupt();
        eprint!("secret (not shown; end with Enter): ");
        read_typed_secret(&mut stdin.lock())?
    } else {
        let mut buf = Zeroizing::new(Vec::new());
        stdin
            .lock()
            .read_to_end(&mut buf)
            .map_err(|e| anyhow!("cannot read the secret from stdin: {e}"))?;
        buf
    };
    // A final newline from `echo` or an editor is not part of the secret.
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    if buf.is_empty() {
        return Err(anyhow!("no secret on stdin"));
    }
    Ok(buf)
}

/// One line typed at a terminal, read into a buffer that never grows, so no copy of the
/// secret is left behind in freed memory.
fn read_typed_secret(input: &mut impl BufRead) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let mut line = Zeroizing::new(Vec::with_capacity(MAX_TYPED_SECRET + 1));
    Read::take(&mut *input, MAX_TYPED_SECRET as u64 + 1)
        .read_until(b'\n', &mut line)
        .map_err(|e| anyhow!("cannot read the secret from stdin: {e}"))?;
    if line.last() != Some(&b'\n') && line.len() > MAX_TYPED_SECRET {
        return Err(anyhow!(
            "the secret typed is longer than {MAX_TYPED_SECRET} bytes: pipe it in instead"
        ));
    }
    Ok(line)
}

pub(crate) fn run(cmd: HsmCommand) -> ExitCode {
    let result = match cmd {
        HsmCommand::InitToken(args) => init_token(&args),
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

/// Longest PIN line read from standard input; PKCS#11 PINs are far shorter.
const MAX_PIN_LINE: usize = 1024;

/// Reads the PINs that have no file from standard input, one per line, in the order given.
/// At a terminal each is prompted for on stderr and not echoed.
fn read_stdin_pins(names: &[&str]) -> anyhow::Result<Vec<SecretString>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return read_pins(&mut stdin.lock(), names, |_| {});
    }
    let quiet = EchoOff::new(std::io::stdin())
        .map_err(|e| anyhow!("cannot turn off the terminal's echo: {e}"))?;
    quiet.restore_on_interrupt();
    read_pins(&mut stdin.lock(), names, |name| eprint!("{name}: "))
}

/// Reads one PIN per line for each of `names`, calling `prompt` before each. A line is read
/// into a buffer that never grows, so no copy of a PIN is left behind in freed memory.
fn read_pins(
    input: &mut impl BufRead,
    names: &[&str],
    mut prompt: impl FnMut(&str),
) -> anyhow::Result<Vec<SecretString>> {
    names
        .iter()
        .map(|name| {
            prompt(name);
            let mut line = Zeroizing::new(Vec::with_capacity(MAX_PIN_LINE + 1));
            Read::take(&mut *input, MAX_PIN_LINE as u64 + 1)
                .read_until(b'\n', &mut line)
                .map_err(|e| anyhow!("cannot read the {name} from stdin: {e}"))?;
            if line.last() == Some(&b'\n') {
                line.pop();
            } else if line.len() > MAX_PIN_LINE {
                return Err(anyhow!(
                    "the {name} on stdin is longer than {MAX_PIN_LINE} bytes"
                ));
            }
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let pin = std::str::from_utf8(&line)
                .map_err(|_| anyhow!("the {name} on stdin is not UTF-8"))?;
            if pin.is_empty() {
                return Err(anyhow!("no {name} on stdin (one PIN per line)"));
            }
            Ok(SecretString::from(pin.to_owned()))
        })
        .collect()
}

/// A terminal's echo turned off (but for the newline ending a line) until dropped, which
/// puts back the settings it found.
struct EchoOff<F: AsFd> {
    tty: F,
    saved: Termios,
}

impl<F: AsFd> EchoOff<F> {
    fn new(tty: F) -> std::io::Result<Self> {
        let saved = tcgetattr(&tty)?;
        let mut quiet = saved.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        quiet.local_modes.insert(LocalModes::ECHONL);
        tcsetattr(&tty, OptionalActions::Now, &quiet)?;
        Ok(Self { tty, saved })
    }

    /// Ctrl-C would end the process without running `drop`: from here on it puts the
    /// terminal's settings back first, then exits as interrupted.
    fn restore_on_interrupt(&self) {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
        else {
            return;
        };
        // Registered here, before the first prompt, rather than in the thread.
        let Ok(mut interrupt) = rt.block_on(async { signal(SignalKind::interrupt()) }) else {
            return;
        };
        let saved = self.saved.clone();
        std::thread::spawn(move || {
            if rt.block_on(interrupt.recv()).is_some() {
                let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, &saved);
                eprintln!();
                std::process::exit(130);
            }
        });
    }
}

impl<F: AsFd> Drop for EchoOff<F> {
    fn drop(&mut self) {
        let _ = tcsetattr(&self.tty, OptionalActions::Now, &self.saved);
    }
}

fn pin_from_file(path: &Path, name: &str) -> anyhow::Result<SecretString> {
    SecretRef::File(path.to_owned())
        .resolve()
        .map_err(|e| anyhow!("cannot read the {name}: {e}"))
}

fn init_token(args: &InitToken) -> anyhow::Result<()> {
    const SO: &str = "Security Officer PIN";
    const USER: &str = "user PIN";
    let mut from_stdin = Vec::new();
    if args.so_pin_file.is_none() {
        from_stdin.push(SO);
    }
    if args.pin_file.is_none() {
        from_stdin.push(USER);
    }
    let mut stdin_pins = read_stdin_pins(&from_stdin)?.into_iter();
    let mut pin = |file: &Option<PathBuf>, name: &str| match file {
        Some(path) => pin_from_file(path, name),
        None => stdin_pins.next().ok_or_else(|| anyhow!("no {name}")),
    };
    let so_pin = pin(&args.so_pin_file, SO)?;
    let user_pin = pin(&args.pin_file, USER)?;
    if so_pin.expose_secret() == user_pin.expose_secret() {
        return Err(anyhow!(
            "the Security Officer PIN and the user PIN must differ"
        ));
    }
    let choice = args.slot.map_or(SlotChoice::ByLabel, SlotChoice::Id);
    let done = pkcs11::init_token(
        &args.module_path,
        choice,
        &args.label,
        &so_pin,
        &user_pin,
        args.force,
    )
    .map_err(|e| match e {
        HsmError::TokenExists { .. } => anyhow!(
            "{e}: refusing to initialise it again, which erases every object in it (--force does)"
        ),
        e => e.into(),
    })?;
    if let Some(old) = &done.replaced {
        println!(
            "erased the token \"{old}\" in slot {} and everything in it",
            done.slot
        );
    }
    match done.slot_now {
        Some(now) if now != done.slot => println!(
            "initialised token \"{}\" in slot {} (now shown in slot {now})",
            args.label, done.slot
        ),
        _ => println!("initialised token \"{}\" in slot {}", args.label, done.slot),
    }
    println!(
        "the gateway logs in with the user PIN: pkcs11:token={};object=...?module-path={}&pin-source=file:<user PIN file>",
        args.label,
        args.module_path.display()
    );
    Ok(())
}

fn import(uri: &str, kind: Kind) -> anyhow::Result<()> {
    let uri = parse_uri(uri, false)?;
    let value = read_stdin_secret()?;
    let hsm = Hsm::open(&uri)?;
    let version = match kind {
        Kind::Wrapped => hsm.import_wrapped(&uri.object, &uri.wrap_key, &value),
        Kind::Hmac => hsm.import_hmac_key(&uri.object, &value),
    }?;
    let what = match kind {
        Kind::Wrapped => format!("wrapped under non-extractable key \"{}\"", uri.wrap_key),
        Kind::Hmac => "as a non-extractable HMAC-SHA256 key".to_owned(),
    };
    println!("stored \"{}\" version {version} {what}", uri.object);
    if let Kind::Hmac = kind
        && let Some(warning) = short_hmac_key_warning(value.len())
    {
        eprintln!("{warning}");
    }
    Ok(())
}

fn rotate(uri: &str) -> anyhow::Result<()> {
    let uri = parse_uri(uri, false)?;
    let hsm = Hsm::open(&uri)?;
    let kind = hsm.kind_of(&uri.object)?;
    let value = read_stdin_secret()?;
    let version = match kind {
        ObjectKind::WrappedValue => hsm.import_wrapped(&uri.object, &uri.wrap_key, &value),
        ObjectKind::HmacKey => hsm.import_hmac_key(&uri.object, &value),
    }?;
    // Keep the previous version for requests still in flight with it.
    let pruned = hsm.prune(&uri.object, version.saturating_sub(1))?;
    println!(
        "stored \"{}\" version {version}; removed {pruned} older version(s), kept version {}",
        uri.object,
        version.saturating_sub(1)
    );
    if kind == ObjectKind::HmacKey
        && let Some(warning) = short_hmac_key_warning(value.len())
    {
        eprintln!("{warning}");
    }
    Ok(())
}

fn list(uri: &str) -> anyhow::Result<()> {
    let uri = parse_uri(uri, true)?;
    let hsm = Hsm::open(&uri)?;
    let objects = hsm.list()?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::{BufReader, Write};

    /// A pseudo-terminal: the side a user types into and sees, and the process's side.
    fn pty() -> (File, File) {
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
        let user = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
        grantpt(&user).unwrap();
        unlockpt(&user).unwrap();
        let name = ptsname(&user, Vec::new()).unwrap();
        let process = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(name.to_str().unwrap())
            .unwrap();
        (File::from(user), process)
    }

    /// What the user's side of the terminal shows up to `marker`, written by the process.
    fn shown_until(user: &mut File, process: &mut File, marker: &str) -> String {
        process.write_all(marker.as_bytes()).unwrap();
        let mut shown = Vec::new();
        let mut byte = [0u8; 1];
        while !shown.ends_with(marker.as_bytes()) {
            user.read_exact(&mut byte).unwrap();
            shown.push(byte[0]);
        }
        String::from_utf8_lossy(&shown).into_owned()
    }

    #[test]
    fn pins_typed_at_a_terminal_are_not_shown_and_its_echo_comes_back() {
        let (mut user, mut process) = pty();
        let pins = {
            let _quiet = EchoOff::new(&process).unwrap();
            user.write_all(b"so-pin-1\nuser-pin-2\n").unwrap();
            read_pins(
                &mut BufReader::new(&process),
                &["SO PIN", "user PIN"],
                |_| {},
            )
            .unwrap()
        };
        assert_eq!(pins[0].expose_secret(), "so-pin-1");
        assert_eq!(pins[1].expose_secret(), "user-pin-2");
        let shown = shown_until(&mut user, &mut process, "END");
        assert!(!shown.contains("pin"), "the terminal showed {shown:?}");
        assert!(
            tcgetattr(&process)
                .unwrap()
                .local_modes
                .contains(LocalModes::ECHO)
        );
    }

    #[test]
    fn a_terminal_gets_its_echo_back_when_reading_a_pin_fails() {
        let (mut user, process) = pty();
        let read = {
            let _quiet = EchoOff::new(&process).unwrap();
            user.write_all(b"\n").unwrap();
            read_pins(&mut BufReader::new(&process), &["SO PIN"], |_| {})
        };
        assert!(read.is_err());
        assert!(
            tcgetattr(&process)
                .unwrap()
                .local_modes
                .contains(LocalModes::ECHO)
        );
    }

    #[test]
    fn a_secret_typed_at_a_terminal_is_one_line_and_not_shown() {
        let (mut user, mut process) = pty();
        let secret = {
            let _quiet = EchoOff::new(&process).unwrap();
            user.write_all(b"typed-secret-7f3a\n").unwrap();
            read_typed_secret(&mut BufReader::new(&process)).unwrap()
        };
        assert_eq!(secret.as_slice(), b"typed-secret-7f3a\n");
        let shown = shown_until(&mut user, &mut process, "END");
        assert!(!shown.contains("typed"), "the terminal showed {shown:?}");
        let long = vec![b'x'; MAX_TYPED_SECRET + 1];
        assert!(read_typed_secret(&mut &long[..]).is_err());
        let exact = vec![b'x'; MAX_TYPED_SECRET];
        assert_eq!(
            read_typed_secret(&mut &exact[..]).unwrap().len(),
            MAX_TYPED_SECRET
        );
    }

    #[test]
    fn an_hmac_key_shorter_than_32_bytes_is_stored_with_a_warning() {
        let warning = short_hmac_key_warning(21).unwrap();
        assert!(
            warning.starts_with("warning: the HMAC key is 21 bytes long")
                && warning.contains("pseudonym_key")
                && warning.contains("at least 32"),
            "{warning}"
        );
        assert_eq!(short_hmac_key_warning(32), None);
    }

    #[test]
    fn pins_piped_in_are_read_one_per_line() {
        let pins = read_pins(&mut &b"so\r\nuser\n"[..], &["SO PIN", "user PIN"], |_| {}).unwrap();
        assert_eq!(pins[0].expose_secret(), "so");
        assert_eq!(pins[1].expose_secret(), "user");
        let pins = read_pins(&mut &b"so\nuser"[..], &["SO PIN", "user PIN"], |_| {}).unwrap();
        assert_eq!(pins[1].expose_secret(), "user");
        assert!(read_pins(&mut &b"so\n\n"[..], &["SO PIN", "user PIN"], |_| {}).is_err());
        let long = vec![b'1'; MAX_PIN_LINE + 1];
        assert!(read_pins(&mut &long[..], &["SO PIN"], |_| {}).is_err());
    }
}
