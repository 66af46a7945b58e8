//! The one thing the executor needs from the outside: something that runs a job.

use std::collections::BTreeMap;
use std::future::Future;

use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::errors::JobError;
use crate::event::RunEvent;
use crate::job::Job;

/// What a successful job reports (an image ID, a digest…), as text for reports.
pub type JobOutput = BTreeMap<String, String>;

/// Runs jobs. Implementations must observe `ctx.cancel`: when it fires, clean up (remove
/// containers, temporary images) and return [`JobError::cancelled`] within the grace period.
pub trait Engine<P>: Send + Sync + 'static {
    fn run(&self, job: &Job<P>, ctx: JobContext) -> impl Future<Output = Result<JobOutput, JobError>> + Send;
}

/// What a running attempt gets from the executor.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub index: usize,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub cancel: CancellationToken,
    pub(crate) events: UnboundedSender<RunEvent>,
}

impl JobContext {
    /// Sends one line of the job's output to the reporters (and its log file).
    pub fn line(&self, line: impl Into<String>) {
        let _ = self.events.send(RunEvent::Output { index: self.index, line: line.into() });
    }
}
