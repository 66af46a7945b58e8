//! `trellis ci github`: the GitHub Actions workflow that builds the family on CI runners
//! (DESIGN §9). One job per (stage, shard) — a stage is a depth of the parent graph, so stage
//! K's jobs `need` every job of stage K − 1 and find their parents in the registry — each job
//! checks out, installs trellis, logs in to the registry, runs `trellis build --stage K
//! --shard I/N`, and uploads its reports and logs.
//!
//! The workflow is data (the structs below) written by serde-saphyr, never pasted together
//! from strings: the same workspace and options print the same bytes on every machine.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use indexmap::IndexMap;
use serde::Serialize;

use trellis::{Error, Workspace};

/// How each job gets trellis: built from crates.io at the version that wrote the workflow, so
/// the jobs run a trellis that knows every flag the workflow passes.
pub const INSTALL_TRELLIS: &str = concat!("cargo install --locked trellis-cli --version =", env!("CARGO_PKG_VERSION"));

/// The runner every job runs on, and its own platform: others are emulated with QEMU.
const RUNNER: &str = "ubuntu-latest";
const RUNNER_PLATFORM: &str = "linux/amd64";

const CHECKOUT: &str = "actions/checkout@v4";
const SETUP_QEMU: &str = "docker/setup-qemu-action@v3";
const UPLOAD_ARTIFACT: &str = "actions/upload-artifact@v4";
const JUNIT_REPORT: &str = "mikepenz/action-junit-report@v5";

/// Each job's JUnit report, relative to the repository root.
const JUNIT: &str = "trellis-junit.xml";
/// The run's reports and logs, packed for upload.
const RUN_TARBALL: &str = "trellis-run.tar.gz";
/// The weekly security refresh (`build --refresh`): Mondays 04:17 UTC, off the full hour,
/// when GitHub's scheduler is busiest.
const WEEKLY: &str = "17 4 * * 1";

/// The secrets `docker login` reads, and the variable naming the registry when the settings
/// name none a runner can reach.
const USER_SECRET: &str = "TRELLIS_REGISTRY_USER";
const PASSWORD_SECRET: &str = "TRELLIS_REGISTRY_PASSWORD";
const REGISTRY_VARIABLE: &str = "TRELLIS_REGISTRY";

#[derive(Debug, Subcommand)]
pub enum CiCommand {
    /// Print a GitHub Actions workflow: one job per stage and shard, each stage after the one
    /// before, pushing to the registry (save it as .github/workflows/trellis.yml)
    Github {
        /// Split each stage over at most N jobs (a stage of fewer variants gets fewer)
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        shards: u16,
        /// The default branch: pushes to it and pull requests into it run the workflow
        #[arg(long, value_name = "NAME", default_value = "main")]
        branch: String,
    },
}

/// Runs `trellis ci …` on the workspace at `manifest`; the workflow text for stdout.
pub fn run(manifest: &Path, command: CiCommand) -> Result<String, Error> {
    let CiCommand::Github { shards, branch } = command;
    let workspace = Workspace::load(manifest)?;
    let manifest = relative_to_current_dir(manifest)?;
    let options = GithubOptions { manifest, shards: usize::from(shards), branch };
    let registry = Registry::of(workspace.model().settings.registry.as_deref());
    if let Registry::Variable { unreachable: Some(settings) } = &registry {
        eprintln!(
            "note: the settings' registry {settings} is on the machine that runs trellis, which a runner is not: \
             the workflow pushes to the repository variable {REGISTRY_VARIABLE}"
        );
    }
    Ok(github_workflow(&workspace, &options, &registry))
}

/// What `trellis ci github` was asked for.
#[derive(Debug, Clone)]
pub struct GithubOptions {
    /// matrix.kdl relative to the repository root (the current directory).
    pub manifest: PathBuf,
    pub shards: usize,
    pub branch: String,
}

/// Where the jobs push: the settings' registry, or the repository variable when the settings
/// name none, or name one on the loopback (the machine that ran trellis, not the runner).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registry {
    Settings(String),
    Variable { unreachable: Option<String> },
}

