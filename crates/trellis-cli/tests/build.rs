//! `trellis build` end to end through the real binary, on the simulate backend (scripted
//! durations and failures, no containers): reports, reruns, blocking, retries, the state lock,
//! Ctrl-C and kill -9. Synchronisation is by reading the child's output, never by sleeping.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::Fixture;
use serde_json::Value;

const MATRIX: &str = r#"
settings {
    name "demo"
    retries 0
    backoff "50ms"
    jobs build=2 test=2
}
axis "v" sort="version" "1.0.0" "2.0.0"
image "base" {
    repository "demo/base"
    dockerfile "base.j2"
    context "ctx"
    tag "latest"
}
image "app" {
    matrix "v"
    repository "demo/app"
    dockerfile "app.j2"
    context "ctx"
    arg "V" "{{ v }}"
    tag "{{ v }}"
    tag "latest" float=#true
    test "smoke" { run "true"; }
}
"#;

fn fixture(script: &str) -> Fixture {
    Fixture::new(&[
        ("matrix.kdl", MATRIX),
        ("base.j2", "FROM scratch\n"),
        ("app.j2", "FROM demo/base:latest\nARG V\n"),
        ("ctx/app.js", "console.log(1)\n"),
        ("sim.json", script),
    ])
}

fn trellis(fixture: &Fixture, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_trellis"));
    command
        .args(args)
        .current_dir(fixture.root())
        .env("TRELLIS_ENGINE", "simulate")
        .env("TRELLIS_SIMULATE", fixture.path("sim.json"))
        .env("NO_COLOR", "1");
    command
}

struct Finished {
    code: Option<i32>,
    stderr: String,
}

fn build(fixture: &Fixture, args: &[&str]) -> Finished {
    let output = trellis(fixture, &[&["build"], args].concat()).output().unwrap();
    Finished { code: output.status.code(), stderr: String::from_utf8_lossy(&output.stderr).into_owned() }
}

/// A running build whose stderr lines arrive on a channel.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(fixture: &Fixture, args: &[&str]) -> Self {
        let mut child = trellis(fixture, &[&["build"], args].concat()).stderr(Stdio::piped()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines, seen: Vec::new() }
    }

    /// Blocks until a line containing `needle` arrives (the timeout only guards a hang).
    fn wait_for(&mut self, needle: &str) {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => panic!("no line with {needle:?}; saw:\n{}", self.seen.join("\n")),
            }
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    fn finish(mut self) -> Finished {
        let status = self.child.wait().unwrap();
        self.seen.extend(self.lines.iter());
        Finished { code: status.code(), stderr: self.seen.join("\n") }
    }
}

fn last_report(fixture: &Fixture) -> Value {
    common::last_report(fixture.root())
}

fn node<'r>(report: &'r Value, id: &str) -> &'r Value {
    report["nodes"].as_array().unwrap().iter().find(|n| n["id"] == id).unwrap_or_else(|| panic!("{id} not in report"))
}

