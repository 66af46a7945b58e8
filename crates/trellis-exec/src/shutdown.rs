//! Two-stage shutdown: the first request stops new work and asks running jobs to cancel
//! (they get a grace period for their cleanup); the second stops at once.

use tokio_util::sync::CancellationToken;

use crate::event::CancelReason;

#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    soft: CancellationToken,
    hard: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// First call: graceful; any further call: immediate.
    pub fn request(&self) {
        if self.soft.is_cancelled() {
            self.hard.cancel();
        } else {
            self.soft.cancel();
        }
    }

    pub fn requested(&self) -> bool {
        self.soft.is_cancelled()
    }

    pub(crate) async fn graceful(&self) {
        self.soft.cancelled().await;
    }

    pub(crate) async fn immediate(&self) {
        self.hard.cancelled().await;
    }

    pub(crate) fn reason(&self) -> CancelReason {
        if self.hard.is_cancelled() { CancelReason::SecondSignal } else { CancelReason::Signal }
    }

    /// Requests shutdown on SIGINT and SIGTERM (twice for immediate). Call once, from a tokio
    /// runtime.
    pub fn on_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(()) = interrupt.recv() => this.request(),
                    Some(()) = terminate.recv() => this.request(),
                    else => break,
                }
            }
        });
        Ok(())
    }
}
