//! Consumes the executor's event stream — the executor never prints — and fans it out: live
//! progress (a bar on a terminal, one line per start and finish otherwise), one log file per
//! node, the state store (each success recorded as it happens, so a killed run loses
//! nothing), and at the end report.json, the Markdown summary and JUnit.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use trellis_exec::{JobError, NodeRecord, NodeStatus, Outcome, RunEvent, RunSummary, StateStore};
use trellis_graph::{ContextManifest, Node, NodeKind};

/// How many lines of a failed node's log are shown.
const TAIL_LINES: usize = 20;

/// What the reporter knows about each job, by job index.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node: Node,
    pub action: &'static str,
    pub reason: String,
    pub references: Vec<String>,
    /// For build nodes: the context's file list, kept for later "which file changed" reasons.
    pub context: Option<Arc<ContextManifest>>,
}

pub struct Reporter {
    pub run_id: String,
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub nodes: Vec<NodeInfo>,
    pub store: StateStore,
    pub progress: Progress,
    logs: HashMap<usize, BufWriter<File>>,
    tails: HashMap<usize, VecDeque<String>>,
    failures: HashMap<usize, Vec<(u32, JobError)>>,
    entries: Vec<Option<ReportNode>>,
    pub summary: Option<RunSummary>,
    pub store_errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReportNode {
    pub id: String,
    pub kind: NodeKind,
    pub action: &'static str,
    pub reason: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_by: Option<String>,
    pub attempts: u32,
    pub duration_ms: u128,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// For push nodes: the digest the registry serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    pub key: String,
}

#[derive(Debug, Serialize)]
pub struct Report<'a> {
    pub run_id: &'a str,
    pub summary: &'a RunSummary,
    pub nodes: Vec<&'a ReportNode>,
}

/// Live progress.
pub enum Progress {
    Bar(indicatif::ProgressBar, HashMap<usize, String>),
    Lines,
}

impl Progress {
    pub fn new(terminal: bool, total: u64) -> Self {
        if !terminal {
            return Progress::Lines;
        }
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {wide_msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress::Bar(bar, HashMap::new())
    }

    /// A line that stays: printed above the bar on a terminal, to stderr otherwise.
    fn println(&self, line: &str) {
        match self {
            Progress::Bar(bar, _) => bar.println(line),
            Progress::Lines => eprintln!("{line}"),
        }
    }

    fn started(&mut self, index: usize, id: &str, attempt: u32) {
        match self {
            Progress::Bar(bar, running) => {
                running.insert(index, id.to_owned());
                let mut names: Vec<&str> = running.values().map(String::as_str).collect();
                names.sort_unstable();
                bar.set_message(names.join(" "));
            }
            Progress::Lines if attempt > 1 => eprintln!("     START {id} (attempt {attempt})"),
            Progress::Lines => eprintln!("     START {id}"),
        }
    }

    fn finished(&mut self, index: usize, line: Option<&str>) {
        if let Progress::Bar(bar, running) = self {
            running.remove(&index);
            bar.inc(1);
        }
        if let Some(line) = line {
            self.println(line);
        }
    }

    pub fn finish(&self) {
        if let Progress::Bar(bar, _) = self {
            bar.finish_and_clear();
        }
    }
}

impl Reporter {
    pub fn new(
        run_id: String,
        root: PathBuf,
        state_dir: PathBuf,
        nodes: Vec<NodeInfo>,
        store: StateStore,
        progress: Progress,
    ) -> Self {
        let entries = vec![None; nodes.len()];
        Self {
            run_id,
            root,
            state_dir,
            nodes,
            store,
            progress,
            logs: HashMap::new(),
            tails: HashMap::new(),
            failures: HashMap::new(),
            entries,
            summary: None,
            store_errors: Vec::new(),
        }
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.state_dir.join("logs").join(&self.run_id).join(format!("{id}.log"))
    }

