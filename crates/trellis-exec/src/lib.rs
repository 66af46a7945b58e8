//! trellis-exec: run a graph of jobs with per-kind concurrency limits, retries with
//! exponential backoff and jitter, blocking of dependents, fail-fast, two-stage cancellation
//! and one event stream — through an [`Engine`] you supply.
//!
//! It knows nothing about Docker, images or the terminal: jobs are ids, kinds, dependencies
//! and a payload; the engine does the work; reporters consume [`RunEvent`]s. The executor
//! itself never prints. [`StateStore`] keeps what succeeded across runs, crash-safely.

mod engine;
mod errors;
mod event;
mod executor;
mod job;
mod retry;
mod shutdown;
mod state;

pub use engine::{Engine, JobContext, JobOutput};
pub use errors::{ErrorClass, JobError, StateError};
pub use event::{CancelReason, NodeStatus, RunEvent, RunSummary};
pub use executor::{ExecOptions, Limits, run};
pub use job::{Initial, Job, JobGraph};
pub use retry::RetryPolicy;
pub use shutdown::Shutdown;
pub use state::{NodeRecord, Outcome, StateLock, StateStore};
