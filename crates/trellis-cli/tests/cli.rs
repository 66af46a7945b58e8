//! The real `trellis` binary: exit codes, output shapes, manifest discovery, help.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::family;

struct Run {
    output: Output,
}

impl Run {
    fn new(dir: &Path, args: &[&str]) -> Self {
        Self::with_env(dir, args, &[])
    }

    fn with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let output = Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args(args)
            .current_dir(dir)
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .output()
            .expect("the binary runs");
        Self { output }
    }

    fn code(&self, expected: i32) -> &Self {
        assert_eq!(self.output.status.code(), Some(expected), "stdout:\n{}\nstderr:\n{}", self.stdout(), self.stderr());
        self
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    fn stdout_has(&self, needle: &str) -> &Self {
        assert!(self.stdout().contains(needle), "stdout lacks {needle:?}:\n{}", self.stdout());
        self
    }

    fn stderr_has(&self, needle: &str) -> &Self {
        assert!(self.stderr().contains(needle), "stderr lacks {needle:?}:\n{}", self.stderr());
        self
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout()).expect("stdout is JSON")
    }
}

#[test]
fn check_finds_matrix_kdl_upward_like_cargo() {
    let fixture = family();
    Run::new(&fixture.path("contexts/app"), &["check"]).code(0).stdout_has("10 variants, 46 nodes");
}

#[test]
fn no_manifest_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    Run::new(dir.path(), &["check"]).code(2).stderr_has("no matrix.kdl in");
}

#[test]
fn invalid_input_exits_2_with_every_diagnostic() {
    let fixture = family();
    let text = std::fs::read_to_string(fixture.path("matrix.kdl")).unwrap();
    fixture.write("matrix.kdl", &text.replace("tag \"{{ os }}\"", "tag \"{{ oss }}\"").replace("retries", "x"));
    let run = Run::new(fixture.root(), &["plan"]);
    run.code(2).stderr_has("`oss` is undefined").stderr_has("problems found; nothing was run");
    assert_eq!(run.stderr().matches("trellis::template::undefined").count(), 2, "one per tag rule, not per variant");
}

#[test]
fn plan_json_has_the_documented_shape() {
    let fixture = family();
    // No engine at that socket: the plan is judged by the state store alone, and says so.
    let run =
        Run::with_env(fixture.root(), &["plan", "--json", "tool"], &[("DOCKER_HOST", "unix:///nonexistent.sock")]);
    run.code(0);
    assert!(run.stderr().contains("note: no engine"), "{}", run.stderr());
    let plan = run.json();
    let nodes = plan.as_array().unwrap();
    // Render, build and tag of each OS: push nodes are planned only for `--push`.
    assert_eq!(nodes.len(), 6, "{plan}");
    assert!(run.stderr().contains("push nodes not shown"), "{}", run.stderr());
    assert_eq!(nodes[0]["id"], "render:tool/trixie");
    for node in nodes {
        for field in ["id", "kind", "action", "reason", "key"] {
            assert!(node.get(field).is_some(), "{field} missing in {node}");
        }
    }
    assert_eq!(nodes[1]["kind"], "build");
    assert_eq!(nodes[1]["action"], "run");
    assert_eq!(nodes[1]["reason"], "never built");
    let pushing = Run::with_env(
        fixture.root(),
        &["plan", "--json", "--push", "tool"],
        &[("DOCKER_HOST", "unix:///nonexistent.sock")],
    );
    let pushes: Vec<String> = (pushing.code(0).json().as_array().unwrap().iter())
        .filter(|n| n["kind"] == "push")
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(pushes, ["push:tool/trixie", "push:tool/bookworm"]);
}

#[test]
fn tags_json_has_the_documented_shape() {
    let fixture = family();
    let run = Run::new(fixture.root(), &["tags", "--json", "version=2.*"]);
    let tags = run.code(0).json();
    let app = tags.as_array().unwrap().iter().find(|t| t["variant"] == "app/2.0.0/trixie").unwrap();
    assert_eq!(app["image"], "app");
    assert_eq!(app["values"], serde_json::json!({"version": "2.0.0", "os": "trixie"}));
    assert_eq!(app["references"], serde_json::json!(["acme/app:2.0.0-trixie", "acme/app:2-trixie"]));
    assert_eq!(app["platforms"], serde_json::json!([]), "built for the engine's own platform");
}

#[test]
fn render_check_exits_1_until_rendered() {
    let fixture = family();
    Run::new(fixture.root(), &["render", "--check"])
        .code(1)
        .stdout_has("missing  dockerfiles/app/2.0.0/trixie/Dockerfile");
    Run::new(fixture.root(), &["render"]).code(0).stdout_has("10 written, 0 unchanged, 0 removed");
    Run::new(fixture.root(), &["render", "--check"]).code(0).stdout_has("up to date");
    Run::new(fixture.root(), &["render"]).code(0).stdout_has("0 written, 10 unchanged");
    Run::new(fixture.root(), &["plan", "base"]).code(0).stdout_has("skip  render:base/trixie");
}

#[test]
fn an_unmatched_filter_is_a_usage_error() {
    let fixture = family();
    Run::new(fixture.root(), &["plan", "nginx"]).code(2).stderr_has("filter `nginx` matches no variant");
}

#[test]
fn graph_formats() {
    let fixture = family();
    Run::new(fixture.root(), &["graph"]).code(0).stdout_has("\"tag:base/trixie\" -> \"build:app/2.0.0/trixie\";");
    Run::new(fixture.root(), &["graph", "--format", "mermaid"]).code(0).stdout_has("flowchart LR");
    let json = Run::new(fixture.root(), &["graph", "--format", "json"]).code(0).json();
    assert_eq!(json["nodes"].as_array().unwrap().len(), 46);
    assert!(
        json["edges"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["from"] == "push:base/bookworm" && e["to"] == "push:app/1.0.0/bookworm")
    );
}

#[test]
fn help_teaches_filters_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    Run::new(dir.path(), &["--help"])
        .code(0)
        .stdout_has("node=22.*")
        .stdout_has("Exit codes")
        .stdout_has("docs/matrix.md");
    Run::new(dir.path(), &["frobnicate"]).code(2);
}

#[test]
fn dash_f_names_the_file() {
    let fixture = family();
    let elsewhere = tempfile::tempdir().unwrap();
    let manifest = fixture.path("matrix.kdl");
    Run::new(elsewhere.path(), &["-f", manifest.to_str().unwrap(), "tags", "tool"])
        .code(0)
        .stdout_has("acme/tool:trixie");
}
