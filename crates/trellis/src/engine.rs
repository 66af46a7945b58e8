//! The executor's engine for trellis nodes: render nodes write their Dockerfile here; build,
//! test, tag and push go to a backend — the Docker engine, or `simulate`, which runs the
//! graph without containers (scripted durations and failures) for tests and demos.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use trellis_exec::{Engine, ErrorClass, Job, JobContext, JobError, JobOutput};
use trellis_graph::{Node, NodeKind};

/// What a job carries: the graph node it runs.
#[derive(Debug, Clone)]
pub struct NodeJob {
    pub node: Node,
    /// For render nodes: where the Dockerfile goes and its bytes.
    pub render: Option<(PathBuf, Arc<str>)>,
    /// Build without the layer cache (`--refresh`).
    pub no_cache: bool,
}

#[derive(Debug, Clone)]
pub enum Backend {
    Simulate(Arc<Simulation>),
    Docker(Arc<DockerBackend>),
}

impl Backend {
    /// The engine's images of this workspace by build key, when the backend has an engine.
    pub fn images_by_key(&self) -> Option<&HashMap<String, trellis_docker::ImageListing>> {
        match self {
            Backend::Simulate(_) => None,
            Backend::Docker(docker) => Some(&docker.by_key),
        }
    }

    /// When the run pushes: what the registry serves, by `registry/repository:tag`, and the
    /// registry.
    pub fn served(&self) -> Option<(&HashMap<String, Option<String>>, &str)> {
        match self {
            Backend::Docker(docker) => docker.served.as_ref().zip(docker.registry.as_deref()),
            Backend::Simulate(_) => None,
        }
    }
}

/// The Docker Engine: builds, tests as layers, tags.
#[derive(Debug)]
pub struct DockerBackend {
    pub client: trellis_docker::DockerClient,
    pub model: Arc<trellis_model::Workspace>,
    /// The workspace's images by their `dev.trellis.key` label: one listing per run.
    pub by_key: HashMap<String, trellis_docker::ImageListing>,
    /// Image ID per variant: up-to-date builds from the listing, then this run's builds.
    pub images: Mutex<HashMap<usize, String>>,
    /// Push target (`--registry` or the settings'), and its credentials from the docker
    /// config, looked up once per run.
    pub registry: Option<String>,
    pub credentials: Option<trellis_docker::DockerCredentials>,
    /// When the run pushes: the digest the registry serves for every reference
    /// (`registry/repository:tag`), asked once before planning; `None` when it serves none.
    pub served: Option<HashMap<String, Option<String>>>,
    /// `org.opencontainers.image.*` labels of this run (created; revision and source when in
    /// git). Not part of any key: a new commit alone must not rebuild anything.
    pub run_labels: HashMap<String, String>,
    /// trellis's own files: left out of the tars as they were left out of the keys.
    pub own_files: Arc<trellis_graph::OwnFiles>,
    /// Per variant, the variants its Dockerfile builds on.
    pub parents: Vec<Vec<usize>>,
}

/// The OCI labels describing this run: when, and from which commit of which repository.
pub fn run_labels(root: &std::path::Path) -> HashMap<String, String> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let mut labels = HashMap::new();
    labels.insert(
        "org.opencontainers.image.created".to_owned(),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    );
    if let Some(revision) = git(&["rev-parse", "HEAD"]) {
        labels.insert("org.opencontainers.image.revision".to_owned(), revision);
    }
    if let Some(source) = git(&["config", "--get", "remote.origin.url"]) {
        labels.insert("org.opencontainers.image.source".to_owned(), source);
    }
    labels
}

#[derive(Debug, Clone)]
pub struct NodeEngine {
    pub backend: Backend,
}

impl Engine<NodeJob> for NodeEngine {
    fn run(&self, job: &Job<NodeJob>, ctx: JobContext) -> impl Future<Output = Result<JobOutput, JobError>> + Send {
        let payload = job.payload.clone();
        let backend = self.backend.clone();
        async move {
            if let Some((path, text)) = &payload.render {
                return match trellis_graph::render::write_if_changed(path, text.as_bytes()) {
                    Ok(true) => {
                        ctx.line(format!("wrote {}", path.display()));
                        Ok(JobOutput::new())
                    }
                    Ok(false) => Ok(JobOutput::new()),
                    Err(e) => {
                        Err(JobError::new(ErrorClass::InvalidInput, format!("cannot write {}: {e}", path.display())))
                    }
                };
            }
            match backend {
                Backend::Simulate(simulation) => simulation.run(&payload.node, &ctx).await,
                Backend::Docker(docker) => docker.run(&payload, &ctx).await,
            }
        }
    }
}

/// A scripted stand-in for the container engine (`TRELLIS_ENGINE=simulate`, script in
/// `TRELLIS_SIMULATE`): every node takes `default_ms` unless the script says otherwise for
/// its id; a step with `fail` fails that attempt; the last step repeats.
#[derive(Debug, Clone, Deserialize)]
pub struct Simulation {
    #[serde(default = "default_ms")]
    pub default_ms: u64,
    #[serde(default)]
    pub nodes: HashMap<String, Vec<SimStep>>,
}

