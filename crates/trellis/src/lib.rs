//! trellis: a build-graph engine for families of container images — the library.
//!
//! ```no_run
//! # fn main() -> Result<(), trellis::Error> {
//! let workspace = trellis::Workspace::load("matrix.kdl")?;
//! for entry in workspace.tags(&[])? {
//!     println!("{} → {}", entry.variant, entry.references.join(", "));
//! }
//! let plan = workspace.plan(&["node=22.*".to_owned()])?;
//! println!("{} nodes to run", plan.iter().filter(|n| n.action == trellis::Action::Run).count());
//! # Ok(()) }
//! ```
//!
//! Building from another repository's `cargo xtask`: attach to the Docker engine (external
//! bases resolved and pulled per `pull`, the builder chosen, the workspace's images listed
//! once), look at the plan `build` would follow, run it with your own [`EventSink`] — or
//! [`Quiet`]. The library never prints; the state store is written whatever the sink does.
//!
//! ```no_run
//! # async fn xtask() -> Result<(), trellis::Error> {
//! let mut workspace = trellis::Workspace::load("matrix.kdl")?;
//! let filters = vec!["node=22.*".to_owned()];
//! let how = trellis::Attach { pull: true, push: true, filters: filters.clone(), ..Default::default() };
//! let backend = workspace.attach(how, &mut trellis::Quiet).await?;
//! for node in workspace.plan_on(&filters, Some(&backend))? {
//!     println!("{:?} {} — {}", node.action, node.id, node.reason);
//! }
//! let config = trellis::RunConfig { filters, push: true, ..Default::default() };
//! let mut failures = Vec::new();
//! let mut sink = |event: &trellis::Event<'_>| {
//!     if let trellis::Event::NodeFinished { node, .. } = event
//!         && node.status == "failed"
//!     {
//!         failures.push(node.id.clone());
//!     }
//! };
//! let outcome = workspace.run(&config, &backend, &mut sink).await?;
//! assert!(outcome.summary.succeeded(), "{failures:?} failed; see {}", outcome.report.display());
//! # Ok(()) }
//! ```
//!
//! The crates below it are pure (model, graph), generic (exec) or the engine's client
//! (docker); the `trellis` command (crate `trellis-cli`) renders this library's events.

mod attach;
mod backend;
mod clean;
mod doctor;
mod emulation;
mod error;
mod events;
mod facade;
mod remote;
mod run;
mod state;

pub use attach::Attach;
pub use backend::{Backend, EngineFacts, NodeOutput, SimStep, Simulation};
pub use clean::CleanReport;
pub use doctor::{Doctor, Finding, Status, doctor};
pub use error::{Error, StateError};
pub use events::{Event, EventSink, FailedAttempt, Quiet, ReportNode};
pub use facade::{Slice, TagEntry, Workspace, find_manifest, inside};
pub use remote::{RecordedImage, RemoteFacts, RemoteRecord};
pub use run::{RunConfig, RunOutcome};
pub use state::{EarlierKey, NodeRecord, Outcome, StateStore};
pub use trellis_docker::BuilderKind;
pub use trellis_exec::{CancelReason, JobError, RunSummary, Shutdown};
pub use trellis_graph::{Action, BaseImageIds, Component, Graph, GraphInputs, NodeKind, PlannedNode, Selection, Shard};
pub use trellis_model::{AttributeValue, Diagnostic, Diagnostics, Variant};
