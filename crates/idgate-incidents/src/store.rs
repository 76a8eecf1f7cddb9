//! Incidents on disk: one JSON file per incident in `[incidents] dir`, each write atomic (a
//! temporary file, fsync, rename, fsync of the directory), so a crash leaves either the old
//! or the new version. A plain directory rather than the state backend: incidents are read
//! by the CLI without the gateway running, and a compliance record should be a file one can
//! copy and archive as it is.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::incident::{EntryKind, Incident, Millis, State};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not an incident: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("no incident \"{0}\"")]
    NotFound(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The incidents directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The directory, made (0700) if missing.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// The directory as it is, for reading (the CLI): not made if missing.
    pub fn at(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, id: &str) -> Option<PathBuf> {
        // Ids are made by the detector from safe characters; one from a user that is not
        // cannot name a file outside the directory.
        let safe = !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
        safe.then(|| self.dir.join(format!("{id}.json")))
    }

    /// Writes `incident` atomically.
    pub fn save(&self, incident: &Incident) -> Result<(), StoreError> {
        let path = self
            .path_of(&incident.id)
            .ok_or_else(|| StoreError::NotFound(incident.id.clone()))?;
        let tmp = self.dir.join(format!(".{}.tmp", incident.id));
        let body = serde_json::to_vec_pretty(incident).map_err(|source| StoreError::Json {
            path: path.clone(),
            source,
        })?;
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&body).map_err(io(&tmp))?;
        f.write_all(b"\n").map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))
    }

    pub fn load(&self, id: &str) -> Result<Incident, StoreError> {
        let path = self
            .path_of(id)
            .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(id.to_owned()));
            }
            Err(e) => return Err(io(&path)(e)),
        };
        serde_json::from_slice(&bytes).map_err(|source| StoreError::Json { path, source })
    }

    /// The ids of the incidents in the directory, in no order (none if it is missing).
    fn ids(&self) -> Result<Vec<String>, StoreError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(&self.dir))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if !id.starts_with('.') {
                ids.push(id.to_owned());
            }
        }
        Ok(ids)
    }

    /// Every incident, oldest first. A file that does not read is an error: a compliance
    /// record is not skipped silently.
    pub fn load_all(&self) -> Result<Vec<Incident>, StoreError> {
        let mut out = self
            .ids()?
            .iter()
            .map(|id| self.load(id))
            .collect::<Result<Vec<_>, _>>()?;
        sort(&mut out);
        Ok(out)
    }

    /// The `n` incidents opened last, oldest first: the gateway holds no more than these
    /// at start, however many the directory keeps. Ids begin with the opening time, so
    /// only those `n` files are read. A file among them that does not read as an incident
    /// is left out and put in `unreadable` (by id): the gateway starts all the same.
    pub fn load_newest(
        &self,
        n: usize,
        unreadable: &mut BTreeMap<String, StoreError>,
    ) -> Result<Vec<Incident>, StoreError> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let mut newest = BinaryHeap::with_capacity(n.saturating_add(1));
        for id in self.ids()? {
            newest.push(Reverse(id));
            if newest.len() > n {
                newest.pop();
            }
        }
        let mut out = Vec::with_capacity(newest.len());
        for Reverse(id) in newest {
            match self.load(&id) {
                Ok(i) => out.push(i),
                Err(e) => {
                    unreadable.insert(id, e);
                }
            }
        }
        sort(&mut out);
        Ok(out)
    }

    /// At start-up: incidents left open by a gateway that stopped are closed as
    /// [`State::Interrupted`], at their last update. Returns them.
    /// Each file is read once and let go: only the ones it closes are kept, so the
    /// directory's size does not weigh on memory. A file that does not read as an incident
    /// (a stray one, or one damaged) is skipped and put in `unreadable` (by id); one that
    /// cannot be written back is an error.
    pub fn close_interrupted(
        &self,
        now: Millis,
        unreadable: &mut BTreeMap<String, StoreError>,
    ) -> Result<Vec<Incident>, StoreError> {
        let mut closed = Vec::new();
        for id in self.ids()? {
            match self.state_of(&id) {
                Ok(state) if state.is_closed() => continue,
                Ok(_) => {}
                Err(e) => {
                    unreadable.insert(id, e);
                    continue;
                }
            }
            let mut i = match self.load(&id) {
                Ok(i) => i,
                Err(e) => {
                    unreadable.insert(id, e);
                    continue;
                }
            };
            if i.state.is_closed() {
                continue;
            }
            i.state = State::Interrupted;
            i.closed_at = Some(i.updated_at);
            i.audit.until = Some(i.updated_at);
            i.note(
                now,
                EntryKind::Interrupted,
                format!(
                    "the gateway stopped while the incident was open (last update {}); closed at the next start",
                    i.updated_at
                ),
            );
            self.save(&i)?;
            closed.push(i);
        }
        sort(&mut closed);
        Ok(closed)
    }

    /// The state of a stored incident, without building the whole of it.
    fn state_of(&self, id: &str) -> Result<State, StoreError> {
        #[derive(serde::Deserialize)]
        struct StateOnly {
            state: State,
        }
        let path = self
            .path_of(id)
            .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        serde_json::from_slice::<StateOnly>(&bytes)
            .map(|s| s.state)
            .map_err(|source| StoreError::Json { path, source })
    }
}

/// Oldest first: by opening time, then id.
fn sort(incidents: &mut [Incident]) {
    incidents.sort_by(|a, b| (a.opened_at, &a.id).cmp(&(b.opened_at, &b.id)));
}
