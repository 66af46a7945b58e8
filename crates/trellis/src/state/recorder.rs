//! The first consumer of the executor's events: one log file per node, a record in the state
//! store per finished node (written as it happens, so a killed run loses nothing), the context
//! manifests later plans name changed files from, and the run's report. Then it hands the
//! event on, in the library's own words, to the caller's sink.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use trellis_exec::{NodeStatus, RunEvent, RunSummary};
use trellis_graph::{ContextManifest, Node, NodeKind};

use super::{NodeRecord, Outcome, StateStore};
use crate::backend::NodeOutput;
use crate::events::{Event, EventSink, FailedAttempt, ReportNode};

/// How many lines of a failed node's log are kept for the sink.
const TAIL_LINES: usize = 20;

/// What the recorder knows about each job, by job index.
#[derive(Debug, Clone)]
pub(crate) struct JobInfo {
    pub node: Node,
    pub action: &'static str,
    pub reason: String,
    pub references: Vec<String>,
    /// For build nodes: the context's file list, kept for later "which file changed" reasons.
    pub context: Option<Arc<ContextManifest>>,
    /// What a skipped node stands for (a skipped build: the engine's image with its key).
    pub found: NodeOutput,
}

#[derive(Serialize)]
struct Report<'a> {
    run_id: &'a str,
    summary: &'a RunSummary,
    #[serde(skip_serializing_if = "Option::is_none")]
    builder: Option<String>,
    nodes: &'a [ReportNode],
}

pub(crate) struct Recorder<'s> {
    run_id: String,
    root: PathBuf,
    state_dir: PathBuf,
    jobs: Vec<JobInfo>,
    pub store: StateStore,
    sink: &'s mut dyn EventSink,
    logs: HashMap<usize, BufWriter<File>>,
    tails: HashMap<usize, VecDeque<String>>,
    failures: HashMap<usize, Vec<FailedAttempt>>,
    entries: Vec<Option<ReportNode>>,
    pub warnings: Vec<String>,
}

impl<'s> Recorder<'s> {
    pub fn new(
        run_id: String,
        root: PathBuf,
        state_dir: PathBuf,
        jobs: Vec<JobInfo>,
        store: StateStore,
        sink: &'s mut dyn EventSink,
    ) -> Self {
        let entries = vec![None; jobs.len()];
        Self {
            run_id,
            root,
            state_dir,
            jobs,
            store,
            sink,
            logs: HashMap::new(),
            tails: HashMap::new(),
            failures: HashMap::new(),
            entries,
            warnings: Vec::new(),
        }
    }

    /// `<state>/logs/<run>/<id>.log`; a platform's `/` become `-` (`…@linux-arm64.log`), so
    /// that each platform's log sits beside the others.
    fn log_path(&self, id: &str) -> PathBuf {
        let file = match id.split_once('@') {
            Some((node, platform)) => format!("{node}@{}.log", platform.replace('/', "-")),
            None => format!("{id}.log"),
        };
        self.state_dir.join("logs").join(&self.run_id).join(file)
    }

