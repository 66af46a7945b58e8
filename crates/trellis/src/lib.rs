//! trellis: a build-graph engine for families of container images — the library facade and
//! the CLI's commands.
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
//! bases resolved and pulled per `pull`, the workspace's images listed once), look at the plan
//! `build` would follow, run it.
//!
//! ```no_run
//! # async fn xtask() -> Result<(), trellis::Error> {
//! let workspace = trellis::Workspace::load("matrix.kdl")?;
//! let (workspace, backend) = workspace.attach(trellis::Attach { pull: true, push: true, ..Default::default() }).await?;
//! let filters = vec!["node=22.*".to_owned()];
//! for node in workspace.plan_on(&filters, &backend)? {
//!     println!("{:?} {} — {}", node.action, node.id, node.reason);
//! }
//! let config = trellis::RunConfig { filters, push: true, ..Default::default() };
//! let outcome = workspace.run(&config, backend, trellis::Shutdown::new()).await?;
//! assert!(outcome.summary.succeeded(), "see {}", outcome.report.display());
//! # Ok(()) }
//! ```
//!
//! Only this crate knows about the terminal, JSON and exit codes; the model and graph crates
//! below it are pure.

pub mod cli;
mod connect;
pub mod engine;
mod execute;
mod facade;
pub mod output;
mod reporter;
mod store_view;

pub use connect::Attach;
pub use execute::{RunConfig, RunOutcome};
pub use facade::{Error, TagEntry, Workspace, find_manifest};
pub use trellis_exec::{RunSummary, Shutdown};
pub use trellis_graph::{Action, BaseImageIds, Graph, GraphInputs, NodeKind, PlannedNode, Selection};
pub use trellis_model::{AttributeValue, Diagnostic, Diagnostics, Variant};
