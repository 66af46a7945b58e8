//! What already succeeded, across runs — crash-safe and one run at a time.
//!
//! Records are written by the [`super::Recorder`] from the run's events, before any sink
//! sees them: the next run's skips never depend on how (or whether) a run was shown.
//!
//! Layout under the state directory:
//! - `state.json`: the snapshot, replaced atomically (temp file, fsync, rename, fsync dir);
//! - `journal.jsonl`: one JSON line per recorded node since the snapshot, fsynced per line;
//! - `lock`: held with an exclusive `flock` for the whole run, holding the holder's pid.
//!
//! A run killed with kill -9 leaves at worst a torn last journal line, which the next open
//! ignores; the kernel releases the lock with the process. Opening replays the journal over
//! the snapshot and compacts. Records are keyed by node id; a record only counts when its key
//! equals the node's current key, so a stale record can never make a run skip wrongly.
//!
//! Why not an embedded database: the store is small, append-mostly and read once per run; a
//! journal keeps it dependency-free and readable with `jq`, with the same crash guarantees.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::NodeOutput;
use crate::error::StateError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Succeeded,
    Failed,
}

/// The last outcome of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub key: String,
    pub outcome: Outcome,
    /// The named inputs of the key (so a later plan can say which one changed), by their
    /// names ([`trellis_graph::Component`]'s `Display`).
    #[serde(default)]
    pub components: BTreeMap<String, String>,
    /// What the engine reported (image ID, digest).
    #[serde(default)]
    pub details: NodeOutput,
    /// How long the node took: the critical-path cost of the next run.
    #[serde(default)]
    pub duration_ms: Option<u64>,
    pub run: String,
    /// Keys this node succeeded with before, newest first (at most [`EARLIER_KEYS`]): going
    /// back to one — a reverted edit, a builder switched back — skips the node again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<EarlierKey>,
}

/// A key a node once succeeded with, and the run that did it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EarlierKey {
    pub key: String,
    pub run: String,
}

/// How many earlier successful keys a record keeps.
pub const EARLIER_KEYS: usize = 8;

