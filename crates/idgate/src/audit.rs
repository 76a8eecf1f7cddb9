//! `idgate audit`: verify a trail (every hash, every link, every checkpoint signature),
//! show its records to an investigator (decrypted, filtered), and make the trail's keys.
//!
//! Exit codes of `verify`: 0 the trail verifies and ends with the gateway's closing
//! checkpoint (or, with `--allow-open`, ends anywhere after a checkpoint); 1 an entry does not
//! hold (the first one is named: file, line, entry, what is wrong), including an unsigned end
//! longer than the writer's checkpoint schedule and an anchor (`--expect-head`) the trail
//! does not reach; 2 a usage problem (no keys, an encrypted trail without its decryption
//! keys, an unreadable file); 3 the trail verifies up to its end but is not closed (still
//! being written, a crash, or entries cut off its end, an incomplete last line included),
//! or no checkpoint signs any of it (no entry at all included).

use std::io::BufReader;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use idgate_audit::reader::ReadError;
use idgate_audit::verify::{
    End, ExpectHead, GapAfter, Problem, Schedule, Summary, Verifier, VerifyError, VerifyOptions,
    printable,
};
use idgate_audit::{EncryptionKey, PublicKey, SigningKey};
use idgate_secrets::SecretRef;

use crate::EXIT_CONFIG;

mod show;

/// The trail verifies up to its end, which is not the gateway's closing checkpoint.
pub(crate) const EXIT_OPEN: u8 = 3;

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Verify a trail: every entry's hash and place in the chain, across files, and every
    /// checkpoint's signature.
    ///
    /// Stops at the first entry that does not hold and names it (file:line: entry N: what
    /// is wrong). Exit codes: 0 verified and closed by the gateway at shutdown; 1 broken
    /// (also: an unsigned end past the checkpoint schedule, or an --expect-head the trail
    /// does not reach); 2 usage (no key, an encrypted trail without --decrypt-key, unreadable
    /// file); 3 verified up to an end that is
    /// not closed (the file being written, a crash, or entries cut off the end; accepted with
    /// --allow-open), or nothing in it is signed (never accepted).
    Verify(VerifyArgs),
    /// Print the trail's records for an investigator: decrypted, filtered by time, caller,
    /// route and status, as JSON lines or a table.
    ///
    /// `show` reads; it does not verify (run `verify` for that). A line that does not
    /// decode is reported on stderr and skipped, and the exit code is then 1.
    Show(show::ShowArgs),
    /// Make the trail's keys: an Ed25519 signing key (a PKCS#8 file, or a key pair generated
    /// inside a PKCS#11 token) with its public key, and optionally an AES-256 encryption key.
    Keygen(KeygenArgs),
}

/// Where the trail is and the keys to read it.
#[derive(Args)]
pub(crate) struct TrailArgs {
    /// Trail files, or directories holding them (`audit-*.jsonl`), in any order: files are
    /// read in chain order (by the first entry's sequence number in their names). Default,
    /// with --config: its [audit] dir.
    #[arg(value_name = "PATH", required_unless_present = "config")]
    paths: Vec<PathBuf>,
    /// The gateway's configuration: its [audit] section gives the trail's directory, the
    /// public keys (public_keys) and the encryption keys (encryption_key,
    /// previous_encryption_keys, read through its [vault] when they are vault:
    /// references). No other secret it names is read.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// A key to decrypt encrypted files, as a secret reference (file:PATH, env:NAME,
    /// vault:… with --config's [vault], pkcs11:…); repeat for files written under several
    /// keys.
    #[arg(long = "decrypt-key", value_name = "SECRET_REF")]
    decrypt_keys: Vec<String>,
}

