//! The bottom of the crate: everything that can stop a command before (or instead of) a run,
//! and how a refused registry is told.

use std::path::PathBuf;

use trellis_graph::UnmatchedFilter;
use trellis_model::Diagnostics;

/// Everything that can go wrong before anything runs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no matrix.kdl in {start} or any parent directory")]
    NoManifest { start: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(Diagnostics),
    #[error(transparent)]
    Filter(#[from] UnmatchedFilter),
    #[error("cannot write rendered Dockerfiles: {0}")]
    Render(std::io::Error),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot write the run's reports: {0}")]
    Report(std::io::Error),
    #[error("no container engine: {0}")]
    NoEngine(String),
    #[error("{0}; nothing was run")]
    NoEmulation(String),
    #[error("external base images missing from the engine (pull \"{policy}\"): {}; nothing was built", bases.join(", "))]
    MissingBases { bases: Vec<String>, policy: String },
    #[error("cannot pull the external base {base}: {message}; nothing was built")]
    Pull { base: String, message: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("{}; nothing was run", refused(registry, user.as_deref(), detail))]
    Unauthorized { registry: String, user: Option<String>, detail: String },
    /// A pushing run whose registry does not answer: nothing would reach it.
    #[error("cannot reach the registry {registry} to push to ({detail}); nothing was run")]
    RegistryUnreachable { registry: String, detail: String },
    #[error(
        "{child} {uses} {parent}, which this engine does not hold and {} at its current key: run its stage (--stage {stage}) first; nothing was run",
        registry.as_deref().map_or_else(|| "no registry serves".to_owned(), |r| format!("{r} does not serve"))
    )]
    ParentNotServed { child: String, uses: &'static str, parent: String, stage: usize, registry: Option<String> },
}

/// Why the state store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("another trellis run (pid {pid}) holds the lock on {path}")]
    Locked { pid: String, path: PathBuf },
    #[error("cannot use the state store at {path}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// What a registry refusing credentials (or their absence) is told as, before a run and
/// during one alike.
pub(crate) fn refused(registry: &str, user: Option<&str>, detail: &str) -> String {
    let who = user.map_or_else(|| "access without credentials".to_owned(), |u| format!("user `{u}`"));
    format!(
        "unauthorized: {registry} refused {who} ({detail}); check the credentials in the docker config (`docker login {registry}`)"
    )
}
