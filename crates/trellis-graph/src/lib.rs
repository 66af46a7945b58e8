//! trellis-graph: a compiled [`trellis_model::Model`] as a petgraph DAG of
//! render → build → test → tag → push nodes with blake3 content keys, plus what can be decided
//! without an engine: context digests (`.dockerignore` applied with Docker's rules), parents
//! from FROM lines, plans against a state view, FILTER selection and rendered files on disk.
//!
//! It never talks to Docker: external base images enter keys through [`BaseImageIds`], which
//! the engine half resolves. It does not run anything: the executor consumes the graph.

mod context;
pub mod dockerfile;
pub mod dockerignore;
mod graph;
mod key;
mod own_files;
mod plan;
pub mod render;
mod select;
pub mod stages;

pub use context::{ContextDigest, ContextEntry, ContextError, ContextManifest, ContextWalk, EntryKind};
pub use graph::{
    BaseImageIds, Dependencies, Graph, GraphInputs, Node, NodeKind, PlatformNodes, VariantNodes, check_contexts,
    host_platform, platform_slot,
};
pub use key::{Component, ComponentKey, Components, KEY_SCHEMA_VERSION, KeyHasher, NodeKey};
pub use own_files::{ContextExclusions, OwnFiles, TEMP_PREFIX};
pub use plan::{Action, NoState, PlannedNode, StateView, never, plan};
pub use select::{Selection, UnmatchedFilter};
pub use stages::{Shard, ShardError, depths, shards, stages};
