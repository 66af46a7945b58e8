//! The `trellis` command line: clap structs as close to the flags as possible, one function
//! per command, and the single place where outcomes become exit codes.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use trellis::{Attach, Backend, Error, PlannedNode, RunConfig, Workspace, find_manifest};

use crate::output::{self, GraphFormat};
use crate::reporter::Progress;

/// Exit codes (DESIGN §7): scripts depend on them.
pub mod exit {
    pub const SUCCESS: u8 = 0;
    pub const NODE_FAILED: u8 = 1;
    pub const INVALID_INPUT: u8 = 2;
    pub const UNREACHABLE: u8 = 3;
    pub const INTERRUPTED: u8 = 130;
}

const ABOUT: &str = "Build, test, tag and push families of container images from one matrix.kdl.";

const LONG_ABOUT: &str = "\
Build, test, tag and push families of container images from one matrix.kdl.

trellis compiles matrix.kdl (axes × Dockerfile templates × tag rules × tests) into a graph of
render → build → test → tag → push nodes. Every node has a content key; unchanged nodes are
skipped, and a change re-runs exactly what depends on it.";

const AFTER_HELP: &str = "\
FILTERs select variants and pull in their parents:
  node              every variant of image `node`
  node=22.*         variants whose `node` axis matches the glob
  node/22.20.0/*    variants whose id matches the glob

Examples:
  trellis check                      validate matrix.kdl and templates, print every mistake
  trellis tags node=24.*             which references each Node 24 variant gets
  trellis render && git diff         regenerate the Dockerfiles and review them
  trellis plan --json | jq …         what would run, and why, for scripts
  trellis build --push node=22.*     build, test, tag and push the Node 22 variants
  trellis graph --format dot | dot -Tsvg > graph.svg
  trellis clean                      remove images no current variant produces
  trellis doctor                     what trellis finds: engine, store, builder, registry

Exit codes: 0 success, 1 a node failed (or render --check found stale files),
2 invalid input or usage, 3 engine or registry unreachable, 130 interrupted.

The file format is documented in docs/matrix.md.";

#[derive(Debug, Parser)]
#[command(name = "trellis", version, about = ABOUT, long_about = LONG_ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    /// The workspace file [default: the nearest matrix.kdl in this directory or above]
    #[arg(short = 'f', long = "file", global = true, value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// When to colour diagnostics
    #[arg(long, global = true, value_enum, default_value_t = Color::Auto)]
    pub color: Color,

    #[command(subcommand)]
    pub command: Command,
}

/// One CI job's part of the selected variants (DESIGN §9).
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct SliceArgs {
    /// Only the variants at depth K of the parent graph (bases are 0); their parents must be
    /// in the engine or served by the registry
    #[arg(long, value_name = "K")]
    pub stage: Option<usize>,
    /// Only the I-th of N shards of the selected variants, balanced by their last durations,
    /// the same on every machine reading the same registry
    #[arg(long, value_name = "I/N")]
    pub shard: Option<trellis::Shard>,
}

impl From<SliceArgs> for trellis::Slice {
    fn from(args: SliceArgs) -> Self {
        trellis::Slice { stage: args.stage, shard: args.shard }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse and validate matrix.kdl and every template; print all mistakes at once
    Check,
    /// Show every node with run/skip and the reason
    Plan {
        /// Variants to plan (with their parents) [default: all]
        filters: Vec<String>,
        /// Print JSON: [{"id","kind","action","reason","key"}]
        #[arg(long)]
        json: bool,
        /// Plan a pushing build (`build --push`): push nodes are shown, judged by the registry
        #[arg(long)]
        push: bool,
        /// The registry a pushing build would push to [default: the settings' registry]
        #[arg(long, value_name = "HOST[:PORT]", requires = "push")]
        registry: Option<String>,
        #[command(flatten)]
        slice: SliceArgs,
    },
    /// Run the graph: render, build, test and tag the selected variants (push with --push)
    Build {
        /// Variants to build (with their parents) [default: all]
        filters: Vec<String>,
        /// Also push every reference of the tested variants
        #[arg(long)]
        push: bool,
        /// Skip the tests (tags then follow the builds directly)
        #[arg(long)]
        no_test: bool,
        /// Rebuild the selected variants without the layer cache although their keys are
        /// unchanged (the weekly security refresh), then test, tag and push them
        #[arg(long)]
        refresh: bool,
        /// Push to this registry (host[:port]) instead of the settings' registry
        #[arg(long, value_name = "HOST[:PORT]")]
        registry: Option<String>,
        /// Run at most N nodes at once, of all kinds together
        #[arg(short = 'j', long = "jobs", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
        jobs: Option<u16>,
        /// Extra attempts for a failing build, test or push [default: settings' retries]
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=20))]
        retries: Option<u32>,
        /// Start no new node after the first failure (running nodes finish)
        #[arg(long)]
        fail_fast: bool,
        /// Write a Markdown summary (for CI step summaries)
        #[arg(long, value_name = "PATH")]
        summary_md: Option<PathBuf>,
        /// Write a JUnit XML report of the test nodes
        #[arg(long, value_name = "PATH")]
        junit: Option<PathBuf>,
        #[command(flatten)]
        slice: SliceArgs,
    },
    /// Remove this workspace's images that no current variant produces any more
    Clean,
    /// Check the engine, its image store and builder, the platforms it runs, the registry and
    /// its credentials; say what to fix. Exit 0 when a build would work
    Doctor {
        /// The registry to check [default: the workspace's `registry` setting]
        #[arg(long, value_name = "HOST[:PORT]")]
        registry: Option<String>,
        /// Print JSON: {"ok", "checks": [{"check","status","detail","fix"}]}
        #[arg(long)]
        json: bool,
    },
    /// Write the rendered Dockerfiles (only files whose bytes change), remove orphaned ones
    Render {
        /// Write nothing; exit 1 listing stale, missing and orphaned files
        #[arg(long)]
        check: bool,
    },
    /// Show each variant and the references it is tagged with
    Tags {
        /// Variants to show (with their parents) [default: all]
        filters: Vec<String>,
        /// Print JSON: [{"variant","image","values","references"}]
        #[arg(long)]
        json: bool,
    },
    /// Print the node graph
    Graph {
        #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
    },
    /// Print a CI workflow that builds the family stage by stage, sharded over runners
    Ci {
        #[command(subcommand)]
        target: crate::ci::CiCommand,
    },
}

/// Parses arguments, runs the command, and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let color = match cli.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            let mut stderr = std::io::stderr().lock();
            let text = match &error {
                Error::Invalid(d) => output::diagnostics(&d.0, color),
                other => format!("error: {other}\n"),
            };
            let _ = stderr.write_all(text.as_bytes());
            let code = match error {
                Error::NoEngine(_)
                | Error::NoEmulation(_)
                | Error::Pull { .. }
                | Error::Unauthorized { .. }
                | Error::RegistryUnreachable { .. } => exit::UNREACHABLE,
                _ => exit::INVALID_INPUT,
            };
            ExitCode::from(code)
        }
    }
}

fn run(cli: Cli) -> Result<u8, Error> {
    // The one command that works without a workspace.
    if let Command::Doctor { registry, json } = cli.command {
        return doctor(cli.file, registry, json);
    }
    let manifest = match cli.file {
        Some(file) => file,
        None => {
            let cwd = std::env::current_dir().map_err(|source| Error::Read { path: ".".into(), source })?;
            find_manifest(&cwd)?
        }
    };
    let engine = EngineChoice::from_env()?;
    let text = match cli.command {
        Command::Build {
            filters,
            push,
            no_test,
            refresh,
            registry,
            jobs,
            retries,
            fail_fast,
            summary_md,
            junit,
            slice,
        } => {
            let config = RunConfig {
                filters,
                slice: slice.into(),
                push,
                no_test,
                refresh,
                jobs: jobs.map(usize::from),
                retries,
                fail_fast,
                reports: [&summary_md, &junit].into_iter().flatten().cloned().collect(),
                grace: None,
                shutdown: trellis::Shutdown::new(),
            };
            return build(&manifest, registry, config, engine, Reports { summary_md, junit });
        }
        Command::Clean => return clean(&manifest),
        Command::Doctor { .. } => unreachable!("handled before a workspace is looked for"),
        Command::Plan { filters, json, push, registry, slice } => {
            let inputs = trellis::GraphInputs { registry, ..Default::default() };
            let plan = plan(Workspace::load_with(&manifest, inputs)?, &filters, slice.into(), push, engine)?;
            if json { to_json(&plan) } else { output::plan_table(&plan) }
        }
        Command::Check => check(&manifest)?,
        Command::Tags { filters, json } => {
            let tags = Workspace::load(&manifest)?.tags(&filters)?;
            if json { to_json(&tags) } else { output::tag_table(&tags) }
        }
        Command::Graph { format } => output::graph(Workspace::load(&manifest)?.graph()?, format),
        Command::Ci { target } => crate::ci::run(&manifest, target)?,
        Command::Render { check: false } => render(&manifest)?,
        Command::Render { check: true } => return render_check(&manifest),
    };
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(exit::SUCCESS)
}

fn check(manifest: &Path) -> Result<String, Error> {
    let workspace = Workspace::load(manifest)?;
    let model = workspace.model();
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    Ok(format!(
        "{}: ok — {}, {}, {}\n",
        manifest.display(),
        plural(model.images.len(), "image"),
        plural(model.variants.len(), "variant"),
        plural(workspace.graph()?.dag.node_count(), "node")
    ))
}

fn render(manifest: &Path) -> Result<String, Error> {
    let report = Workspace::load(manifest)?.render()?;
    let mut text = String::new();
    for path in &report.written {
        text.push_str(&format!("wrote   {}\n", path.display()));
    }
    for path in &report.removed {
        text.push_str(&format!("removed {}\n", path.display()));
    }
    text.push_str(&format!(
        "{} written, {} unchanged, {} removed\n",
        report.written.len(),
        report.unchanged,
        report.removed.len()
    ));
    Ok(text)
}

fn render_check(manifest: &Path) -> Result<u8, Error> {
    let check = Workspace::load(manifest)?.check_rendered()?;
    let mut text = String::new();
    for (what, paths) in [("stale", &check.stale), ("missing", &check.missing), ("orphaned", &check.orphaned)] {
        for path in paths {
            text.push_str(&format!("{what:<8} {}\n", path.display()));
        }
    }
    let code = if check.is_clean() {
        text.push_str("rendered Dockerfiles are up to date\n");
        exit::SUCCESS
    } else {
        text.push_str("rendered Dockerfiles are out of date: run `trellis render`\n");
        exit::NODE_FAILED
    };
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(code)
}

/// Where builds go: the Docker Engine (through DOCKER_HOST or the default socket), or, with
/// `TRELLIS_ENGINE=simulate`, a run without containers scripted by the JSON file in
/// `TRELLIS_SIMULATE` (tests and demos of the executor). Read once per command.
enum EngineChoice {
    Docker,
    Simulate(trellis::Simulation),
}

impl EngineChoice {
    fn from_env() -> Result<Self, Error> {
        if std::env::var("TRELLIS_ENGINE").as_deref() != Ok("simulate") {
            return Ok(EngineChoice::Docker);
        }
        let simulation = match std::env::var_os("TRELLIS_SIMULATE") {
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|source| Error::Read { path: PathBuf::from(&path), source })?;
                serde_json::from_str(&text).map_err(|e| Error::NoEngine(format!("bad TRELLIS_SIMULATE script: {e}")))?
            }
            None => trellis::Simulation::default(),
        };
        Ok(EngineChoice::Simulate(simulation))
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Report(std::io::Error::other(e)))
}

/// The plan `build` would follow: with an engine at hand, builds and tags are judged by what it
/// holds (nothing is pulled); without one, by the state store, and stderr says so. Push nodes
/// are planned only for a pushing build (`push`), as `build` runs them only then.
fn plan(
    mut workspace: Workspace,
    filters: &[String],
    slice: trellis::Slice,
    push: bool,
    engine: EngineChoice,
) -> Result<Vec<PlannedNode>, Error> {
    let mut plan = match engine {
        EngineChoice::Simulate(_) => workspace.plan_slice(filters, slice, None)?,
        EngineChoice::Docker => {
            let how = Attach { pull: false, push, filters: filters.to_vec(), slice };
            match runtime()?.block_on(workspace.attach(how, &mut Progress::Lines)) {
                Ok(backend) => {
                    let what = match workspace.model().settings.pull {
                        trellis_model::PullPolicy::Never => "`build` will stop: pull is \"never\"",
                        _ => "`build` will pull it",
                    };
                    for base in workspace.unresolved_bases(filters)? {
                        eprintln!("note: external base {base} is not in the engine; {what}");
                    }
                    workspace.plan_slice(filters, slice, Some(&backend))?
                }
                Err(Error::NoEngine(why)) => {
                    let why = why.lines().next().unwrap_or_default().to_owned();
                    eprintln!("note: no engine ({why}); builds are judged by the state store alone");
                    workspace.plan_slice(filters, slice, None)?
                }
                Err(other) => return Err(other),
            }
        }
    };
    if !push {
        let before = plan.len();
        plan.retain(|node| node.kind != trellis::NodeKind::Push);
        if plan.len() != before {
            eprintln!("note: push nodes not shown; `plan --push` plans `build --push`");
        }
    }
    Ok(plan)
}

/// The reports `build` writes besides report.json.
struct Reports {
    summary_md: Option<PathBuf>,
    junit: Option<PathBuf>,
}

fn build(
    manifest: &Path,
    registry: Option<String>,
    config: RunConfig,
    engine: EngineChoice,
    reports: Reports,
) -> Result<u8, Error> {
    // Reports written inside the workspace are trellis's own files, never build context.
    let root = manifest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let inside = config.reports.iter().filter_map(|p| trellis::inside(root, p)).collect();
    let inputs = trellis::GraphInputs { registry, reports: inside, ..Default::default() };
    let mut workspace = Workspace::load_with(manifest, inputs)?;
    let mut progress = Progress::new(std::io::stderr().is_terminal());
    let outcome = runtime()?.block_on(async {
        let backend = match engine {
            EngineChoice::Simulate(simulation) => Backend::simulate(simulation),
            EngineChoice::Docker => {
                let how =
                    Attach { pull: true, push: config.push, filters: config.filters.clone(), slice: config.slice };
                workspace.attach(how, &mut progress).await?
            }
        };
        config.shutdown.on_signals().map_err(Error::Report)?;
        workspace.run(&config, &backend, &mut progress).await
    })?;
    let write = |path: &Path, text: String| {
        trellis_graph::render::write_if_changed(path, text.as_bytes()).map(|_| ()).map_err(Error::Report)
    };
    if let Some(path) = &reports.summary_md {
        write(path, crate::reporter::summary_markdown(&outcome))?;
    }
    if let Some(path) = &reports.junit {
        write(path, crate::reporter::junit(&outcome))?;
    }
    let summary = outcome.summary;
    Ok(if summary.interrupted() {
        exit::INTERRUPTED
    } else if summary.engine_unreachable {
        exit::UNREACHABLE
    } else if summary.succeeded() {
        exit::SUCCESS
    } else {
        exit::NODE_FAILED
    })
}

/// Removes the workspace's images no current variant produces (see [`Workspace::clean`]).
fn clean(manifest: &Path) -> Result<u8, Error> {
    let mut workspace = Workspace::load(manifest)?;
    let report = runtime()?.block_on(workspace.clean())?;
    for (id, variant, test) in &report.removed {
        println!("removed {id} ({variant}{})", if *test { ", a test image" } else { "" });
    }
    for tag in &report.untagged {
        println!("untagged {tag} (left by an interrupted test)");
    }
    for (id, variant, why) in &report.refused {
        eprintln!("kept {id} ({variant}): {why}");
    }
    let images = if report.kept == 1 { "image" } else { "images" };
    println!("{} removed, {} current {images} kept", report.removed.len(), report.kept);
    Ok(exit::SUCCESS)
}

/// `trellis doctor`: the workspace when there is one (its registry, builder, platforms and
/// compression are checked too), else the engine and `--registry` alone.
fn doctor(file: Option<PathBuf>, registry: Option<String>, json: bool) -> Result<u8, Error> {
    let manifest = match file {
        Some(file) => Some(file),
        None => std::env::current_dir().ok().and_then(|cwd| find_manifest(&cwd).ok()),
    };
    let mut problem = None;
    let workspace = match manifest.as_deref().map(Workspace::load) {
        Some(Ok(workspace)) => Some(workspace),
        Some(Err(error)) => {
            problem = Some(trellis::Finding {
                check: "workspace",
                status: trellis::Status::Failed,
                detail: format!(
                    "{} cannot be read: {}",
                    manifest.as_deref().unwrap_or(Path::new("")).display(),
                    first_line(&error)
                ),
                fix: Some("run `trellis check` for every problem and where it is".to_owned()),
            });
            None
        }
        None => None,
    };
    let asked = registry.is_some();
    let mut found = runtime()?.block_on(trellis::doctor(workspace.as_ref(), registry));
    let unreadable = problem.is_some();
    if let Some(problem) = problem {
        // The workspace names the registry and the compression: unread, there are none to
        // speak of.
        found.checks.retain(|finding| finding.check != "compression" && (asked || finding.check != "registry"));
        found.checks.insert(0, problem);
        found.ok = false;
    }
    let text = match json {
        true => to_json(&found),
        false => output::doctor(&found),
    };
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(match (found.ok, found.unreachable(), unreadable) {
        (true, _, _) => exit::SUCCESS,
        (false, true, _) => exit::UNREACHABLE,
        (false, false, true) => exit::INVALID_INPUT,
        (false, false, false) => exit::NODE_FAILED,
    })
}

fn first_line(error: &Error) -> String {
    match error {
        Error::Invalid(diagnostics) => format!("{} problem(s) in the workspace", diagnostics.0.len()),
        other => other.to_string(),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}
