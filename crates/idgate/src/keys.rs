//! `idgate keys`: create, list, revoke and rotate caller API keys in the gateway's store.
//!
//! A key is printed once, on stdout, when it is made; the store keeps only its keyed hash,
//! and a tag over what the key grants that only the pepper's holder can make (see
//! `idgate_auth::api_key`). The CLI shares the store file with a running gateway (see
//! `idgate_store::RedbStore`), which picks every change up within its `reload_interval`,
//! without a restart. Only `create` makes a store file; the other commands need one.

use anyhow::anyhow;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use idgate_auth::api_key::{self, KeySpec, NewApiKey, Pepper};
use idgate_config::{ApiKeyStoreConfig, StateBackend};
use idgate_secrets::{ExposeSecret, SecretRef};
use idgate_store::{ApiKeyStore, KeyState, RedbStore, StateStore, StoredKey};
use idgate_tls::SpiffeId;

use crate::EXIT_CONFIG;

#[derive(Subcommand)]
pub(crate) enum KeysCommand {
    /// Create an API key and print it once on stdout.
    ///
    /// The key is never shown again: only its keyed hash is stored. Routes admit it with
    /// `allow = ["apikey:NAME"]` when their `auth` includes "api_key".
    Create {
        #[command(flatten)]
        store: StoreArgs,
        /// A name for the key's holder; route allow lists refer to it as apikey:NAME.
        #[arg(long)]
        name: String,
        /// Scopes the key grants, separated by commas.
        #[arg(long, value_delimiter = ',', value_name = "SCOPE,...")]
        scopes: Vec<String>,
        /// Lifetime, such as 90d, 12h or 2w (default: no expiry).
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
        /// Accept the key only over mTLS from this workload (its SPIFFE ID).
        #[arg(long, value_name = "SPIFFE_ID")]
        bind_spiffe: Option<String>,
        /// Allow a name an active or rotated key already has: the new key is for the same
        /// holder. Keys with one name are one principal (allow lists, tiers, the objects
        /// either creates); to replace a key, use `rotate`.
        #[arg(long)]
        same_holder: bool,
    },
    /// List keys: id, name, scopes, dates, binding and state, never a key or a hash.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key. Running gateways refuse it within their reload_interval.
    Revoke {
        #[command(flatten)]
        store: StoreArgs,
        /// The key's id (the part after idg_, as `list` shows it).
        #[arg(long)]
        id: String,
    },
    /// Replace a key with a new one (same name, scopes and binding), printed once; the old
    /// key keeps working for a grace period.
    Rotate {
        #[command(flatten)]
        store: StoreArgs,
        /// The id of the key to replace.
        #[arg(long)]
        id: String,
        /// How long the old key stays valid, such as 24h or 0s.
        #[arg(long, value_name = "DURATION", default_value = "24h")]
        grace: String,
        /// Lifetime of the new key (default: the old key's lifetime, or no expiry).
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
}

/// Where the store is: the gateway's configuration, or the store and pepper directly.
#[derive(Args)]
pub(crate) struct StoreArgs {
    /// The gateway's configuration file; its [api_keys] section names the store and pepper.
    #[arg(short, long, env = "IDGATE_CONFIG")]
    config: Option<PathBuf>,
    /// The store file, instead of --config (with --pepper).
    #[arg(long, value_name = "FILE", requires = "pepper")]
    store: Option<PathBuf>,
    /// The pepper's secret reference (file:PATH, env:NAME or pkcs11:URI), with --store.
    #[arg(long, value_name = "SECRET_REF", requires = "store")]
    pepper: Option<String>,
    /// With the keys in Redis: the ACL user to write them as, instead of the gateway's
    /// (`[state] username`), whose access to the key records is best read-only.
    #[arg(long, value_name = "NAME", requires = "redis_password")]
    redis_user: Option<String>,
    /// The password of --redis-user (file:PATH, env:NAME, vault: or pkcs11:).
    #[arg(long, value_name = "SECRET_REF", requires = "redis_user")]
    redis_password: Option<String>,
}

/// A failure of a CLI command, with the exit code it maps to (`idgate keys`, `idgate
/// webhooks`).
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_CONFIG,
            message: message.into(),
        }
    }

    pub(crate) fn run(message: impl ToString) -> Self {
        Self {
            code: 1,
            message: message.to_string(),
        }
    }
}

