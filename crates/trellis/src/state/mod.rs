//! Where "already succeeded" lives, and what feeds it.
//!
//! - [`StateStore`]: the records (crash-safe journal + snapshot) and the run lock;
//! - [`Recorder`]: turns the executor's events into records, log files, context manifests and
//!   the run's report, *before* any sink sees an event — so the next run's skips are the
//!   same whether the run was shown on a terminal, in CI, or not at all;
//! - `StoreView`: the plan's judge over the store and what the engine holds.

mod recorder;
mod reports;
mod store;
mod view;

pub(crate) use recorder::{JobInfo, Recorder, report_json};
pub(crate) use reports::{record_reports, recorded_reports};
pub use store::{EarlierKey, NodeRecord, Outcome, StateLock, StateStore};
pub(crate) use view::StoreView;