impl NodeRecord {
    /// The run in which this node succeeded with `key`, now or before.
    pub fn succeeded_with(&self, key: &str) -> Option<&str> {
        match (self.key == key, self.outcome) {
            (true, Outcome::Succeeded) => Some(&self.run),
            (true, Outcome::Failed) => None,
            (false, _) => self.earlier.iter().find(|e| e.key == key).map(|e| e.run.as_str()),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    nodes: BTreeMap<String, NodeRecord>,
}

#[derive(Serialize, Deserialize)]
struct JournalLine {
    id: String,
    record: NodeRecord,
}

const SNAPSHOT_VERSION: u32 = 1;

#[derive(Debug)]
pub struct StateStore {
    dir: PathBuf,
    records: HashMap<String, NodeRecord>,
    /// `None` when opened read-only.
    journal: Option<File>,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io { path: path.to_path_buf(), source }
}

impl StateStore {
    /// Opens (or creates) the store in `dir`. Callers hold a [`StateLock`] on `dir`.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let mut store = Self::read(dir)?;
        let journal_path = dir.join("journal.jsonl");
        let journal =
            OpenOptions::new().create(true).append(true).open(&journal_path).map_err(io_error(&journal_path))?;
        store.journal = Some(journal);
        store.compact()?;
        Ok(store)
    }

    /// Reads the store without the lock and without writing (for `plan` while a run may be
    /// going on): what a concurrent run has recorded so far is seen, a torn line is not.
    pub fn read(dir: &Path) -> Result<Self, StateError> {
        let snapshot_path = dir.join("state.json");
        let mut records: HashMap<String, NodeRecord> = match fs::read(&snapshot_path) {
            Ok(bytes) => match serde_json::from_slice::<Snapshot>(&bytes) {
                Ok(snapshot) if snapshot.version == SNAPSHOT_VERSION => snapshot.nodes.into_iter().collect(),
                // An unreadable or foreign snapshot is treated as empty: at worst nodes re-run.
                _ => HashMap::new(),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(StateError::Io { path: snapshot_path, source: e }),
        };
        if let Ok(file) = File::open(dir.join("journal.jsonl")) {
            for line in io::BufReader::new(file).lines() {
                let Ok(line) = line else { break };
                // A torn last line (kill -9 mid-write) does not parse and is dropped.
                if let Ok(entry) = serde_json::from_str::<JournalLine>(&line) {
                    records.insert(entry.id, entry.record);
                }
            }
        }
        Ok(Self { dir: dir.to_path_buf(), records, journal: None })
    }

    pub fn get(&self, id: &str) -> Option<&NodeRecord> {
        self.records.get(id)
    }

    /// The last duration of every node that has one, by node id.
    pub fn durations(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        self.records.iter().filter_map(|(id, record)| Some((id.clone(), record.duration_ms?)))
    }

    /// Appends one record durably, then applies it. The keys the node succeeded with before
    /// are carried over into the new record's `earlier`.
    pub fn record(&mut self, id: &str, mut record: NodeRecord) -> Result<(), StateError> {
        if let Some(old) = self.records.get(id) {
            let mut earlier = Vec::new();
            if old.outcome == Outcome::Succeeded {
                earlier.push(EarlierKey { key: old.key.clone(), run: old.run.clone() });
            }
            earlier.extend(old.earlier.iter().cloned());
            let mut seen = std::collections::HashSet::new();
            earlier.retain(|e| e.key != record.key && seen.insert(e.key.clone()));
            earlier.truncate(EARLIER_KEYS);
            record.earlier = earlier;
        }
        let path = self.dir.join("journal.jsonl");
        let mut line = serde_json::to_vec(&JournalLine { id: id.to_owned(), record: record.clone() })
            .map_err(|e| StateError::Io { path: path.clone(), source: e.into() })?;
        line.push(b'\n');
        let journal = self.journal.as_mut().ok_or_else(|| StateError::Io {
            path: path.clone(),
            source: io::Error::new(io::ErrorKind::PermissionDenied, "the store was opened read-only"),
        })?;
        journal.write_all(&line).map_err(io_error(&path))?;
        journal.sync_data().map_err(io_error(&path))?;
        self.records.insert(id.to_owned(), record);
        Ok(())
    }

    /// Writes the snapshot atomically and empties the journal.
    pub fn compact(&mut self) -> Result<(), StateError> {
        let Some(journal) = &self.journal else { return Ok(()) };
        let path = self.dir.join("state.json");
        let snapshot = Snapshot { version: SNAPSHOT_VERSION, nodes: self.records.clone().into_iter().collect() };
        let bytes = serde_json::to_vec_pretty(&snapshot)
            .map_err(|e| StateError::Io { path: path.clone(), source: e.into() })?;
        let temp = self.dir.join(".state.json.tmp");
        {
            let mut file = File::create(&temp).map_err(io_error(&temp))?;
            file.write_all(&bytes).map_err(io_error(&temp))?;
            file.sync_all().map_err(io_error(&temp))?;
        }
        fs::rename(&temp, &path).map_err(io_error(&path))?;
        // The rename must be durable before the journal it replaces is emptied.
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_error(&self.dir))?;
        let path = self.dir.join("journal.jsonl");
        journal.set_len(0).map_err(io_error(&path))?;
        journal.sync_all().map_err(io_error(&path))?;
        Ok(())
    }
}

/// An exclusive lock on a state directory for the duration of a run.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateLock {
    /// Takes the lock or fails at once naming the holder's pid.
    pub fn acquire(dir: &Path) -> Result<Self, StateError> {
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let path = dir.join("lock");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_error(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let pid = fs::read_to_string(&path).map(|s| s.trim().to_owned()).unwrap_or_default();
                let pid = if pid.is_empty() { "unknown".to_owned() } else { pid };
                return Err(StateError::Locked { pid, path });
            }
            Err(fs::TryLockError::Error(e)) => return Err(StateError::Io { path, source: e }),
        }
        file.set_len(0).map_err(io_error(&path))?;
        file.write_all(std::process::id().to_string().as_bytes()).map_err(io_error(&path))?;
        file.sync_data().map_err(io_error(&path))?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str) -> NodeRecord {
        NodeRecord {
            key: key.into(),
            outcome: Outcome::Succeeded,
            components: BTreeMap::new(),
            details: NodeOutput::default(),
            duration_ms: None,
            run: "r1".into(),
            earlier: Vec::new(),
        }
    }

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(dir.path()).unwrap();
        store.record("build:a", record("k1")).unwrap();
        store.record("build:a", record("k2")).unwrap();
        drop(store);
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.get("build:a").unwrap().key, "k2");
        assert_eq!(fs::metadata(dir.path().join("journal.jsonl")).unwrap().len(), 0, "compacted on open");
    }

    #[test]
    fn earlier_successful_keys_are_kept_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(dir.path()).unwrap();
        store.record("test:a", record("k1")).unwrap();
        store.record("test:a", record("k2")).unwrap();
        store.record("test:a", NodeRecord { outcome: Outcome::Failed, ..record("k3") }).unwrap();
        store.record("test:a", record("k1")).unwrap();
        drop(store);
        let store = StateStore::open(dir.path()).unwrap();
        let a = store.get("test:a").unwrap();
        let earlier: Vec<&str> = a.earlier.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(earlier, ["k2"], "k1 is the current key again; the failed k3 never succeeded");
        assert_eq!(a.succeeded_with("k2"), Some("r1"));
        assert_eq!(a.succeeded_with("k3"), None);
    }

    #[test]
    fn a_torn_journal_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(dir.path()).unwrap();
        store.record("build:a", record("k1")).unwrap();
        drop(store);
        let mut journal = OpenOptions::new().append(true).open(dir.path().join("journal.jsonl")).unwrap();
        journal.write_all(b"{\"id\":\"build:b\",\"record\":{\"key\":\"k").unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.get("build:a").unwrap().key, "k1");
        assert!(store.get("build:b").is_none());
    }

    #[test]
    fn a_second_lock_fails_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let _held = StateLock::acquire(dir.path()).unwrap();
        let error = StateLock::acquire(dir.path()).unwrap_err();
        assert!(error.to_string().contains(&format!("pid {}", std::process::id())), "{error}");
    }

    #[test]
    fn the_lock_is_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        drop(StateLock::acquire(dir.path()).unwrap());
        StateLock::acquire(dir.path()).unwrap();
    }
}