pub(crate) fn run(command: KeysCommand) -> ExitCode {
    let result = match command {
        KeysCommand::Create {
            store,
            name,
            scopes,
            expires,
            bind_spiffe,
            same_holder,
        } => create(
            &store,
            &name,
            scopes,
            expires.as_deref(),
            bind_spiffe.as_deref(),
            same_holder,
        ),
        KeysCommand::List { store, json } => list(&store, json),
        KeysCommand::Revoke { store, id } => revoke(&store, &id),
        KeysCommand::Rotate {
            store,
            id,
            grace,
            expires,
        } => rotate(&store, &id, &grace, expires.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            for line in f.message.lines() {
                eprintln!("error: {line}");
            }
            ExitCode::from(f.code)
        }
    }
}

/// The store file and the pepper's reference, from --store/--pepper or the configuration.
fn locate(args: &StoreArgs) -> Result<(Location, SecretRef), Failure> {
    let (location, pepper) = locate_as_configured(args)?;
    let (Some(user), Some(password)) = (&args.redis_user, &args.redis_password) else {
        return Ok((location, pepper));
    };
    match location {
        Location::State(StateBackend::Redis(mut redis)) => {
            let base = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
            let password = SecretRef::parse(password, &base)
                .map_err(|e| Failure::config(format!("--redis-password: {e}")))?;
            // Named as the flag it came from: opening the store would name `state.password`.
            password
                .check_available()
                .map_err(|e| Failure::config(format!("--redis-password: {e}")))?;
            redis.username = Some(user.clone());
            redis.password = Some(password);
            Ok((Location::State(StateBackend::Redis(redis)), pepper))
        }
        other => Err(Failure::config(format!(
            "--redis-user: the keys are kept in {other}, not in Redis"
        ))),
    }
}

fn locate_as_configured(args: &StoreArgs) -> Result<(Location, SecretRef), Failure> {
    if let (Some(store), Some(pepper)) = (&args.store, &args.pepper) {
        let base = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let pepper = SecretRef::parse(pepper, &base)
            .map_err(|e| Failure::config(format!("--pepper: {e}")))?;
        return Ok((Location::File(store.clone()), pepper));
    }
    let Some(path) = &args.config else {
        return Err(Failure::config(
            "say where the keys are kept: --config FILE (with an [api_keys] section), or --store FILE --pepper SECRET_REF",
        ));
    };
    // Of the secrets the configuration names, only the pepper and the Redis password are
    // used, each read when a command needs it (`read_pepper`, `open_state`), a failure
    // naming it: the gateway's upstream secrets are never read.
    match idgate_config::load_without_secrets(path) {
        Ok(config) => match config.api_keys {
            Some(a) => {
                // The pepper or the Redis password may be `vault:` references, read through
                // the process-wide client, as the gateway does.
                if let Some(v) = &config.vault {
                    let client = idgate_secrets::vault::VaultClient::new(v.clone())
                        .map_err(|e| Failure::config(format!("vault: {e}")))?;
                    idgate_secrets::vault::install(client);
                }
                match a.store {
                    ApiKeyStoreConfig::File(path) => Ok((Location::File(path), a.pepper)),
                    ApiKeyStoreConfig::State => Ok((Location::State(config.state), a.pepper)),
                }
            }
            None => Err(no_section(path)),
        },
        // The rest of the configuration may not hold where the command runs (a file it
        // names that is not there, say); managing keys in a file needs only [api_keys].
        Err(errors) => {
            let all = || {
                let lines: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                Failure::config(lines.join("\n"))
            };
            // Problems in [api_keys] itself (or a file that is not TOML) are reported as they are.
            if errors
                .0
                .iter()
                .any(|e| e.key.is_empty() || e.key.starts_with("api_keys"))
            {
                return Err(all());
            }
            match api_keys_section(path) {
                Ok(Some((store, pepper))) => {
                    let found = (Location::File(store), pepper);
                    eprintln!(
                        "note: {} has problems outside [api_keys] (see `idgate check`); using its [api_keys] section",
                        path.display()
                    );
                    Ok(found)
                }
                Ok(None) => Err(no_section(path)),
                Err(()) => Err(all()),
            }
        }
    }
}