#[derive(Args)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    trail: TrailArgs,
    /// A public key that checkpoints may be signed with (PEM PUBLIC KEY, or 32 bytes in
    /// base64 or hex); repeat for a trail signed by several keys over time. Needed unless
    /// --config names public_keys.
    #[arg(long = "key", value_name = "FILE")]
    keys: Vec<PathBuf>,
    /// Accept a trail that does not end with the gateway's closing checkpoint (the file
    /// the gateway is writing now, or a part of the trail): exit 0 instead of 3. Never for
    /// files without any checkpoint. With --config (or --checkpoint-every and
    /// --checkpoint-interval), the entries after the last checkpoint must still fit the
    /// writer's schedule.
    #[arg(long)]
    allow_open: bool,
    /// The trail must hold this entry, with this hash: an anchor kept outside the trail's
    /// directory (the seq and hash of a checkpoint your SIEM received, or the head an
    /// earlier verify printed). Finds a trail cut back, or its newest files removed, which
    /// the files alone cannot show.
    #[arg(long, value_name = "SEQ[:HASH]")]
    expect_head: Option<ExpectHead>,
    /// The writer's checkpoint_every: more entries than this after the last checkpoint were
    /// not written by the gateway (default with --config: its [audit] checkpoint_every).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_every: Option<u64>,
    /// The writer's checkpoint_interval: a record after the last checkpoint whose time is
    /// later than this (and 5 s of grace) after it was not written by the gateway (default
    /// with --config: its [audit] checkpoint_interval).
    #[arg(long, value_name = "DURATION", value_parser = parse_interval)]
    checkpoint_interval: Option<Duration>,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    idgate_config::parse_duration(s).map_err(|e| e.to_string())
}

#[derive(Args)]
pub(crate) struct KeygenArgs {
    /// Write the signing key (audit-signing.pem, mode 0600), its public key
    /// (audit-signing.pub) and, with --encryption, audit-encryption.key (mode 0600) here.
    #[arg(long, value_name = "DIR", conflicts_with = "pkcs11")]
    out: Option<PathBuf>,
    /// Also make an AES-256 key for encryption at rest.
    #[arg(long, requires = "out")]
    encryption: bool,
    /// Generate the signing key pair inside this PKCS#11 token instead, as the next version
    /// of the URI's object= label (never extractable); its public key goes to --public-out.
    #[arg(long, value_name = "PKCS11_URI", requires = "public_out")]
    pkcs11: Option<String>,
    /// Where to write the public key of a key pair made with --pkcs11.
    #[arg(long, value_name = "FILE")]
    public_out: Option<PathBuf>,
}

pub(crate) fn run(command: AuditCommand) -> ExitCode {
    match command {
        AuditCommand::Verify(args) => verify(&args),
        AuditCommand::Show(args) => show::run(&args),
        AuditCommand::Keygen(args) => match keygen(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
    }
}

/// The trail's files in chain order: directories expanded to their `audit-*.jsonl`; all
/// sorted by name (which starts with the first entry's sequence number) when every name is
/// a trail file's, else in the order given.
pub(crate) fn trail_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let found =
                idgate_audit::files::list(p).map_err(|e| format!("{}: {e}", p.display()))?;
            if found.is_empty() {
                return Err(format!("{}: holds no audit-*.jsonl file", p.display()));
            }
            files.extend(found);
        } else if p.is_file() {
            files.push(p.clone());
        } else {
            return Err(format!("{}: no such file or directory", p.display()));
        }
    }
    let named = files.iter().all(|f| {
        f.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(idgate_audit::files::is_trail_file)
    });
    if named {
        files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    }
    files.dedup();
    Ok(files)
}

/// What a trail is read with: its files, the keys to decrypt them, and the public keys
/// `--config` lists.
pub(crate) struct Trail {
    pub(crate) files: Vec<PathBuf>,
    pub(crate) decrypt: Vec<EncryptionKey>,
    pub(crate) public_keys: Vec<PathBuf>,
    /// `checkpoint_every` and `checkpoint_interval`, from `--config`.
    pub(crate) schedule: Option<Schedule>,
}