impl Registry {
    pub fn of(settings: Option<&str>) -> Self {
        match settings {
            Some(registry) if is_loopback(registry) => Registry::Variable { unreachable: Some(registry.to_owned()) },
            Some(registry) => Registry::Settings(registry.to_owned()),
            None => Registry::Variable { unreachable: None },
        }
    }
}

/// `localhost:5000`, `127.0.0.1`, `[::1]:5000`.
fn is_loopback(registry: &str) -> bool {
    if let Ok(ip) = registry.parse::<IpAddr>() {
        return ip.is_loopback();
    }
    let host = match registry.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => registry.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `manifest` relative to the current directory, which the workflow takes for the
/// repository's root (jobs run there after the checkout).
fn relative_to_current_dir(manifest: &Path) -> Result<PathBuf, Error> {
    let read = |path: &Path| path.canonicalize().map_err(|source| Error::Read { path: path.to_path_buf(), source });
    let cwd = read(Path::new("."))?;
    let real = read(manifest)?;
    if !cwd.join(".git").exists()
        && let Some(repository) = cwd.ancestors().skip(1).find(|dir| dir.join(".git").exists())
    {
        eprintln!(
            "note: the workflow's paths are relative to this directory, but the repository's root looks like {} \
             (it holds .git): run `trellis ci github` there, with -f",
            repository.display()
        );
    }
    real.strip_prefix(&cwd).map(Path::to_path_buf).map_err(|_| {
        Error::Unsupported(format!(
            "{} is outside the current directory {}: run `trellis ci github` at the repository's root, \
             which is where the workflow's jobs run",
            manifest.display(),
            cwd.display()
        ))
    })
}

/// The workflow, header comment included.
pub fn github_workflow(workspace: &Workspace, options: &GithubOptions, registry: &Registry) -> String {
    let model = workspace.model();
    let stages = trellis_graph::stages(&trellis_graph::depths(workspace.dependencies()));
    let root = options.manifest.parent().unwrap_or(Path::new(""));
    let manifest = slashes(&options.manifest);
    let state = slashes(&root.join(&model.settings.state));
    let pass_file = (manifest != "matrix.kdl").then_some(manifest.as_str());
    let mut jobs = IndexMap::new();
    let mut previous: Vec<String> = Vec::new();
    for (stage, variants) in stages.iter().enumerate() {
        let count = options.shards.min(variants.len()).max(1);
        let mut emulated: Vec<&str> = (variants.iter())
            .flat_map(|&v| model.variants[v].platforms.iter().map(String::as_str))
            .filter(|platform| *platform != RUNNER_PLATFORM)
            .collect();
        emulated.sort_unstable();
        emulated.dedup();
        let ids: Vec<String> = (1..=count).map(|index| format!("stage-{stage}-shard-{index}")).collect();
        for (index, id) in (1..=count).zip(&ids) {
            let job = JobPlan { id, stage, index, count, emulated: &emulated, pass_file, state: &state, registry };
            jobs.insert(id.clone(), job.job(previous.clone()));
        }
        previous = ids;
    }
    let env = IndexMap::from([(
        REGISTRY_VARIABLE,
        match registry {
            Registry::Settings(registry) => registry.clone(),
            Registry::Variable { .. } => format!("${{{{ vars.{REGISTRY_VARIABLE} }}}}"),
        },
    )]);
    let workflow = Workflow {
        name: "trellis",
        on: Triggers {
            push: Branches { branches: vec![options.branch.clone()] },
            pull_request: Branches { branches: vec![options.branch.clone()] },
            workflow_dispatch: Dispatch {
                inputs: IndexMap::from([(
                    "refresh",
                    DispatchInput {
                        description: "Rebuild every image without the layer cache (the weekly security refresh)",
                        kind: "boolean",
                        default: false,
                    },
                )]),
            },
            schedule: vec![Cron { cron: WEEKLY }],
        },
        permissions: IndexMap::from([("contents", "read")]),
        concurrency: Concurrency {
            group: "trellis-${{ github.ref }}",
            cancel_in_progress: "${{ github.event_name == 'pull_request' }}",
        },
        defaults: Defaults { run: RunDefaults { shell: "bash" } },
        env,
        jobs,
    };
    let yaml = serde_saphyr::to_string(&workflow).expect("the workflow is plain strings, lists and maps");
    format!("{}{yaml}", header(options, registry))
}

fn header(options: &GithubOptions, registry: &Registry) -> String {
    let mut command = String::from("trellis");
    if options.manifest != Path::new("matrix.kdl") {
        command.push_str(&format!(" -f {}", shell_word(&slashes(&options.manifest))));
    }
    command.push_str(" ci github");
    if options.shards != 1 {
        command.push_str(&format!(" --shards {}", options.shards));
    }
    if options.branch != "main" {
        command.push_str(&format!(" --branch {}", shell_word(&options.branch)));
    }
    let target = match registry {
        Registry::Settings(registry) => registry.clone(),
        Registry::Variable { .. } => format!("the registry the repository variable {REGISTRY_VARIABLE} names"),
    };
    format!(
        "# Generated by `{command}` (trellis {version}): regenerate it when\n\
         # images or their parents change (a stage is a depth of the parent graph).\n\
         # Pushes to {target},\n\
         # logged in with the secrets {USER_SECRET} and {PASSWORD_SECRET}.\n\
         # Pull requests build and test without pushing; the weekly schedule (and a manual run\n\
         # with `refresh`) rebuilds without the layer cache.\n",
        version = env!("CARGO_PKG_VERSION"),
    )
}

/// One job: what it runs, and what it needs to run it.
struct JobPlan<'a> {
    id: &'a str,
    stage: usize,
    index: usize,
    count: usize,
    /// The platforms its stage builds that the runner's is not.
    emulated: &'a [&'a str],
    /// `-f` for trellis, when matrix.kdl is not at the root.
    pass_file: Option<&'a str>,
    /// The state directory, relative to the root.
    state: &'a str,
    registry: &'a Registry,
}

