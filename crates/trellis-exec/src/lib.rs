//! trellis-exec: run a graph of jobs with per-kind concurrency limits, retries with
//! exponential backoff and jitter, blocking of dependents, fail-fast, two-stage cancellation
//! and one event stream — through a [`Runner`] you supply.
//!
//! It knows nothing about Docker, images, persistence or the terminal: jobs are ids, kinds,
//! dependencies and a payload; the runner does the work and reports its own output type;
//! whoever holds the receiving end consumes the [`RunEvent`]s. The executor itself never
//! prints and keeps no state across runs.

mod errors;
mod event;
mod executor;
mod job;
mod retry;
mod runner;
mod shutdown;

pub use errors::{ErrorClass, JobError};
pub use event::{CancelReason, NodeStatus, RunEvent, RunSummary};
pub use executor::{ExecOptions, Limits, run};
pub use job::{Initial, Job, JobGraph};
pub use retry::RetryPolicy;
pub use runner::{JobContext, Runner};
pub use shutdown::Shutdown;