impl TrailArgs {
    /// The files and keys, from the command line and the configuration's `[audit]`.
    ///
    /// The configuration is validated whole, but of its secrets only the trail's encryption
    /// keys are read: an auditor needs neither the gateway's upstream secrets nor its
    /// signing key.
    pub(crate) fn open(&self) -> Result<Trail, String> {
        let cwd = std::env::current_dir()
            .map_err(|e| format!("cannot read the current directory: {e}"))?;
        let mut given = Vec::new();
        for r in &self.decrypt_keys {
            given.push(SecretRef::parse(r, &cwd).map_err(|e| format!("--decrypt-key: {e}"))?);
        }
        let mut decrypt = Vec::new();
        let mut paths = self.paths.clone();
        let mut public_keys = Vec::new();
        let mut schedule = None;
        if let Some(file) = &self.config {
            let config = idgate_config::load_without_secrets(file).map_err(|errors| {
                errors
                    .0
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\nerror: ")
            })?;
            let audit = config
                .audit
                .ok_or_else(|| format!("{}: has no enabled [audit] section", file.display()))?;
            let w = audit.writer;
            // `vault:` keys are read through the process-wide client, as the gateway reads
            // them. Made only when one is to be read: of [vault], an auditor may need nothing.
            let from_vault = w
                .encryption_key
                .iter()
                .chain(&w.previous_encryption_keys)
                .chain(&given)
                .any(|r| matches!(r, SecretRef::Vault(_)));
            if let Some(v) = config.vault
                && from_vault
            {
                let client = idgate_secrets::vault::VaultClient::new(v)
                    .map_err(|e| format!("{}: vault: {e}", file.display()))?;
                idgate_secrets::vault::install(client);
            }
            let key_err =
                |key: &str, e: idgate_audit::KeyError| format!("{}: {key}: {e}", file.display());
            if let Some(r) = &w.encryption_key {
                decrypt
                    .push(EncryptionKey::load(r).map_err(|e| key_err("audit.encryption_key", e))?);
            }
            for r in &w.previous_encryption_keys {
                decrypt.push(
                    EncryptionKey::load(r)
                        .map_err(|e| key_err("audit.previous_encryption_keys", e))?,
                );
            }
            public_keys = w.public_keys;
            schedule = Some(Schedule {
                every: w.checkpoint_every,
                interval: w.checkpoint_interval,
            });
            if paths.is_empty() {
                paths.push(w.dir);
            }
        }
        for reference in &given {
            decrypt
                .push(EncryptionKey::load(reference).map_err(|e| format!("--decrypt-key: {e}"))?);
        }
        Ok(Trail {
            files: trail_files(&paths)?,
            decrypt,
            public_keys,
            schedule,
        })
    }
}

/// Prints one line of a report: its text from the trail (file names among it) escaped.
macro_rules! say {
    ($($t:tt)*) => {
        println!("{}", printable(&format!($($t)*)))
    };
}