impl JobPlan<'_> {
    fn title(&self) -> String {
        match self.count {
            1 => format!("stage {}", self.stage),
            count => format!("stage {}, shard {}/{count}", self.stage, self.index),
        }
    }

    fn job(&self, needs: Vec<String>) -> Job {
        let mut steps = vec![Step { name: "Check out".into(), uses: Some(CHECKOUT), ..Step::default() }];
        if !self.emulated.is_empty() {
            steps.push(Step {
                name: format!("Set up QEMU for {}", self.emulated.join(", ")),
                uses: Some(SETUP_QEMU),
                with: IndexMap::from([("platforms", Value::Text(self.emulated.join(",")))]),
                ..Step::default()
            });
        }
        steps.push(Step { name: "Install trellis".into(), run: Some(INSTALL_TRELLIS.into()), ..Step::default() });
        steps.push(self.login());
        steps.push(Step {
            name: format!("Build, test, tag and push {}", self.title()),
            env: IndexMap::from([(
                "TRELLIS_REFRESH",
                "${{ github.event_name == 'schedule' || inputs.refresh }}".into(),
            )]),
            run: Some(self.build_script()),
            ..Step::default()
        });
        // Node logs are named after node ids (`build:app/1.log`), and upload-artifact refuses
        // a `:` in a file name: the reports and logs go packed in one tarball.
        steps.push(Step {
            name: "Pack the run's reports and logs".into(),
            condition: Some("always()"),
            run: Some(format!(
                "dirs=()\n\
                 for dir in runs logs; do if [ -d {state}/\"$dir\" ]; then dirs+=(\"$dir\"); fi; done\n\
                 if [ ${{#dirs[@]}} -gt 0 ]; then tar -czf {RUN_TARBALL} -C {state} \"${{dirs[@]}}\"; fi\n",
                state = shell_word(self.state),
            )),
            ..Step::default()
        });
        steps.push(Step {
            name: "Upload the run's reports and logs".into(),
            condition: Some("always()"),
            uses: Some(UPLOAD_ARTIFACT),
            with: IndexMap::from([
                ("name", Value::Text(format!("trellis-{}-${{{{ github.run_attempt }}}}", self.id))),
                ("path", Value::Text(RUN_TARBALL.into())),
                ("if-no-files-found", Value::Text("ignore".into())),
            ]),
            ..Step::default()
        });
        steps.push(Step {
            name: "Publish the test results".into(),
            condition: Some("always()"),
            uses: Some(JUNIT_REPORT),
            with: IndexMap::from([
                ("report_paths", Value::Text(JUNIT.into())),
                // Annotations and the job summary, no check run: that would need `checks: write`,
                // which a pull request from a fork does not get.
                ("annotate_only", Value::Bool(true)),
            ]),
            ..Step::default()
        });
        Job { name: self.title(), needs, runs_on: RUNNER, steps }
    }

    fn login(&self) -> Step {
        let mut script = String::new();
        if matches!(self.registry, Registry::Variable { .. }) {
            // A pull request from a fork gets no repository variables: it builds and tests
            // without the registry.
            script.push_str(&format!(
                "if [ -z \"${REGISTRY_VARIABLE}\" ] && [ \"$GITHUB_EVENT_NAME\" = pull_request ]; then\n  \
                 echo \"::notice::no repository variable {REGISTRY_VARIABLE} (a pull request from a fork?): built and tested without the registry\"\n  \
                 exit 0\nfi\n\
                 if [ -z \"${REGISTRY_VARIABLE}\" ]; then\n  \
                 echo \"::error::set the repository variable {REGISTRY_VARIABLE} to the registry to push to (host[:port])\"\n  \
                 exit 1\nfi\n"
            ));
        }
        script.push_str(&format!(
            "if [ -z \"${USER_SECRET}\" ]; then\n  \
             echo \"::notice::no {USER_SECRET} secret (a pull request from a fork?): the registry is read anonymously\"\n  \
             exit 0\nfi\n\
             printf '%s' \"${PASSWORD_SECRET}\" | docker login \"${REGISTRY_VARIABLE}\" --username \"${USER_SECRET}\" --password-stdin\n"
        ));
        Step {
            name: "Log in to the registry".into(),
            env: IndexMap::from([
                (USER_SECRET, format!("${{{{ secrets.{USER_SECRET} }}}}")),
                (PASSWORD_SECRET, format!("${{{{ secrets.{PASSWORD_SECRET} }}}}")),
            ]),
            run: Some(script),
            ..Step::default()
        }
    }

    fn build_script(&self) -> String {
        let mut command = String::from("trellis");
        if let Some(manifest) = self.pass_file {
            command.push_str(&format!(" -f {}", shell_word(manifest)));
        }
        command.push_str(" build \"${flags[@]}\" \"${slice[@]}\"");
        let variable = matches!(self.registry, Registry::Variable { .. });
        if variable {
            command.push_str(" \"${registry[@]}\"");
        }
        let mut slice = format!("--stage {}", self.stage);
        if self.count > 1 {
            slice.push_str(&format!(" --shard {}/{}", self.index, self.count));
        }
        // A pull request pushes nothing, so a later stage would not find its parents in the
        // registry: the first job builds and tests the whole family (what is served is
        // skipped), the others have nothing to do.
        let pull_request = match (self.stage, self.index) {
            (0, 1) => "  slice=()\n".to_owned(),
            _ => {
                "  echo \"::notice::a pull request is built and tested whole by the first job\"\n  exit 0\n".to_owned()
            }
        };
        // Empty on a pull request from a fork (see the login step).
        let registry = match variable {
            true => format!(
                "registry=()\nif [ -n \"${REGISTRY_VARIABLE}\" ]; then registry=(--registry \"${REGISTRY_VARIABLE}\"); fi\n"
            ),
            false => String::new(),
        };
        format!(
            "flags=()\n\
             slice=({slice})\n\
             {registry}\
             if [ \"$GITHUB_EVENT_NAME\" = pull_request ]; then\n{pull_request}else\n  flags+=(--push)\nfi\n\
             if [ \"$TRELLIS_REFRESH\" = true ]; then flags+=(--refresh); fi\n\
             {command} \\\n  --summary-md \"$GITHUB_STEP_SUMMARY\" --junit {JUNIT}\n"
        )
    }
}

