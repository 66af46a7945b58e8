//! The executor's single output: a stream of events. Reporters render them; the executor
//! never prints.

use std::time::Duration;

use serde::Serialize;

use crate::errors::JobError;

/// How a node ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum NodeStatus {
    Passed,
    /// Passed after failed attempts.
    Flaky,
    Failed {
        error: JobError,
    },
    /// A dependency failed; the node did not run.
    Blocked {
        by: String,
    },
    /// Already succeeded in an earlier run.
    Skipped {
        reason: String,
    },
    /// Cancelled while running or waiting for a retry.
    Cancelled,
    /// Never started: the run was stopped (fail-fast or a signal) first.
    NotRun,
}

impl NodeStatus {
    pub fn name(&self) -> &'static str {
        match self {
            NodeStatus::Passed => "passed",
            NodeStatus::Flaky => "flaky",
            NodeStatus::Failed { .. } => "failed",
            NodeStatus::Blocked { .. } => "blocked",
            NodeStatus::Skipped { .. } => "skipped",
            NodeStatus::Cancelled => "cancelled",
            NodeStatus::NotRun => "not-run",
        }
    }

    pub fn succeeded(&self) -> bool {
        matches!(self, NodeStatus::Passed | NodeStatus::Flaky | NodeStatus::Skipped { .. })
    }
}

/// Why a run stops early; ordered by severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CancelReason {
    FailFast,
    Signal,
    SecondSignal,
}

/// `O` is the runner's output type ([`crate::Runner::Output`]).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum RunEvent<O> {
    RunStarted {
        total: usize,
        to_run: usize,
    },
    NodeStarted {
        index: usize,
        id: String,
        kind: String,
        attempt: u32,
    },
    Output {
        index: usize,
        line: String,
    },
    AttemptFailed {
        index: usize,
        id: String,
        attempt: u32,
        error: JobError,
        retry_in: Duration,
    },
    NodeFinished {
        index: usize,
        id: String,
        kind: String,
        status: NodeStatus,
        attempts: u32,
        duration: Duration,
        output: O,
    },
    CancelBegun {
        reason: CancelReason,
    },
    RunFinished {
        summary: RunSummary,
    },
}

/// Counts per status, and how the run ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunSummary {
    pub passed: usize,
    pub flaky: usize,
    pub failed: usize,
    pub blocked: usize,
    pub skipped: usize,
    pub cancelled: usize,
    pub not_run: usize,
    pub cancel_reason: Option<CancelReason>,
    /// A failure was the engine being unreachable.
    pub engine_unreachable: bool,
    pub duration: Duration,
}

/// `3 passed, 1 flaky, 0 failed, 0 blocked, 11 up to date, 0 cancelled, 0 not run in 2.4s`
impl std::fmt::Display for RunSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} passed, {} flaky, {} failed, {} blocked, {} up to date, {} cancelled, {} not run in {:.1}s",
            self.passed,
            self.flaky,
            self.failed,
            self.blocked,
            self.skipped,
            self.cancelled,
            self.not_run,
            self.duration.as_secs_f64()
        )
    }
}

impl RunSummary {
    pub(crate) fn count(&mut self, status: &NodeStatus) {
        match status {
            NodeStatus::Passed => self.passed += 1,
            NodeStatus::Flaky => self.flaky += 1,
            NodeStatus::Failed { error } => {
                self.failed += 1;
                self.engine_unreachable |=
                    matches!(error.class, crate::ErrorClass::EngineUnreachable | crate::ErrorClass::AccessDenied);
            }
            NodeStatus::Blocked { .. } => self.blocked += 1,
            NodeStatus::Skipped { .. } => self.skipped += 1,
            NodeStatus::Cancelled => self.cancelled += 1,
            NodeStatus::NotRun => self.not_run += 1,
        }
    }

    pub fn interrupted(&self) -> bool {
        matches!(self.cancel_reason, Some(CancelReason::Signal | CancelReason::SecondSignal))
    }

    pub fn succeeded(&self) -> bool {
        self.failed == 0 && self.blocked == 0 && self.cancelled == 0 && self.not_run == 0
    }
}