fn verify(args: &VerifyArgs) -> ExitCode {
    let usage = |msg: String| {
        eprintln!("error: {}", printable(&msg));
        ExitCode::from(EXIT_CONFIG)
    };
    let Trail {
        files,
        decrypt,
        public_keys,
        schedule,
    } = match args.trail.open() {
        Ok(t) => t,
        Err(e) => return usage(e),
    };
    if args.keys.is_empty() && public_keys.is_empty() {
        return usage("no public key: give --key FILE, or list public_keys in [audit]".to_owned());
    }
    let mut keys = Vec::new();
    for k in args.keys.iter().chain(&public_keys) {
        match PublicKey::read(k) {
            Ok(key) => keys.push(key),
            Err(e) => return usage(format!("--key: {e}")),
        }
    }
    // The flags take the place of the configuration's; one alone bounds its axis only.
    let schedule = match (args.checkpoint_every, args.checkpoint_interval, schedule) {
        (None, None, s) => s,
        (every, interval, s) => Some(Schedule {
            every: every.or(s.map(|s| s.every)).unwrap_or(u64::MAX),
            interval: interval.or(s.map(|s| s.interval)).unwrap_or(Duration::MAX),
        }),
    };
    let mut verifier = Verifier::new(VerifyOptions { keys, decrypt });
    if let Some(s) = schedule {
        verifier = verifier.with_schedule(s);
    }
    if let Some(head) = args.expect_head {
        verifier = verifier.with_expected_head(head);
    }
    for f in &files {
        let name = f.display().to_string();
        let reader = match std::fs::File::open(f) {
            Ok(r) => BufReader::with_capacity(256 * 1024, r),
            Err(e) => return usage(format!("{name}: cannot read: {e}")),
        };
        match verifier.file(&name, reader) {
            Ok(()) => {}
            // An encrypted trail read without a key: nothing is known of it yet.
            Err(VerifyError::Broken(finding))
                if finding.problem == Problem::Read(ReadError::NoKey) =>
            {
                return usage(format!(
                    "{finding}: the trail is encrypted; give its keys with --decrypt-key (or --config)"
                ));
            }
            Err(VerifyError::Broken(finding)) => {
                eprintln!("error: {finding}");
                return ExitCode::from(1);
            }
            Err(e @ VerifyError::Io { .. }) => return usage(e.to_string()),
        }
    }
    match verifier.check_end() {
        Ok(()) => {}
        Err(VerifyError::Broken(finding)) => {
            eprintln!("error: {finding}");
            return ExitCode::from(1);
        }
        Err(e) => return usage(e.to_string()),
    }
    let summary = verifier.finish();
    report(&summary);
    if summary.checkpoints == 0 {
        // Anyone who can write the directory can write a chain, or empty files; only a
        // signature says the gateway wrote them.
        if summary.entries == 0 {
            println!(
                "unsigned: the files hold no entry, so no checkpoint signs anything: nothing was verified (not accepted with --allow-open)"
            );
        } else {
            println!(
                "unsigned: no checkpoint signs any of these {} entries: nothing shows the gateway wrote them (not accepted with --allow-open)",
                summary.entries
            );
        }
        return ExitCode::from(EXIT_OPEN);
    }
    if schedule.is_none() && summary.unsigned > 0 && !matches!(summary.end, End::Sealed) {
        println!(
            "unchecked: the {} entries after the last checkpoint were not held to the writer's checkpoint schedule: give --config, or --checkpoint-every and --checkpoint-interval",
            summary.unsigned
        );
    }
    match summary.end {
        End::Sealed => ExitCode::SUCCESS,
        _ if args.allow_open => ExitCode::SUCCESS,
        _ => ExitCode::from(EXIT_OPEN),
    }
}

/// What was verified, on stdout.
fn report(s: &Summary) {
    let range = match (s.first_seq, s.last_seq) {
        (Some(a), Some(b)) => format!(", entries {a} to {b}"),
        _ => String::new(),
    };
    say!(
        "verified: {} file{}, {} entries ({} records, {} checkpoints){range}",
        s.files,
        if s.files == 1 { "" } else { "s" },
        s.entries,
        s.records,
        s.checkpoints
    );
    for g in &s.gaps {
        let what = match g.after {
            GapAfter::Unclosed => format!(
                "the run before ended without closing its file after entry {} ({} bytes set aside): records it had not yet written are lost",
                g.last_seq, g.bytes_discarded
            ),
            GapAfter::Rotation => format!(
                "the file after the one closed for rotation at entry {} is missing (a crash during the rotation, or files removed) ({} bytes set aside): the entries it held are lost",
                g.last_seq, g.bytes_discarded
            ),
            GapAfter::Shutdown => format!(
                "{} bytes after the closing checkpoint at entry {} were set aside",
                g.bytes_discarded, g.last_seq
            ),
            GapAfter::Unknown => format!(
                "the run before ended after entry {} ({} bytes set aside); the file before this one was not given",
                g.last_seq, g.bytes_discarded
            ),
        };
        let vouched = match g.unsigned {
            Some((first, last)) => format!(
                "; entries {first} to {last} followed the last checkpoint of the run before, and no checkpoint of that run signs them: this start's checkpoint is the first"
            ),
            None => String::new(),
        };
        say!(
            "gap: {}:{}: entry {}: {what}{vouched}",
            g.file,
            g.line,
            g.seq
        );
    }
    if s.gap_count > s.gaps.len() as u64 {
        say!("gap: … and {} more gaps", s.gap_count - s.gaps.len() as u64);
    }
    for w in &s.warnings {
        say!("warning: {w}");
    }
    if s.warning_count > s.warnings.len() as u64 {
        say!(
            "warning: … and {} more starts without their own checkpoint",
            s.warning_count - s.warnings.len() as u64
        );
    }
    if s.dropped > 0 {
        say!(
            "dropped: the writer recorded {} record(s) it could not take (its queue was full, or it was closing)",
            s.dropped
        );
    }
    match &s.end {
        End::Sealed => say!("sealed: the trail ends with the gateway's closing checkpoint"),
        End::Rotated { file } => say!(
            "open: {file} was closed for rotation: the chain goes on in a later file, which was not given"
        ),
        End::Open { file, line, seq } => {
            say!(
                "open: {file}:{line}: the trail ends before entry {seq} without a closing checkpoint: the gateway is still writing it, stopped without closing it, or entries were cut off its end ({} entries after the last checkpoint are not signed)",
                s.unsigned
            );
            if let Some(bytes) = s.incomplete_end {
                say!(
                    "open: {file}:{line}: the line is incomplete ({bytes} bytes, no newline): the batch being written, a write the gateway did not finish, or the file was cut there; not verified"
                );
            }
        }
        End::Empty => say!("open: the files hold no entries"),
    }
    // What to keep elsewhere, to find later whether the trail was cut back (--expect-head).
    if let (Some(seq), Some(hash)) = (s.last_seq, s.head) {
        say!("head: entry {seq} {hash}");
    }
    if let Some((seq, hash)) = s.last_checkpoint {
        say!("last checkpoint: entry {seq} {hash} (anchor: --expect-head {seq}:{hash})");
    }
}