fn no_section(path: &Path) -> Failure {
    Failure::config(format!(
        "{}: no [api_keys] section; add one with store = \"...\" and pepper = \"file:...\"",
        path.display()
    ))
}

/// Only the `[api_keys]` section of a configuration file, read as the gateway reads it: the
/// store path and `file:` references relative to the file's directory.
fn api_keys_section(path: &Path) -> Result<Option<(PathBuf, SecretRef)>, ()> {
    let text = std::fs::read_to_string(path).map_err(|_| ())?;
    let table: toml::Table = toml::from_str(&text).map_err(|_| ())?;
    let Some(section) = table.get("api_keys").and_then(toml::Value::as_table) else {
        return Ok(None);
    };
    // Keys in the shared [state] backend need the rest of the configuration to be valid.
    let (Some(store), Some(pepper)) = (
        section.get("store").and_then(toml::Value::as_str),
        section.get("pepper").and_then(toml::Value::as_str),
    ) else {
        return Err(());
    };
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let pepper = SecretRef::parse(pepper, base).map_err(|_| ())?;
    Ok(Some((base.join(store), pepper)))
}

/// Where the keys are: a redb file of their own, or the shared `[state]` backend (Redis).
enum Location {
    File(PathBuf),
    State(StateBackend),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::State(backend) => write!(f, "the [state] backend ({})", backend.kind()),
        }
    }
}

/// An opened key store and the runtime its calls run on: the CLI is synchronous, so each
/// call is driven to its end with [`Opened::run`]. A Redis store's connections are driven
/// by that runtime's worker while the CLI waits.
struct Opened {
    store: StateStore,
    runtime: tokio::runtime::Runtime,
}

impl Opened {
    fn run<F: Future>(&self, call: F) -> F::Output {
        self.runtime.block_on(call)
    }
}

/// What a command does with a store file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Writes, making the file (mode 0600, owned by whoever runs the command) if need be:
    /// `create` only.
    Create,
    /// Writes an existing file.
    Write,
    /// Reads; a missing file reads as no keys.
    Read,
}

fn open_store(location: &Location, access: Access) -> Result<Opened, Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| Failure::run(format!("cannot start the runtime: {e}")))?;
    let wait = idgate_store::DEFAULT_WAIT;
    let store = match (location, access) {
        (Location::File(path), Access::Create) => RedbStore::open(path, wait)
            .map(StateStore::from)
            .map_err(Failure::run)?,
        (Location::File(path), Access::Write) => RedbStore::open_existing(path, wait)
            .map_err(Failure::run)?
            .map(StateStore::from)
            .ok_or_else(|| no_store(path))?,
        (Location::File(path), Access::Read) => {
            StateStore::from(RedbStore::reader(path).with_wait(wait))
        }
        (Location::State(backend), _) => {
            let _inside = runtime.enter();
            // The CLI may wait for its connection and its writes longer than a request.
            idgate_proxy::state::open_state(backend)
                .map_err(Failure::run)?
                .patient(Duration::from_secs(10))
        }
    };
    Ok(Opened { store, runtime })
}

fn no_store(path: &Path) -> Failure {
    Failure::run(format!(
        "no key store at {}; `idgate keys create` makes it",
        path.display()
    ))
}

