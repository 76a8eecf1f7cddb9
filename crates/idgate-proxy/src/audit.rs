//! The audit trail on the gateway's side: putting `[audit]` into use (its keys are read when
//! a configuration is prepared, so `idgate check` finds their problems; the writer starts
//! with `serve`), the routes' policy when its queue is full, and the records: a request's,
//! made from the same [`Record`] as its access line with what only the trail keeps, and a
//! refused connection's.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::Version;
use idgate_audit::{
    ApiActivity, AuditError, AuditKeys, AuditTrail, AuthLayers, ConnectionEvent, ConnectionOutcome,
    EncryptionKey, Export, KeyError, Permit, PublicKey, SigningKey, StartReport, WriterSettings,
};
use idgate_config::{AuditConfig, OnAuditFull};

use crate::access_log::{Decision, Record};

/// What a request does when the audit queue is full, unless its route says otherwise.
/// Changes with a reload.
#[derive(Debug, Clone, Copy)]
pub struct AuditPolicy {
    pub on_full: OnAuditFull,
    pub block_timeout: Duration,
    /// Refused connections recorded one by one per second (see `listener/records.rs`).
    pub connection_records_per_second: u32,
}

impl AuditPolicy {
    pub fn of(config: Option<&AuditConfig>) -> Self {
        Self {
            on_full: config.map(|c| c.on_full).unwrap_or_default(),
            block_timeout: config.map_or(Duration::ZERO, |c| c.block_timeout),
            connection_records_per_second: config
                .map_or(u32::MAX, |c| c.connection_records_per_second),
        }
    }
}

/// What the trail records of a request beyond its access line.
#[derive(Debug, Default)]
pub struct AuditFacts<'a> {
    /// The canonical path, or the route's template where its parameters are personal.
    pub path: Option<&'a str>,
    pub template: Option<&'a str>,
    pub auth_layers: AuthLayers,
    /// The gateway's own id for a request that came with the caller's (see
    /// [`idgate_audit::ApiActivity::uid`]).
    pub uid: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub upstream_latency: Option<Duration>,
    pub bytes_in: Option<u64>,
    pub bytes_out: Option<u64>,
}

fn version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "-",
    }
}

/// Queues a request's record, in the place it reserved (if any).
pub(crate) fn request(
    trail: &AuditTrail,
    r: &Record<'_>,
    facts: &AuditFacts<'_>,
    remote: SocketAddr,
    permit: Option<Permit>,
) {
    let decision = match r.decision {
        Decision::Allowed => idgate_audit::Decision::Allowed,
        Decision::Denied(slug) => idgate_audit::Decision::Denied(slug),
        Decision::Failed(slug) => idgate_audit::Decision::Failed(slug),
        Decision::AllowedBy(reason) => idgate_audit::Decision::AllowedBy(reason),
        Decision::Undecided(reason) => idgate_audit::Decision::Undecided(reason),
    };
    trail.api(
        &ApiActivity {
            time: r.time,
            request_id: r.request_id,
            uid: facts.uid,
            peer: r.peer,
            caller: r.caller,
            auth_layers: facts.auth_layers,
            remote,
            method: r.method.as_str(),
            version: version(r.version),
            route: r.route,
            path: facts.path,
            template: facts.template,
            status: r.status,
            upstream: facts.upstream,
            upstream_status: r.upstream_status,
            upstream_latency: facts.upstream_latency,
            credential: r.credential,
            decision,
            latency: r.latency,
            bytes_in: facts.bytes_in,
            bytes_out: facts.bytes_out,
        },
        permit,
    );
}

/// A connection the listener did not serve.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refused<'a> {
    pub(crate) remote: IpAddr,
    pub(crate) port: Option<u16>,
    pub(crate) via: Option<SocketAddr>,
    pub(crate) peer: Option<&'a str>,
    pub(crate) handshake: bool,
    pub(crate) reason: &'static str,
    pub(crate) stage: &'static str,
    pub(crate) detail: Option<&'a str>,
}

/// Queues a refused connection's record.
pub(crate) fn connection(trail: &AuditTrail, c: Refused<'_>) {
    trail.connection(&ConnectionEvent {
        time: SystemTime::now(),
        remote: c.remote,
        port: c.port,
        via: c.via,
        peer: c.peer,
        outcome: if c.handshake {
            ConnectionOutcome::HandshakeFailed
        } else {
            ConnectionOutcome::Refused
        },
        reason: c.reason,
        stage: c.stage,
        detail: c.detail,
    });
}

/// Why `[audit]` cannot be put into use; names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum AuditSetupError {
    #[error("{0}")]
    Key(#[source] KeyError, &'static str),
    #[error(
        "none of the public keys is the signing key's (key id {0}): list its public key, or fix signing_key"
    )]
    PublicKeyMismatch(String),
}