#[test]
fn a_second_run_of_an_unchanged_workspace_does_nothing() {
    let fixture = fixture(r#"{"default_ms": 5}"#);
    let first = build(&fixture, &[]);
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    let report = last_report(&fixture);
    let built = node(&report, "build:app/2.0.0");
    for field in ["id", "kind", "action", "status", "attempts", "duration_ms", "image", "log", "key"] {
        assert!(built.get(field).is_some(), "report node lacks {field}: {built}");
    }
    assert_eq!(built["status"], "passed");
    assert_eq!(node(&report, "tag:app/2.0.0")["references"], serde_json::json!(["demo/app:2.0.0", "demo/app:latest"]));
    let log = fixture.path(built["log"].as_str().unwrap());
    assert!(std::fs::read_to_string(log).unwrap().contains("simulating build:app/2.0.0"));

    let second = build(&fixture, &[]);
    assert_eq!(second.code, Some(0));
    assert!(second.stderr.contains("0 passed, 0 flaky, 0 failed, 0 blocked, 11 up to date"), "{}", second.stderr);
    assert!(!second.stderr.contains("START"), "nothing starts:\n{}", second.stderr);
    let report = last_report(&fixture);
    assert!(report["nodes"].as_array().unwrap().iter().all(|n| n["action"] == "skip"));
}

#[test]
fn a_failing_test_blocks_its_tag_shows_its_log_and_exits_1() {
    let fixture =
        fixture(r#"{"default_ms": 5, "nodes": {"test:app/1.0.0/smoke": [{"ms": 5, "fail": "node-failed"}]}}"#);
    let run = build(&fixture, &[]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("FAIL test:app/1.0.0/smoke"));
    assert!(run.stderr.contains("| simulated failure"), "the log's last lines are shown:\n{}", run.stderr);
    assert!(run.stderr.contains("full log: .trellis/logs/"));
    let report = last_report(&fixture);
    assert_eq!(node(&report, "tag:app/1.0.0")["status"], "blocked");
    assert_eq!(node(&report, "tag:app/1.0.0")["blocked_by"], "test:app/1.0.0/smoke");
    assert_eq!(node(&report, "tag:app/2.0.0")["status"], "passed", "independent nodes go on");

    // The next run re-runs the failed test (and what it blocked) and nothing else.
    std::fs::write(fixture.path("sim.json"), r#"{"default_ms": 5}"#).unwrap();
    let plan = trellis(&fixture, &["plan", "--json"]).output().unwrap();
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    let mut runs: Vec<&str> =
        plan.as_array().unwrap().iter().filter(|n| n["action"] == "run").map(|n| n["id"].as_str().unwrap()).collect();
    runs.sort_unstable();
    // Only the failed test and the tag it blocked (no push nodes: the plan is not for --push).
    assert_eq!(runs, ["tag:app/1.0.0", "test:app/1.0.0/smoke"]);
    let failed = plan.as_array().unwrap().iter().find(|n| n["id"] == "test:app/1.0.0/smoke").unwrap();
    assert!(failed["reason"].as_str().unwrap().starts_with("failed in run"));
}

#[test]
fn a_flaky_test_is_reported_as_flaky_in_junit_and_markdown() {
    let fixture = fixture(
        r#"{"default_ms": 5, "nodes": {"test:app/2.0.0/smoke": [{"ms": 5, "fail": "node-failed"}, {"ms": 5}]}}"#,
    );
    let run = build(&fixture, &["--retries", "2", "--junit", "junit.xml", "--summary-md", "summary.md"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stderr.contains("RETRY test:app/2.0.0/smoke"));
    assert!(run.stderr.contains("FLAKY test:app/2.0.0/smoke"));
    let junit = std::fs::read_to_string(fixture.path("junit.xml")).unwrap();
    assert!(junit.contains("<testcase name=\"smoke\" classname=\"app/2.0.0\""), "{junit}");
    assert!(junit.contains("<flakyFailure message=\"attempt 1: simulated test failure\""), "{junit}");
    let summary = std::fs::read_to_string(fixture.path("summary.md")).unwrap();
    assert!(summary.contains("| `test:app/2.0.0/smoke` | flaky | 2 |"), "{summary}");
    // A run with nothing to do says so instead of an empty table.
    let run = build(&fixture, &["--summary-md", "summary.md"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let summary = std::fs::read_to_string(fixture.path("summary.md")).unwrap();
    assert!(summary.contains("Nothing ran: everything was up to date.") && !summary.contains("| node |"), "{summary}");
}

#[test]
fn fail_fast_starts_nothing_after_the_first_failure() {
    let fixture = fixture(r#"{"default_ms": 5, "nodes": {"build:base": [{"ms": 5, "fail": "node-failed"}]}}"#);
    let run = build(&fixture, &["--fail-fast"]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("fail-fast"));
    let report = last_report(&fixture);
    assert_eq!(node(&report, "build:app/2.0.0")["status"], "blocked");
}

#[test]
fn a_second_concurrent_run_fails_fast_naming_the_holder() {
    let fixture = fixture(r#"{"default_ms": 60000}"#);
    let mut first = Running::start(&fixture, &[]);
    first.wait_for("START build:base");
    let second = build(&fixture, &[]);
    assert_eq!(second.code, Some(2));
    assert!(
        second.stderr.contains(&format!("another trellis run (pid {}) holds the lock", first.child.id())),
        "{}",
        second.stderr
    );
    first.signal("-KILL");
    first.finish();
}

#[test]
fn ctrl_c_cancels_cleans_up_writes_the_report_and_exits_130() {
    let fixture = fixture(
        r#"{"default_ms": 60000, "nodes": {"render:base": [{"ms": 1}], "render:app/2.0.0": [{"ms": 1}], "render:app/1.0.0": [{"ms": 1}]}}"#,
    );
    let mut run = Running::start(&fixture, &[]);
    run.wait_for("START build:base");
    run.signal("-INT");
    let finished = run.finish();
    assert_eq!(finished.code, Some(130), "{}", finished.stderr);
    assert!(finished.stderr.contains("CANCEL"));
    let report = last_report(&fixture);
    assert_eq!(node(&report, "build:base")["status"], "cancelled");
    assert_eq!(node(&report, "build:app/2.0.0")["status"], "not-run");
    let log = std::fs::read_to_string(fixture.path(node(&report, "build:base")["log"].as_str().unwrap())).unwrap();
    assert!(log.contains("cancelled: cleaning up"), "the node's cleanup ran:\n{log}");

    // The state is consistent: the next run does the rest and converges.
    std::fs::write(fixture.path("sim.json"), r#"{"default_ms": 5}"#).unwrap();
    assert_eq!(build(&fixture, &[]).code, Some(0));
    assert!(build(&fixture, &[]).stderr.contains("11 up to date"));
}

#[test]
fn kill_9_mid_run_loses_nothing_and_the_next_run_converges() {
    let script =
        r#"{"default_ms": 5, "nodes": {"build:app/2.0.0": [{"ms": 60000}], "build:app/1.0.0": [{"ms": 60000}]}}"#;
    let fixture = fixture(script);
    let mut run = Running::start(&fixture, &[]);
    run.wait_for("PASS tag:base");
    run.wait_for("START build:app/1.0.0");
    run.signal("-KILL");
    let killed = run.finish();
    assert_eq!(killed.code, None, "killed by a signal");

    std::fs::write(fixture.path("sim.json"), r#"{"default_ms": 5}"#).unwrap();
    let rerun = build(&fixture, &[]);
    assert_eq!(rerun.code, Some(0), "{}", rerun.stderr);
    let report = last_report(&fixture);
    assert_eq!(node(&report, "build:base")["action"], "skip", "finished before the kill: kept");
    assert_eq!(node(&report, "tag:base")["action"], "skip");
    assert_eq!(node(&report, "build:app/1.0.0")["action"], "run", "interrupted: runs again");
    let third = build(&fixture, &[]);
    assert!(third.stderr.contains("11 up to date"), "{}", third.stderr);
}

#[test]
fn plan_names_what_changed_after_a_build() {
    let fixture = fixture(r#"{"default_ms": 5}"#);
    assert_eq!(build(&fixture, &[]).code, Some(0));
    fixture.write("ctx/app.js", "console.log(2)\n");
    let text = std::fs::read_to_string(fixture.path("matrix.kdl")).unwrap();
    fixture.write("matrix.kdl", &text.replace("arg \"V\" \"{{ v }}\"", "arg \"V\" \"v{{ v }}\""));
    let plan = trellis(&fixture, &["plan"]).output().unwrap();
    let plan = String::from_utf8_lossy(&plan.stdout);
    assert!(plan.contains("build:base            context file app.js changed"), "{plan}");
    assert!(
        plan.contains("build:app/2.0.0       context file app.js changed; build arg V changed; parent base changed"),
        "{plan}"
    );
    assert!(plan.contains("test:app/2.0.0/smoke  its image was rebuilt"), "{plan}");
}

#[test]
fn reverting_an_edit_skips_what_already_succeeded_with_those_inputs() {
    let fixture = fixture(r#"{"default_ms": 5}"#);
    assert_eq!(build(&fixture, &[]).code, Some(0));
    let text = std::fs::read_to_string(fixture.path("matrix.kdl")).unwrap();
    fixture.write(
        "matrix.kdl",
        &text.replace(r#"test "smoke" { run "true"; }"#, r#"test "smoke" { run "true"; run ":"; }"#),
    );
    let edited = build(&fixture, &[]);
    assert_eq!(edited.code, Some(0), "{}", edited.stderr);
    assert!(edited.stderr.contains("START test:app/2.0.0/smoke"), "{}", edited.stderr);

    fixture.write("matrix.kdl", &text);
    let plan = trellis(&fixture, &["plan", "--json"]).output().unwrap();
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    let running: Vec<&Value> = plan.as_array().unwrap().iter().filter(|n| n["action"] == "run").collect();
    let tests: Vec<&Value> = running.iter().copied().filter(|n| n["kind"] == "test").collect();
    assert!(tests.is_empty(), "the tests passed with these commands before: {tests:#?}");
    let test = plan.as_array().unwrap().iter().find(|n| n["id"] == "test:app/2.0.0/smoke").unwrap();
    assert!(test["reason"].as_str().unwrap().starts_with("up to date (run "), "{test}");
}

#[test]
fn refresh_rebuilds_unchanged_variants() {
    let fixture = fixture(r#"{"default_ms": 5}"#);
    assert_eq!(build(&fixture, &[]).code, Some(0));
    let run = build(&fixture, &["--refresh", "app/1.0.0"]);
    assert_eq!(run.code, Some(0));
    let report = last_report(&fixture);
    assert_eq!(node(&report, "build:app/1.0.0")["action"], "run");
    assert!(node(&report, "build:app/1.0.0")["reason"].as_str().unwrap().contains("refresh"));
    assert_eq!(node(&report, "test:app/1.0.0/smoke")["action"], "run");
    assert_eq!(node(&report, "build:base")["action"], "skip", "a parent pulled in is not refreshed");
    let ids: Vec<&str> = report["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert!(ids.iter().all(|id| !id.contains("2.0.0")), "not selected: {ids:?}");
}

#[test]
fn without_an_engine_build_exits_3() {
    let fixture = fixture("{}");
    let output = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .arg("build")
        .current_dir(fixture.root())
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no container engine"));
}
