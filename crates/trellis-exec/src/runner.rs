//! The one thing the executor needs from the outside: something that runs a job.

use std::future::Future;

use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::errors::JobError;
use crate::event::RunEvent;
use crate::job::Job;

/// Runs jobs. Implementations must observe `ctx.cancel`: when it fires, clean up (remove
/// containers, temporary images) and return [`JobError::cancelled`] within the grace period.
pub trait Runner<P>: Send + Sync + 'static {
    /// What a successful job reports (an image ID, a digest…): the runner's own type,
    /// carried unchanged to [`RunEvent::NodeFinished`].
    type Output: Clone + Default + std::fmt::Debug + Send + Sync + 'static;

    fn run(
        &self,
        job: &Job<P>,
        ctx: JobContext<Self::Output>,
    ) -> impl Future<Output = Result<Self::Output, JobError>> + Send;
}

/// What a running attempt gets from the executor.
#[derive(Debug, Clone)]
pub struct JobContext<O> {
    pub index: usize,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub cancel: CancellationToken,
    pub(crate) events: UnboundedSender<RunEvent<O>>,
}

impl<O> JobContext<O> {
    /// Sends one line of the job's output to the reporters (and its log file).
    pub fn line(&self, line: impl Into<String>) {
        let _ = self.events.send(RunEvent::Output { index: self.index, line: line.into() });
    }
}
