//! What the command shows of a run: live progress (a bar on a terminal, one line per start and
//! finish otherwise) fed by the library's events, and at the end the Markdown summary and
//! JUnit written from the run's report. Nothing here decides what the next run skips: the
//! library recorded that before this sink saw anything.

use std::collections::BTreeSet;
use std::time::Duration;

use trellis::{CancelReason, Event, EventSink, NodeKind, ReportNode, RunOutcome};

use crate::output::path_for_user;

/// Live progress on stderr.
pub enum Progress {
    Bar { bar: indicatif::ProgressBar, running: BTreeSet<String> },
    Lines,
}

impl Progress {
    pub fn new(terminal: bool) -> Self {
        if !terminal {
            return Progress::Lines;
        }
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {wide_msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress::Bar { bar, running: BTreeSet::new() }
    }

    /// A line that stays: printed above the bar on a terminal, to stderr otherwise.
    fn println(&self, line: &str) {
        match self {
            Progress::Bar { bar, .. } => bar.println(line),
            Progress::Lines => eprintln!("{line}"),
        }
    }

    fn started(&mut self, id: &str, attempt: u32) {
        match self {
            Progress::Bar { bar, running } => {
                running.insert(id.to_owned());
                bar.set_message(running.iter().map(String::as_str).collect::<Vec<_>>().join(" "));
            }
            Progress::Lines if attempt > 1 => eprintln!("     START {id} (attempt {attempt})"),
            Progress::Lines => eprintln!("     START {id}"),
        }
    }

    fn finished(&mut self, node: &ReportNode, tail: &[String]) {
        if let Progress::Bar { bar, running } = self
            && node.action == "run"
        {
            running.remove(&node.id);
            bar.inc(1);
        }
        let (id, took) = (&node.id, seconds(Duration::from_millis(node.duration_ms as u64)));
        let line = match node.status.as_str() {
            "passed" => format!("      PASS {id} ({took})"),
            "flaky" => format!("     FLAKY {id} ({took}, {} attempts)", node.attempts),
            "failed" => format!("      FAIL {id} ({took}): {}", node.error.as_deref().unwrap_or_default()),
            "blocked" => format!("   BLOCKED {id} (by {})", node.blocked_by.as_deref().unwrap_or_default()),
            "cancelled" => format!("  CANCELLED {id}"),
            _ => return,
        };
        self.println(&line);
        if node.status == "failed" {
            let mut text = format!("--- last {} lines of {id} ---\n", tail.len());
            for line in tail {
                text.push_str(&format!("  | {line}\n"));
            }
            if let Some(log) = &node.log_path {
                text.push_str(&format!("--- full log: {}", path_for_user(log)));
            }
            self.println(&text);
        }
    }
}

impl EventSink for Progress {
    fn event(&mut self, event: &Event<'_>) {
        match event {
            Event::Pulling { base, attempt: 1 } => self.println(&format!("pulling {base}")),
            Event::Pulling { base, attempt } => self.println(&format!("pulling {base} (attempt {attempt})")),
            Event::Pulled { base, image } => self.println(&format!("pulled {base}: {image}")),
            Event::PullFailed { base, error, retry_in } => {
                self.println(&format!("pulling {base} failed, retrying in {}: {error}", seconds(*retry_in)))
            }
            Event::RunStarted { to_run, .. } => {
                if let Progress::Bar { bar, .. } = self {
                    bar.set_length(*to_run as u64);
                }
            }
            Event::NodeStarted { id, attempt, .. } => self.started(id, *attempt),
            Event::Output { .. } => {}
            Event::Retrying { id, error, retry_in, .. } => {
                self.println(&format!("     RETRY {id} in {}: {error}", seconds(*retry_in)))
            }
            Event::NodeFinished { node, tail } => self.finished(node, tail),
            Event::Cancelling { reason } => self.println(&format!(
                "  CANCEL   {}: no new nodes start",
                match reason {
                    CancelReason::FailFast => "fail-fast after a failure",
                    CancelReason::Signal => "interrupted; running nodes clean up (again to stop at once)",
                    CancelReason::SecondSignal => "interrupted twice; stopping now",
                }
            )),
            Event::Warning { message } => self.println(&format!("warning: {message}")),
            Event::RunFinished { summary, report, builder } => {
                if let Progress::Bar { bar, .. } = self {
                    bar.finish_and_clear();
                }
                let builder = builder.map(|b| format!(" — builder {b}")).unwrap_or_default();
                eprintln!("{summary}{builder} — report: {}", path_for_user(report));
            }
        }
    }
}

/// The Markdown summary of a run (for CI step summaries): the nodes that ran.
pub fn summary_markdown(outcome: &RunOutcome) -> String {
    let mut md = format!("## trellis run `{}`\n\n", outcome.run_id);
    md.push_str(&format!("{}\n\n", outcome.summary));
    let ran: Vec<_> = outcome.nodes.iter().filter(|n| n.action != "skip").collect();
    if ran.is_empty() {
        md.push_str("Nothing ran: everything was up to date.\n");
        return md;
    }
    md.push_str("| node | status | attempts | time | details |\n|---|---|---|---|---|\n");
    for entry in ran {
        let details = (entry.error.clone())
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

/// JUnit XML of the test nodes that ran; flaky attempts recorded the way nextest does
/// (`flakyFailure` on a passing test case, `rerunFailure` on a failing one).
pub fn junit(outcome: &RunOutcome) -> String {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestRerun, TestSuite};
    let mut suite = TestSuite::new("trellis");
    for entry in outcome.nodes.iter().filter(|n| n.kind == NodeKind::Test && n.action != "skip") {
        let reruns = entry.failed_attempts.iter().map(|failed| {
            let mut rerun = TestRerun::new(NonSuccessKind::Failure);
            rerun.set_message(format!("attempt {}: {}", failed.attempt, failed.error));
            rerun
        });
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
        // `test:<variant>/<test>[@<platform>]`: the variant is the class, the test (and its
        // platform, when named) the case.
        let id = entry.id.trim_start_matches("test:");
        let id = id.split_once('@').map_or(id, |(id, _)| id);
        let (classname, name) = id.rsplit_once('/').unwrap_or(("", id));
        let name = match &entry.platform {
            Some(platform) => format!("{name} [{platform}]"),
            None => name.to_owned(),
        };
        let mut case = TestCase::new(name, status);
        case.set_classname(classname.to_owned());
        case.set_time(Duration::from_millis(entry.duration_ms as u64));
        if let Some(log) = &entry.log {
            case.add_property(("log", log.as_str()));
        }
        suite.add_test_case(case);
    }
    let mut report = Report::new(format!("trellis-{}", outcome.run_id));
    report.set_time(outcome.summary.duration);
    report.add_test_suite(suite);
    report.to_string().unwrap_or_default()
}

pub fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}
