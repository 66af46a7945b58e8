//! What a run tells its caller while it goes: the library never prints, it hands [`Event`]s
//! to the caller's [`EventSink`]. The CLI renders them as progress; a library caller may
//! ignore them ([`Quiet`]) — the state store is fed before any sink sees an event, so what
//! the next run skips does not depend on the sink.

use std::path::{Path, PathBuf};

use serde::Serialize;
use std::time::Duration;

use trellis_docker::BuilderKind;
use trellis_exec::{CancelReason, JobError, RunSummary};
use trellis_graph::NodeKind;

/// One thing that happened, borrowed for the length of the call.
#[derive(Debug)]
pub enum Event<'a> {
    /// An external base is being pulled (`attempt` counts from 1).
    Pulling {
        base: &'a str,
        attempt: u32,
    },
    Pulled {
        base: &'a str,
        image: &'a str,
    },
    /// A pull failed and is tried again after `retry_in`.
    PullFailed {
        base: &'a str,
        error: &'a str,
        retry_in: Duration,
    },
    /// The run's plan is decided: `to_run` of `total` nodes will run.
    RunStarted {
        run_id: &'a str,
        total: usize,
        to_run: usize,
    },
    NodeStarted {
        id: &'a str,
        kind: NodeKind,
        attempt: u32,
    },
    /// One line of a running node's output (also in its log file).
    Output {
        id: &'a str,
        line: &'a str,
    },
    /// An attempt failed; the node is tried again after `retry_in`.
    Retrying {
        id: &'a str,
        attempt: u32,
        error: &'a JobError,
        retry_in: Duration,
    },
    /// A node ended (passed, failed, blocked, skipped…); `tail` holds the last lines of its
    /// output when it failed.
    NodeFinished {
        node: &'a ReportNode,
        tail: &'a [String],
    },
    /// The run stops starting nodes.
    Cancelling {
        reason: CancelReason,
    },
    /// Something the run could not do that costs nothing now but may later (a record not
    /// written: the next run may repeat work).
    Warning {
        message: &'a str,
    },
    /// `builder`: the builder the run's builds went through (none for a simulation).
    RunFinished {
        summary: &'a RunSummary,
        report: &'a Path,
        builder: Option<BuilderKind>,
    },
}

/// Receives a run's events, in order, on the task that runs the graph: keep `event` quick.
pub trait EventSink: Send {
    fn event(&mut self, event: &Event<'_>);
}

/// A sink that drops every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct Quiet;

impl EventSink for Quiet {
    fn event(&mut self, _: &Event<'_>) {}
}

impl<F: FnMut(&Event<'_>) + Send> EventSink for F {
    fn event(&mut self, event: &Event<'_>) {
        self(event);
    }
}

/// One node of the run's report (`report.json`, and what sinks and reporters read).
#[derive(Debug, Clone, Serialize)]
pub struct ReportNode {
    pub id: String,
    pub kind: NodeKind,
    /// Build and test nodes of a variant with `platforms`: the platform they run for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// `run` or `skip`, as planned.
    pub action: &'static str,
    pub reason: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_by: Option<String>,
    pub attempts: u32,
    /// Attempts that failed before the last one (a flaky node's, or a failed node's earlier).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_attempts: Vec<FailedAttempt>,
    pub duration_ms: u128,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// For push nodes: the digest the registry serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<String>,
    /// The node's log, relative to the workspace root (absolute when outside it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// The same log as a path to open.
    #[serde(skip)]
    pub log_path: Option<PathBuf>,
    pub key: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailedAttempt {
    pub attempt: u32,
    pub error: String,
}