impl AuditSetupError {
    /// The key path of the setting at fault.
    pub fn key(&self) -> &'static str {
        match self {
            Self::Key(_, key) => key,
            Self::PublicKeyMismatch(_) => "audit.public_keys",
        }
    }
}

/// `[audit]` with its keys read: ready to start the writer.
pub struct AuditSetup {
    settings: WriterSettings,
    keys: AuditKeys,
}

impl std::fmt::Debug for AuditSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSetup")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl AuditSetup {
    /// Reads the keys `config` names. Blocking.
    pub fn load(config: &AuditConfig) -> Result<Self, AuditSetupError> {
        let w = &config.writer;
        let signing = SigningKey::load(&w.signing_key)
            .map_err(|e| AuditSetupError::Key(e, "audit.signing_key"))?;
        let mut listed = Vec::new();
        for p in &w.public_keys {
            listed.push(
                PublicKey::read(p).map_err(|e| AuditSetupError::Key(e, "audit.public_keys"))?,
            );
        }
        if !listed.is_empty() && !listed.contains(&signing.public()) {
            return Err(AuditSetupError::PublicKeyMismatch(signing.public().kid()));
        }
        let encryption = w
            .encryption_key
            .as_ref()
            .map(EncryptionKey::load)
            .transpose()
            .map_err(|e| AuditSetupError::Key(e, "audit.encryption_key"))?;
        let previous = w
            .previous_encryption_keys
            .iter()
            .map(EncryptionKey::load)
            .collect::<Result<_, _>>()
            .map_err(|e| AuditSetupError::Key(e, "audit.previous_encryption_keys"))?;
        Ok(Self {
            settings: WriterSettings {
                dir: w.dir.clone(),
                rotate_bytes: w.rotate_size,
                rotate_age: w.rotate_age,
                checkpoint_every: w.checkpoint_every,
                checkpoint_interval: w.checkpoint_interval,
                sync_interval: w.sync_interval,
                queue_capacity: w.queue_capacity,
            },
            keys: AuditKeys {
                signing,
                encryption,
                previous,
                verifying: listed,
            },
        })
    }

    /// Starts the writer: finds where the chain left off, records a gap if the previous run
    /// did not close its file, and opens a new file. Blocking.
    pub fn start(
        self,
        export: Option<Arc<dyn Export>>,
    ) -> Result<(AuditTrail, StartReport), AuditError> {
        AuditTrail::start(self.settings, self.keys, export)
    }
}

/// The setting a trail that could not start names: at start a key signs the start's
/// checkpoint (an HSM may refuse) and seals entries (the random source may fail).
fn setting_at_fault(e: &AuditError) -> &'static str {
    match e {
        AuditError::Key(KeyError::Random) => "audit.encryption_key",
        AuditError::Key(_) => "audit.signing_key",
        _ => "audit.dir",
    }
}

/// Starts the audit trail's writer (on a blocking thread: it reads the previous run's end and
/// syncs a new file) and says where the chain goes on, and what the previous run lost.
pub(crate) async fn start(
    setup: AuditSetup,
    export: Option<Arc<dyn Export>>,
    cfg: &idgate_config::Config,
) -> std::io::Result<Arc<AuditTrail>> {
    let started = tokio::task::spawn_blocking(move || setup.start(export))
        .await
        .map_err(std::io::Error::other)?;
    let (trail, report) = started.map_err(|e| {
        std::io::Error::other(format!(
            "{}: {}: {e}",
            cfg.file.display(),
            setting_at_fault(&e)
        ))
    })?;
    let file = report.file.display().to_string();
    match &report.continues {
        Some(last) => {
            tracing::info!(file = %file, after = last.seq, "audit trail: the chain goes on")
        }
        None => tracing::info!(file = %file, "audit trail: a new chain starts"),
    }
    if let Some(gap) = &report.gap {
        tracing::warn!(
            file = %gap.file.display(),
            last_seq = gap.last_seq,
            bytes_discarded = gap.bytes_discarded,
            "audit trail: the previous run did not close its file; records it had not written are lost, and the trail now says so (a gap entry)"
        );
    }
    Ok(Arc::new(trail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trail_that_cannot_sign_at_start_names_its_signing_key_not_its_encryption_key() {
        let hsm_refused = AuditError::Key(KeyError::Malformed {
            what: "pkcs11:object=audit-signing".to_owned(),
            why: "the token refused to sign",
        });
        assert_eq!(setting_at_fault(&hsm_refused), "audit.signing_key");
        assert_eq!(
            setting_at_fault(&AuditError::Key(KeyError::Random)),
            "audit.encryption_key"
        );
        assert_eq!(
            setting_at_fault(&AuditError::NotADirectory("/var/lib/idgate/audit".into())),
            "audit.dir"
        );
    }
}