fn keygen(args: &KeygenArgs) -> Result<(), String> {
    use std::io::Write;
    if let Some(uri) = &args.pkcs11 {
        let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
        let uri =
            idgate_secrets::Pkcs11Uri::parse(uri.strip_prefix("pkcs11:").unwrap_or(uri), &cwd)
                .map_err(|e| format!("--pkcs11: {e}"))?;
        let hsm = idgate_secrets::pkcs11::Hsm::open(&uri).map_err(|e| format!("--pkcs11: {e}"))?;
        let (version, public) = hsm
            .generate_ed25519(&uri.object)
            .map_err(|e| format!("--pkcs11: {e}"))?;
        let public = PublicKey::from_bytes(public);
        let out = args
            .public_out
            .as_deref()
            .ok_or("--pkcs11 needs --public-out FILE")?;
        std::fs::write(out, public.to_pem()).map_err(|e| format!("{}: {e}", out.display()))?;
        println!(
            "signing key: {} version {version} (in the token, not extractable)",
            uri.object
        );
        println!("public key:  {} (key id {})", out.display(), public.kid());
        return Ok(());
    }
    let Some(dir) = &args.out else {
        return Err("give --out DIR, or --pkcs11 URI with --public-out FILE".to_owned());
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let write_private = |name: &str, content: &[u8]| -> Result<PathBuf, String> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        f.write_all(content)
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    };
    let (pem, public) = idgate_audit::generate_signing_key().map_err(|e| e.to_string())?;
    let key_path = write_private("audit-signing.pem", pem.as_bytes())?;
    // Read back as the gateway will: the file's mode and the key itself are checked.
    SigningKey::load(&SecretRef::File(key_path.clone())).map_err(|e| e.to_string())?;
    let pub_path = dir.join("audit-signing.pub");
    std::fs::write(&pub_path, public.to_pem())
        .map_err(|e| format!("{}: {e}", pub_path.display()))?;
    println!("signing key: {} (keep it secret)", key_path.display());
    println!(
        "public key:  {} (key id {})",
        pub_path.display(),
        public.kid()
    );
    if args.encryption {
        let (key, text) = EncryptionKey::generate().map_err(|e| e.to_string())?;
        let mut line = text.as_bytes().to_vec();
        line.push(b'\n');
        let path = write_private("audit-encryption.key", &line)?;
        zeroize::Zeroize::zeroize(&mut line);
        println!(
            "encryption key: {} (key id {}; keep it secret)",
            path.display(),
            key.kid()
        );
    }
    Ok(())
}