fn default_ms() -> u64 {
    10
}

#[derive(Debug, Clone, Deserialize)]
pub struct SimStep {
    pub ms: u64,
    #[serde(default)]
    pub fail: Option<ErrorClass>,
}

impl Default for Simulation {
    fn default() -> Self {
        Self { default_ms: default_ms(), nodes: HashMap::new() }
    }
}

impl Simulation {
    async fn run(&self, node: &Node, ctx: &JobContext) -> Result<JobOutput, JobError> {
        let step = match self.nodes.get(&node.id) {
            Some(steps) if !steps.is_empty() => steps[(ctx.attempt as usize - 1).min(steps.len() - 1)].clone(),
            _ => SimStep { ms: self.default_ms, fail: None },
        };
        ctx.line(format!("simulating {} (attempt {}, {} ms)", node.id, ctx.attempt, step.ms));
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(step.ms)) => {}
            () = ctx.cancel.cancelled() => {
                ctx.line("cancelled: cleaning up");
                return Err(JobError::cancelled());
            }
        }
        if let Some(class) = step.fail {
            ctx.line("simulated failure");
            return Err(JobError::new(class, format!("simulated {} failure", node.kind.as_str())));
        }
        let mut output = JobOutput::new();
        if node.kind == NodeKind::Build {
            output.insert("image".to_owned(), format!("sha256:{}", node.key.to_hex()));
        }
        Ok(output)
    }
}

/// Retried: what can be transient (an engine or registry away, a failing RUN step). Not
/// retried: what the engine refuses as it stands, and refused credentials.
fn engine_error(error: trellis_docker::EngineError) -> JobError {
    use trellis_docker::EngineError as E;
    let class = match error {
        E::Unreachable(_) => ErrorClass::EngineUnreachable,
        E::Failed(_) => ErrorClass::NodeFailed,
        E::Refused(_) => ErrorClass::InvalidInput,
        E::Unauthorized(_) => ErrorClass::AccessDenied,
    };
    JobError::new(class, error.to_string())
}

impl DockerBackend {
    /// A push or registry error; a refusal names the registry and the user.
    fn registry_error(&self, registry: &str, error: trellis_docker::EngineError) -> JobError {
        match error {
            trellis_docker::EngineError::Unauthorized(detail) => {
                let user = self.credentials.as_ref().and_then(|c| c.username.as_deref());
                let who = user.map_or_else(|| "access without credentials".to_owned(), |u| format!("user `{u}`"));
                JobError::new(
                    ErrorClass::AccessDenied,
                    format!(
                        "unauthorized: {registry} refused {who} ({detail}); check the credentials in the docker config (`docker login {registry}`)"
                    ),
                )
            }
            other => engine_error(other),
        }
    }
}

impl DockerBackend {
    /// The image ID of a variant: built in this run, or up to date in the engine.
    fn image_of(&self, variant: usize) -> Result<String, JobError> {
        self.images
            .lock()
            .map_err(|_| JobError::failed("image table poisoned"))?
            .get(&variant)
            .cloned()
            .ok_or_else(|| JobError::new(ErrorClass::InvalidInput, "the variant's image is not in the engine"))
    }