    fn display(&self, path: &Path) -> String {
        path.strip_prefix(&self.root).unwrap_or(path).display().to_string()
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

    pub fn handle(&mut self, event: RunEvent) {
        match event {
            RunEvent::RunStarted { .. } => {}
            RunEvent::NodeStarted { index, id, attempt, .. } => {
                if !self.logs.contains_key(&index) {
                    let path = self.log_path(&id);
                    let file = path
                        .parent()
                        .map(fs::create_dir_all)
                        .and_then(|r| r.ok())
                        .and_then(|()| File::create(&path).ok());
                    if let Some(file) = file {
                        self.logs.insert(index, BufWriter::new(file));
                    }
                }
                self.log_line(index, &format!("=== {id}: attempt {attempt} ==="));
                self.progress.started(index, &id, attempt);
            }
            RunEvent::Output { index, line } => self.log_line(index, &line),
            RunEvent::AttemptFailed { index, id, attempt, error, retry_in } => {
                self.log_line(
                    index,
                    &format!("=== attempt {attempt} failed: {error}; retrying in {} ===", seconds(retry_in)),
                );
                self.progress.println(&format!("     RETRY {id} in {}: {error}", seconds(retry_in)));
                self.failures.entry(index).or_default().push((attempt, error));
            }
            RunEvent::NodeFinished { index, id, status, attempts, duration, output, .. } => {
                self.finished(index, &id, &status, attempts, duration, output);
            }
            RunEvent::CancelBegun { reason } => {
                self.progress.println(&format!(
                    "  CANCEL   {}: no new nodes start",
                    match reason {
                        trellis_exec::CancelReason::FailFast => "fail-fast after a failure",
                        trellis_exec::CancelReason::Signal =>
                            "interrupted; running nodes clean up (again to stop at once)",
                        trellis_exec::CancelReason::SecondSignal => "interrupted twice; stopping now",
                    }
                ));
            }
            RunEvent::RunFinished { summary } => {
                self.progress.finish();
                self.summary = Some(summary);
            }
        }
    }

    fn finished(
        &mut self,
        index: usize,
        id: &str,
        status: &NodeStatus,
        attempts: u32,
        duration: Duration,
        output: trellis_exec::JobOutput,
    ) {
        if let Some(mut log) = self.logs.remove(&index) {
            let _ = writeln!(log, "=== {id}: {} ===", status.name());
            let _ = log.flush();
        }
        let info = self.nodes[index].clone();
        let ran = attempts > 0;
        // Record before reporting: a run killed after this line keeps the result.
        let outcome = match status {
            NodeStatus::Passed | NodeStatus::Flaky => Some(Outcome::Succeeded),
            NodeStatus::Failed { .. } => Some(Outcome::Failed),
            _ => None,
        };
        if let (Some(outcome), true) = (outcome, info.node.kind != NodeKind::Render) {
            if let (Outcome::Succeeded, Some(manifest)) = (outcome, &info.context) {
                crate::store_view::save_manifest(&self.state_dir, manifest);
            }
            let mut details = output.clone();
            details.insert("duration_ms".to_owned(), duration.as_millis().to_string());
            let record = NodeRecord {
                key: info.node.key.to_hex(),
                outcome,
                components: info.node.components.iter().cloned().collect(),
                details,
                run: self.run_id.clone(),
            };
            if let Err(e) = self.store.record(id, record) {
                self.store_errors.push(e.to_string());
            }
        }
        let log = ran.then(|| self.display(&self.log_path(id)));
        let line = match status {
            NodeStatus::Passed => Some(format!("      PASS {id} ({})", seconds(duration))),
            NodeStatus::Flaky => Some(format!("     FLAKY {id} ({}, {attempts} attempts)", seconds(duration))),
            NodeStatus::Failed { error } => Some(format!("      FAIL {id} ({}): {error}", seconds(duration))),
            NodeStatus::Blocked { by } => Some(format!("   BLOCKED {id} (by {by})")),
            NodeStatus::Cancelled => Some(format!("  CANCELLED {id}")),
            NodeStatus::Skipped { .. } | NodeStatus::NotRun => None,
        };
        self.progress.finished(index, line.as_deref());
        if let NodeStatus::Failed { .. } = status {
            let tail: Vec<String> = self.tails.get(&index).map(|t| t.iter().cloned().collect()).unwrap_or_default();
            let mut text = format!("--- last {} lines of {id} ---\n", tail.len());
            for line in tail {
                text.push_str(&format!("  | {line}\n"));
            }
            if log.is_some() {
                let shown = crate::output::path_for_user(&self.log_path(id));
                text.push_str(&format!("--- full log: {shown}"));
            }
            self.progress.println(&text);
        }
        self.tails.remove(&index);
        self.entries[index] = Some(ReportNode {
            id: id.to_owned(),
            kind: info.node.kind,
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
            duration_ms: duration.as_millis(),
            image: output.get("image").cloned(),
            digest: output.get("digest").cloned(),
            references: if matches!(info.node.kind, NodeKind::Tag | NodeKind::Push) {
                info.references
            } else {
                Vec::new()
            },
            log,
            key: info.node.key.to_hex(),
        });
    }

    pub fn entries(&self) -> Vec<&ReportNode> {
        self.entries.iter().flatten().collect()
    }

    pub fn report_json(&self, summary: &RunSummary) -> String {
        let report = Report { run_id: &self.run_id, summary, nodes: self.entries() };
        serde_json::to_string_pretty(&report).unwrap_or_default()
    }

    pub fn summary_markdown(&self, summary: &RunSummary) -> String {
        let mut md = format!("## trellis run `{}`\n\n", self.run_id);
        md.push_str(&format!("{summary}\n\n"));
        md.push_str("| node | status | attempts | time | details |\n|---|---|---|---|---|\n");
        for entry in self.entries() {
            if entry.action == "skip" {
                continue;
            }
            let details = entry
                .error
                .clone()
                .or(entry.blocked_by.as_ref().map(|b| format!("blocked by `{b}`")))
                .or(entry.image.clone())
                .unwrap_or_default()
                .replace('|', "\\|");
            md.push_str(&format!(
                "| `{}` | {} | {} | {} | {} |\n",
                entry.id,
                entry.status,
                entry.attempts,
                seconds(Duration::from_millis(entry.duration_ms as u64)),
                details
            ));
        }
        md
    }

    /// JUnit XML of the test nodes; flaky attempts recorded the way nextest does
    /// (`flakyFailure` on a passing test case, `rerunFailure` on a failing one).
    pub fn junit(&self, summary: &RunSummary) -> String {
        use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestRerun, TestSuite};
        let mut suite = TestSuite::new("trellis");
        for (index, entry) in self.entries.iter().enumerate() {
            let Some(entry) = entry else { continue };
            if entry.kind != NodeKind::Test || entry.action == "skip" {
                continue;
            }
            let reruns: Vec<TestRerun> = self
                .failures
                .get(&index)
                .into_iter()
                .flatten()
                .map(|(attempt, error)| {
                    let mut rerun = TestRerun::new(NonSuccessKind::Failure);
                    rerun.set_message(format!("attempt {attempt}: {error}"));
                    rerun
                })
                .collect();
            let mut status = match entry.status.as_str() {
                "passed" | "flaky" => TestCaseStatus::success(),
                "blocked" | "cancelled" | "not-run" => TestCaseStatus::skipped(),
                _ => {
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    s.set_message(entry.error.clone().unwrap_or_default());
                    s
                }
            };
            status.add_reruns(reruns);
            let (classname, name) = entry.id.trim_start_matches("test:").rsplit_once('/').unwrap_or(("", &entry.id));
            let mut case = TestCase::new(name.to_owned(), status);
            case.set_classname(classname.to_owned());
            case.set_time(Duration::from_millis(entry.duration_ms as u64));
            if let Some(log) = &entry.log {
                case.add_property(("log", log.as_str()));
            }
            suite.add_test_case(case);
        }
        let mut report = Report::new(format!("trellis-{}", self.run_id));
        report.set_time(summary.duration);
        report.add_test_suite(suite);
        report.to_string().unwrap_or_default()
    }
}

pub fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}
