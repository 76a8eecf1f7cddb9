//! The process's state backend: opened once from `[state]`, kept across reloads (see
//! `idgate_store::StateStore`).

use idgate_config::{RedisNodes, StateBackend};
use idgate_store::{MemoryStore, RedbStore, RedisOptions, RedisStore, StateStore, StoreError};

/// Opens the state backend `[state]` names. Blocking (a redb file is opened and locked; a
/// Redis password is read). Opened once per process: a reload keeps it, so counters and
/// ownership records survive. A redb file whose disk failed is opened again by the store
/// itself, without a restart. Redis is not contacted here: its store connects on first use
/// and again whenever Redis comes back, and must be built inside the runtime that will
/// drive its connections.
pub fn open_state(backend: &StateBackend) -> Result<StateStore, StateOpenError> {
    match backend {
        StateBackend::Memory => Ok(StateStore::from(MemoryStore::new())),
        StateBackend::Redb { path } => RedbStore::open(path, idgate_store::DEFAULT_WAIT)
            .map(StateStore::from)
            .map_err(StateOpenError::Store),
        StateBackend::Redis(r) => {
            let mut options = match &r.nodes {
                RedisNodes::Server(url) => RedisOptions::standalone(url.clone()),
                RedisNodes::Cluster(seeds) => RedisOptions::cluster(seeds.iter().cloned()),
            };
            options.username = r.username.clone();
            options.password = match &r.password {
                None => None,
                Some(p) => Some(p.resolve().map_err(StateOpenError::Password)?),
            };
            options.ca_file = r.ca.clone();
            options.timeout = r.timeout;
            options.prefix = r.prefix.clone();
            RedisStore::new(&options)
                .map(StateStore::from)
                .map_err(StateOpenError::Store)
        }
    }
}

/// Why the state backend cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum StateOpenError {
    #[error(transparent)]
    Store(StoreError),
    #[error("state.password: {0}")]
    Password(idgate_secrets::SecretError),
}