    fn log_line(&mut self, index: usize, line: &str) {
        if let Some(log) = self.logs.get_mut(&index) {
            let _ = writeln!(log, "{line}");
        }
        let tail = self.tails.entry(index).or_default();
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line.to_owned());
    }

    /// Something not recorded: the sink hears it, the outcome keeps it.
    pub fn warn(&mut self, message: String) {
        self.sink.event(&Event::Warning { message: &message });
        self.warnings.push(message);
    }

    pub fn handle(&mut self, event: RunEvent<NodeOutput>) {
        match event {
            RunEvent::RunStarted { total, to_run } => {
                self.sink.event(&Event::RunStarted { run_id: &self.run_id, total, to_run });
            }
            RunEvent::NodeStarted { index, id, attempt, .. } => {
                self.open_log(index, &id);
                self.log_line(index, &format!("=== {id}: attempt {attempt} ==="));
                let kind = self.jobs[index].node.kind;
                self.sink.event(&Event::NodeStarted { id: &id, kind, attempt });
            }
            RunEvent::Output { index, line } => {
                self.log_line(index, &line);
                self.sink.event(&Event::Output { id: &self.jobs[index].node.id, line: &line });
            }
            RunEvent::AttemptFailed { index, id, attempt, error, retry_in } => {
                let shown = format!("{:.1}s", retry_in.as_secs_f64());
                self.log_line(index, &format!("=== attempt {attempt} failed: {error}; retrying in {shown} ==="));
                self.sink.event(&Event::Retrying { id: &id, attempt, error: &error, retry_in });
                self.failures.entry(index).or_default().push(FailedAttempt { attempt, error: error.to_string() });
            }
            RunEvent::NodeFinished { index, status, attempts, duration, output, .. } => {
                self.finished(index, status, attempts, duration, output);
            }
            RunEvent::CancelBegun { reason } => self.sink.event(&Event::Cancelling { reason }),
            RunEvent::RunFinished { .. } => {}
        }
    }

    fn open_log(&mut self, index: usize, id: &str) {
        if self.logs.contains_key(&index) {
            return;
        }
        let path = self.log_path(id);
        let file = path.parent().map(fs::create_dir_all).and_then(|r| r.ok()).and_then(|()| File::create(&path).ok());
        if let Some(file) = file {
            self.logs.insert(index, BufWriter::new(file));
        }
    }

    fn finished(&mut self, index: usize, status: NodeStatus, attempts: u32, duration: Duration, output: NodeOutput) {
        let id = self.jobs[index].node.id.clone();
        if let Some(mut log) = self.logs.remove(&index) {
            let _ = match &status {
                NodeStatus::Failed { error } => writeln!(log, "=== {id}: failed: {error} ==="),
                other => writeln!(log, "=== {id}: {} ===", other.name()),
            };
            let _ = log.flush();
        }
        // Record before telling anyone: a run killed after this line keeps the result.
        self.record(index, &status, duration, &output);
        let entry = self.entry(index, &status, attempts, duration, output);
        let tail: Vec<String> = match status {
            NodeStatus::Failed { .. } => self.tails.remove(&index).map(Vec::from).unwrap_or_default(),
            _ => Vec::new(),
        };
        self.tails.remove(&index);
        self.sink.event(&Event::NodeFinished { node: &entry, tail: &tail });
        self.entries[index] = Some(entry);
    }

    /// Records a node that ran, and one skipped under a key its record does not hold as its
    /// current one (an image the engine had, a key the node succeeded with before): later
    /// reasons then compare with what is current, not with what last ran.
    fn record(&mut self, index: usize, status: &NodeStatus, duration: Duration, output: &NodeOutput) {
        let info = &self.jobs[index];
        let key = info.node.key.to_hex();
        let previous = self.store.get(&info.node.id);
        let (outcome, run, details, duration_ms) = match status {
            NodeStatus::Passed | NodeStatus::Flaky => {
                (Outcome::Succeeded, self.run_id.clone(), output.clone(), Some(duration.as_millis() as u64))
            }
            NodeStatus::Failed { .. } => {
                (Outcome::Failed, self.run_id.clone(), output.clone(), Some(duration.as_millis() as u64))
            }
            NodeStatus::Skipped { .. } if crate::remote::is_served_elsewhere(&info.reason) => return,
            NodeStatus::Skipped { .. } if previous.is_none_or(|r| r.key != key) => {
                let run = previous.and_then(|r| r.succeeded_with(&key)).unwrap_or(&self.run_id).to_owned();
                (Outcome::Succeeded, run, info.found.clone(), previous.and_then(|r| r.duration_ms))
            }
            _ => return,
        };
        if info.node.kind == NodeKind::Render {
            return;
        }
        if let (Outcome::Succeeded, Some(manifest)) = (outcome, &info.context) {
            super::view::save_manifest(&self.state_dir, manifest);
        }
        let record = NodeRecord {
            key,
            outcome,
            components: info.node.components.iter().map(|(c, hash)| (c.to_string(), hash.clone())).collect(),
            details,
            duration_ms,
            run,
            earlier: Vec::new(),
        };
        let id = info.node.id.clone();
        if let Err(e) = self.store.record(&id, record) {
            self.warn(format!("{e}: the next run may repeat work"));
        }
    }

    fn entry(
        &mut self,
        index: usize,
        status: &NodeStatus,
        attempts: u32,
        duration: Duration,
        output: NodeOutput,
    ) -> ReportNode {
        let info = self.jobs[index].clone();
        let log_path = (attempts > 0).then(|| self.log_path(&info.node.id));
        ReportNode {
            id: info.node.id.clone(),
            kind: info.node.kind,
            platform: info.node.platform.clone(),
            action: info.action,
            reason: info.reason,
            status: status.name().to_owned(),
            error: match status {
                NodeStatus::Failed { error } => Some(error.to_string()),
                _ => None,
            },
            blocked_by: match status {
                NodeStatus::Blocked { by } => Some(by.clone()),
                _ => None,
            },
            attempts,
            failed_attempts: self.failures.remove(&index).unwrap_or_default(),
            duration_ms: duration.as_millis(),
            image: output.image,
            digest: output.digest,
            references: match info.node.kind {
                NodeKind::Tag | NodeKind::Push => info.references,
                _ => Vec::new(),
            },
            log: log_path.as_deref().map(|p| display(&self.root, p)),
            log_path,
            key: info.node.key.to_hex(),
        }
    }

    /// The report's nodes, in job order.
    pub fn into_entries(self) -> (Vec<ReportNode>, StateStore, Vec<String>) {
        (self.entries.into_iter().flatten().collect(), self.store, self.warnings)
    }
}

fn display(root: &Path, path: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).display().to_string()
}

/// `report.json` of a run.
pub(crate) fn report_json(
    run_id: &str,
    summary: &RunSummary,
    builder: Option<trellis_docker::BuilderKind>,
    nodes: &[ReportNode],
) -> String {
    let builder = builder.map(|b| b.to_string());
    serde_json::to_string_pretty(&Report { run_id, summary, builder, nodes }).unwrap_or_default()
}