fn read_pepper(reference: &SecretRef) -> Result<Pepper, Failure> {
    Pepper::from_ref(reference).map_err(|e| {
        Failure::config(format!(
            "{e}\nto make a pepper: (umask 077; openssl rand -base64 32 > /etc/idgate/apikey-pepper)"
        ))
    })
}

/// Warns about keys the configured pepper cannot verify: a pepper changed by mistake would
/// otherwise make every key fail in silence, and a record changed in the store by someone
/// without the pepper would be refused without a word here.
fn warn_unverifiable(keys: &[StoredKey], pepper: &Pepper) {
    let foreign = keys.iter().filter(|k| k.pepper_id != pepper.id()).count();
    if foreign > 0 {
        eprintln!(
            "warning: {foreign} key(s) in the store were made with another pepper than the configured one; the gateway refuses them"
        );
    }
    let altered: Vec<&str> = keys
        .iter()
        .filter(|k| k.pepper_id == pepper.id() && !pepper.vouches_for(k))
        .map(|k| k.id.as_str())
        .collect();
    if !altered.is_empty() {
        eprintln!(
            "warning: the record(s) of {} do not verify with the pepper (changed in the store without it, or without a tag); the gateway refuses them",
            altered.join(", ")
        );
    }
}

/// Refuses a name any key has had, unless the new key is meant for the same holder: keys
/// with one name are one principal everywhere a name counts, and a revoked or expired
/// key's name still owns the objects its keys created (for the ownership retention), so a
/// new holder given it would read them.
fn check_name_free(keys: &[StoredKey], name: &str, now: SystemTime) -> Result<(), Failure> {
    let (usable, spent): (Vec<&StoredKey>, Vec<&StoredKey>) = keys
        .iter()
        .filter(|k| k.name == name)
        .partition(|k| k.is_usable(now));
    let describe = |ks: &[&StoredKey]| {
        ks.iter()
            .map(|k| format!("{} ({})", k.id, k.state(now)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !usable.is_empty() {
        return Err(Failure::run(format!(
            "the name {name} is held by {}; keys with one name are one principal: they share allow lists, tiers and the objects either creates\nto replace a key, use `idgate keys rotate --id ID`; to give the same holder another key, add --same-holder",
            describe(&usable)
        )));
    }
    if !spent.is_empty() {
        return Err(Failure::run(format!(
            "the name {name} was held by {}; the objects those keys created stay owned by the name until the ownership retention ends, so a new holder given it would read them\ngive a new holder a name of its own; to give the same holder a new key, add --same-holder",
            describe(&spent)
        )));
    }
    Ok(())
}

fn create(
    args: &StoreArgs,
    name: &str,
    scopes: Vec<String>,
    expires: Option<&str>,
    bind_spiffe: Option<&str>,
    same_holder: bool,
) -> Result<(), Failure> {
    let now = SystemTime::now();
    let expires_at = match expires {
        None => None,
        Some(s) => Some(now + positive(s, "--expires")?),
    };
    let bound = match bind_spiffe {
        None => None,
        Some(s) => {
            Some(SpiffeId::new(s).map_err(|e| Failure::config(format!("--bind-spiffe {s}: {e}")))?)
        }
    };
    let spec = KeySpec::new(name, scopes, expires_at, bound)
        .map_err(|e| Failure::config(e.to_string()))?;
    let (location, pepper_ref) = locate(args)?;
    let pepper = read_pepper(&pepper_ref)?;
    let store = open_store(&location, Access::Create)?;
    if !same_holder {
        let keys = store.run(store.store.list()).map_err(Failure::run)?;
        check_name_free(&keys, &spec.name, now)?;
    }
    let new = api_key::generate(&pepper, &spec, now).map_err(Failure::run)?;
    store
        .run(store.store.insert(&new.record))
        .map_err(Failure::run)?;
    if let Ok(keys) = store.run(store.store.list()) {
        warn_unverifiable(&keys, &pepper);
    }
    eprintln!("created API key {}", describe(&new.record));
    show_once(&new);
    Ok(())
}

fn list(args: &StoreArgs, json: bool) -> Result<(), Failure> {
    let (location, pepper_ref) = locate(args)?;
    let store = open_store(&location, Access::Read)?;
    let keys = store.run(store.store.list()).map_err(Failure::run)?;
    // The pepper is not needed to list; it is read only to warn about keys it cannot verify.
    match Pepper::from_ref(&pepper_ref) {
        Ok(pepper) => warn_unverifiable(&keys, &pepper),
        Err(e) => {
            eprintln!("note: {e}; keys the pepper cannot verify are listed without a warning")
        }
    }
    let now = SystemTime::now();
    if json {
        for k in &keys {
            let line = serde_json::json!({
                "id": k.id,
                "name": k.name,
                "scopes": k.scopes,
                "created": rfc3339(k.created_at),
                "expires": k.valid_until().map(rfc3339),
                "bound_spiffe": k.bound_spiffe,
                "state": k.state(now).to_string(),
                "revoked": k.revoked_at.map(rfc3339),
                "replaced_by": k.replaced_by,
            });
            println!("{line}");
        }
        return Ok(());
    }
    let rows: Vec<[String; 7]> = keys
        .iter()
        .map(|k| {
            [
                k.id.clone(),
                k.name.clone(),
                if k.scopes.is_empty() {
                    "-".into()
                } else {
                    k.scopes.join(",")
                },
                rfc3339(k.created_at),
                k.valid_until().map_or_else(|| "never".into(), rfc3339),
                k.bound_spiffe.clone().unwrap_or_else(|| "-".into()),
                state_text(k, now),
            ]
        })
        .collect();
    let header = [
        "ID",
        "NAME",
        "SCOPES",
        "CREATED",
        "EXPIRES",
        "BOUND SPIFFE ID",
        "STATE",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let print_row = |cells: &[&str]| {
        let line: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    };
    print_row(&header);
    for row in &rows {
        print_row(&row.each_ref().map(String::as_str));
    }
    match &location {
        Location::File(path) if !path.exists() => eprintln!("{}", no_store(path).message),
        _ if rows.is_empty() => eprintln!("no API keys in {location}"),
        _ => {}
    }
    Ok(())
}

fn revoke(args: &StoreArgs, id: &str) -> Result<(), Failure> {
    let (location, _) = locate(args)?;
    let store = open_store(&location, Access::Write)?;
    let key = store
        .run(store.store.revoke(id, SystemTime::now()))
        .map_err(Failure::run)?;
    eprintln!(
        "revoked API key {} (name {}); running gateways refuse it within their reload_interval",
        key.id, key.name
    );
    Ok(())
}

fn rotate(args: &StoreArgs, id: &str, grace: &str, expires: Option<&str>) -> Result<(), Failure> {
    let grace = parse_duration(grace).map_err(|e| Failure::config(format!("--grace: {e}")))?;
    let expires = expires.map(|s| positive(s, "--expires")).transpose()?;
    let (location, pepper_ref) = locate(args)?;
    let pepper = read_pepper(&pepper_ref)?;
    let store = open_store(&location, Access::Write)?;
    let old = store
        .run(store.store.get(id))
        .map_err(Failure::run)?
        .ok_or_else(|| Failure::run(format!("no API key with id {id}")))?;
    // The new key takes the old one's name, scopes and binding: only as the pepper's holder
    // wrote them.
    if old.pepper_id != pepper.id() {
        return Err(Failure::run(format!(
            "key {id} was made with another pepper than the configured one; create a new key instead"
        )));
    }
    if !pepper.vouches_for(&old) {
        return Err(Failure::run(format!(
            "the record of key {id} does not verify with the pepper (changed in the store without it, or without a tag); its name, scopes and binding are not copied: revoke it and create a new key"
        )));
    }
    let now = SystemTime::now();
    // The new key lives as long as the old one was meant to, unless told otherwise.
    let lifetime = expires.or_else(|| {
        old.expires_at
            .and_then(|e| e.duration_since(old.created_at).ok())
    });
    let bound = match &old.bound_spiffe {
        None => None,
        Some(s) => Some(SpiffeId::new(s).map_err(|e| {
            Failure::run(format!(
                "key {id} has a stored binding that is not a SPIFFE ID: {e}"
            ))
        })?),
    };
    let spec = KeySpec::new(
        &old.name,
        old.scopes.clone(),
        lifetime.map(|l| now + l),
        bound,
    )
    .map_err(Failure::run)?;
    let new = api_key::generate(&pepper, &spec, now).map_err(Failure::run)?;
    let old = store
        .run(store.store.rotate(id, &new.record, now + grace))
        .map_err(Failure::run)?;
    eprintln!("created API key {}", describe(&new.record));
    eprintln!(
        "the old key {} stays valid until {}",
        old.id,
        old.valid_until().map_or_else(|| "never".into(), rfc3339)
    );
    show_once(&new);
    Ok(())
}

/// Prints the key on stdout, alone on its line, and says on stderr it will not be shown again.
fn show_once(new: &NewApiKey) {
    println!("{}", new.key.expose_secret());
    eprintln!(
        "warning: this is the only time the key is shown; it is not stored and cannot be recovered. Keep it in your secret store now."
    );
}

fn describe(k: &StoredKey) -> String {
    let mut out = format!("{} (name {}", k.id, k.name);
    if !k.scopes.is_empty() {
        out.push_str(&format!(", scopes {}", k.scopes.join(",")));
    }
    if let Some(e) = k.expires_at {
        out.push_str(&format!(", expires {}", rfc3339(e)));
    }
    if let Some(b) = &k.bound_spiffe {
        out.push_str(&format!(", bound to {b}"));
    }
    out.push(')');
    out
}

fn state_text(k: &StoredKey, now: SystemTime) -> String {
    match k.state(now) {
        KeyState::Revoked => match k.revoked_at {
            Some(at) => format!("revoked {}", rfc3339(at)),
            None => "revoked".into(),
        },
        KeyState::Rotated { until } => format!(
            "rotated to {} (valid until {})",
            k.replaced_by.as_deref().unwrap_or("?"),
            rfc3339(until)
        ),
        state => state.to_string(),
    }
}

/// A duration that must be more than zero.
fn positive(s: &str, flag: &str) -> Result<Duration, Failure> {
    match parse_duration(s) {
        Ok(d) if d.is_zero() => Err(Failure::config(format!("{flag}: must be more than zero"))),
        Ok(d) => Ok(d),
        Err(e) => Err(Failure::config(format!("{flag}: {e}"))),
    }
}

/// `"<n><unit>"`, unit `s`, `m`, `h`, `d` or `w`.
pub(crate) fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (n, unit) = s.split_at(digits);
    let n: u64 = n.parse().map_err(|_| {
        anyhow!("\"{s}\" is not a duration: write a number and a unit, like 90d or 24h")
    })?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => anyhow::bail!("\"{s}\" has no known unit: use s, m, h, d or w"),
    };
    // Anything past a century is a typo, and would overflow SystemTime arithmetic far sooner.
    n.checked_mul(unit_secs)
        .filter(|&secs| secs <= 100 * 365 * 86_400)
        .map(Duration::from_secs)
        .ok_or_else(|| anyhow!("\"{s}\" is too long"))
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_dates() {
        assert_eq!(
            parse_duration("90d").ok(),
            Some(Duration::from_secs(90 * 86_400))
        );
        assert_eq!(parse_duration("0s").ok(), Some(Duration::ZERO));
        assert_eq!(
            parse_duration("2w").ok(),
            Some(Duration::from_secs(14 * 86_400))
        );
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14T22:13:20Z"
        );
    }
}