    async fn run(&self, job: &NodeJob, ctx: &JobContext) -> Result<JobOutput, JobError> {
        let node = &job.node;
        let variant = &self.model.variants[node.variant];
        let mut output = JobOutput::new();
        let mut log = |line: &str| ctx.line(line);
        match node.kind {
            NodeKind::Build => {
                let dir = self.model.root.join(&variant.context);
                let own = self.own_files.in_context(&variant.context);
                let planned = node.components.iter().find(|(n, _)| n == "context").map(|(_, d)| d.clone());
                // The tar comes from the same walk as the key; refuse to build other content.
                let walk = tokio::task::spawn_blocking(move || {
                    let walk = trellis_graph::ContextWalk::new(&dir, &own)?;
                    let digest = walk.digest()?;
                    Ok::<_, trellis_graph::ContextError>((walk, digest))
                })
                .await
                .map_err(|e| JobError::failed(e.to_string()))?
                .map_err(|e| JobError::new(ErrorClass::InvalidInput, e.to_string()))?;
                if planned.as_deref() != Some(walk.1.to_hex().as_str()) {
                    return Err(JobError::new(
                        ErrorClass::InvalidInput,
                        "the build context changed after planning: run trellis build again",
                    ));
                }
                let mut labels = self.run_labels.clone();
                // The version is the variant's first tag unless the matrix says otherwise (like
                // the run's labels it is not part of the key: renaming a tag rebuilds nothing).
                if let Some(first) = variant.references.first() {
                    labels.insert("org.opencontainers.image.version".to_owned(), first.tag.clone());
                }
                // The matrix's own labels win over the run's.
                labels.extend(variant.labels.iter().cloned());
                use trellis_docker::labels as trellis_labels;
                labels.insert(trellis_labels::WORKSPACE.to_owned(), self.model.settings.name.clone());
                labels.insert(trellis_labels::VARIANT.to_owned(), variant.id.clone());
                labels.insert(trellis_labels::KEY.to_owned(), node.key.to_hex());
                // The tested images of the parents the FROM lines resolve to now: a parent
                // rebuilt later under the same key then makes this image stale.
                let mut parents = Vec::new();
                for &parent in &self.parents[node.variant] {
                    parents.push(format!("{}@{}", self.model.variants[parent].id, self.image_of(parent)?));
                }
                labels.insert(trellis_labels::PARENTS.to_owned(), parents.join(","));
                let request = trellis_docker::BuildRequest {
                    dockerfile: &variant.dockerfile,
                    context: Some(&walk.0),
                    args: &variant.args,
                    labels,
                    network: variant.network.as_str(),
                    target: variant.target.as_deref(),
                    no_cache: job.no_cache,
                };
                let mut trace = trellis_docker::BuildTrace::default();
                let id = tokio::select! {
                    result = self.client.build(request, &mut trace, &mut log) => result.map_err(engine_error),
                    () = ctx.cancel.cancelled() => Err(JobError::cancelled()),
                };
                // Dropping the stream does not stop a running step: remove its container.
                if id.is_err() {
                    self.client.remove_containers(&trace).await;
                }
                let id = id?;
                if let Ok(mut images) = self.images.lock() {
                    images.insert(node.variant, id.clone());
                }
                output.insert("image".to_owned(), id);
            }
            NodeKind::Test => {
                let image = self.image_of(node.variant)?;
                let test = &variant.tests[node.test.unwrap_or_default()];
                // A Dockerfile test's context, walked before the request borrows it.
                let user_test = match &test.body {
                    trellis_model::VariantTestBody::Run(_) => None,
                    trellis_model::VariantTestBody::Dockerfile { context, text, .. } => {
                        let own = self.own_files.in_context(context);
                        let walk = trellis_graph::ContextWalk::new(&self.model.root.join(context), &own)
                            .map_err(|e| JobError::new(ErrorClass::InvalidInput, e.to_string()))?;
                        Some((&**text, walk))
                    }
                };
                let request = trellis_docker::TestRequest {
                    image_id: &image,
                    run: match &test.body {
                        trellis_model::VariantTestBody::Run(lines) => Some(lines),
                        trellis_model::VariantTestBody::Dockerfile { .. } => None,
                    },
                    dockerfile: user_test.as_ref().map(|(text, walk)| (*text, walk)),
                    network: test.network.as_str(),
                };
                let mut trace = trellis_docker::BuildTrace::default();
                let result = tokio::select! {
                    result = self.client.test(request, &mut trace, &mut log) => result.map_err(engine_error),
                    () = ctx.cancel.cancelled() => Err(JobError::cancelled()),
                };
                // After success, failure and cancellation alike: no test container or image stays.
                self.client.remove_test(&trace).await;
                result?;
                output.insert("image".to_owned(), image);
            }
            NodeKind::Tag => {
                let image = self.image_of(node.variant)?;
                for reference in &variant.references {
                    let reference = reference.to_string();
                    self.client.tag(&image, &reference).await.map_err(engine_error)?;
                    ctx.line(format!("tagged {reference}"));
                }
                output.insert("image".to_owned(), image);
            }
            NodeKind::Push => {
                let registry = self.registry.as_deref().ok_or_else(|| {
                    JobError::new(
                        ErrorClass::InvalidInput,
                        "no registry: set `registry` in settings or pass --registry",
                    )
                })?;
                let image = self.image_of(node.variant)?;
                // Where the engine recorded this image as pushed: one inspect for all references.
                let mut recorded = self.client.repo_digests(&image).await.map_err(engine_error)?;
                let mut digest = String::new();
                for reference in &variant.references {
                    let target = format!("{registry}/{reference}");
                    let repository = format!("{registry}/{}", reference.repository);
                    // Skipped when the registry already serves this reference at the digest
                    // this image was pushed under.
                    let local = trellis_docker::digest_in(&recorded, &repository);
                    let served = self
                        .client
                        .registry_digest(&target, self.credentials.clone())
                        .await
                        .map_err(|e| self.registry_error(registry, e))?;
                    if let (Some(local), Some(served)) = (&local, &served)
                        && local == served
                    {
                        self.client.tag(&image, &target).await.map_err(engine_error)?;
                        ctx.line(format!("{target} is already served at {served}"));
                        digest = served.clone();
                        continue;
                    }
                    let pushed = tokio::select! {
                        result = self.client.push(&image, &target, self.credentials.clone(), &mut log) => result.map_err(|e| self.registry_error(registry, e))?,
                        () = ctx.cancel.cancelled() => return Err(JobError::cancelled()),
                    };
                    ctx.line(format!("pushed {target} at {pushed}"));
                    // The engine now records this digest for the repository, as a new
                    // inspect would show.
                    recorded.retain(|d| !d.starts_with(&format!("{repository}@")));
                    recorded.push(format!("{repository}@{pushed}"));
                    digest = pushed;
                }
                output.insert("image".to_owned(), image);
                output.insert("digest".to_owned(), digest);
            }
            NodeKind::Render => unreachable!("render nodes are written by the NodeEngine"),
        }
        Ok(output)
    }
}