/// A path as the workflow writes it: forward slashes, whatever the host.
fn slashes(path: &Path) -> String {
    path.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

/// `word` as one shell word: unquoted when it is plain, single-quoted otherwise.
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_./-+:@%=,".contains(c);
    match !word.is_empty() && word.chars().all(plain) {
        true => word.to_owned(),
        false => format!("'{}'", word.replace('\'', r"'\''")),
    }
}

// The workflow's shape, as GitHub documents it; fields in the order they are written.

#[derive(Serialize)]
struct Workflow {
    name: &'static str,
    on: Triggers,
    permissions: IndexMap<&'static str, &'static str>,
    concurrency: Concurrency,
    defaults: Defaults,
    env: IndexMap<&'static str, String>,
    jobs: IndexMap<String, Job>,
}

#[derive(Serialize)]
struct Triggers {
    push: Branches,
    pull_request: Branches,
    workflow_dispatch: Dispatch,
    schedule: Vec<Cron>,
}

#[derive(Serialize)]
struct Branches {
    branches: Vec<String>,
}

#[derive(Serialize)]
struct Dispatch {
    inputs: IndexMap<&'static str, DispatchInput>,
}

#[derive(Serialize)]
struct DispatchInput {
    description: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    default: bool,
}

#[derive(Serialize)]
struct Cron {
    cron: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Concurrency {
    group: &'static str,
    cancel_in_progress: &'static str,
}

#[derive(Serialize)]
struct Defaults {
    run: RunDefaults,
}

#[derive(Serialize)]
struct RunDefaults {
    shell: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Job {
    name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    needs: Vec<String>,
    runs_on: &'static str,
    steps: Vec<Step>,
}

#[derive(Serialize, Default)]
struct Step {
    name: String,
    #[serde(rename = "if", skip_serializing_if = "Option::is_none")]
    condition: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uses: Option<&'static str>,
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    with: IndexMap<&'static str, Value>,
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    env: IndexMap<&'static str, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    run: Option<String>,
}

/// An action input: text, or a YAML boolean rather than the string "true".
#[derive(Serialize)]
#[serde(untagged)]
enum Value {
    Text(String),
    Bool(bool),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_not_the_runners() {
        for registry in ["localhost:5000", "LOCALHOST", "127.0.0.1:5000", "127.1.2.3", "[::1]:5000", "::1"] {
            assert!(is_loopback(registry), "{registry}");
        }
        for registry in ["registry.example.com", "ghcr.io", "10.0.0.1:5000", "[2001:db8::1]:443", "localhost.example"] {
            assert!(!is_loopback(registry), "{registry}");
        }
        assert_eq!(
            Registry::of(Some("127.0.0.1:5000")),
            Registry::Variable { unreachable: Some("127.0.0.1:5000".into()) }
        );
        assert_eq!(Registry::of(Some("ghcr.io")), Registry::Settings("ghcr.io".into()));
        assert_eq!(Registry::of(None), Registry::Variable { unreachable: None });
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_word("images/matrix.kdl"), "images/matrix.kdl");
        assert_eq!(shell_word("my images/matrix.kdl"), "'my images/matrix.kdl'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn the_install_command_pins_this_version() {
        assert_eq!(
            INSTALL_TRELLIS,
            format!("cargo install --locked trellis-cli --version ={}", env!("CARGO_PKG_VERSION"))
        );
    }
}
