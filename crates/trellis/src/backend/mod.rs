//! What runs the nodes: render nodes write their Dockerfile here; build, test, tag and push go
//! to a worker — the Docker engine, or `simulate`, which runs the graph without containers
//! (scripted durations and failures) for tests and demos.

mod docker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use trellis_docker::{BuilderKind, ImageListing};
use trellis_exec::{ErrorClass, Job, JobContext, JobError, Runner};
use trellis_graph::{Node, NodeKind};

pub(crate) use docker::{DockerBackend, Recorded, run_labels};

/// What the engine and the registry held when the workspace was attached: what judges builds,
/// tags and pushes in a plan. Read once; a run updates its own copy as it builds.
#[derive(Debug)]
pub struct EngineFacts {
    /// The workspace's images by their build key (one listing per run).
    pub by_key: HashMap<String, ImageListing>,
    /// When the run pushes: the push registry and the digest it serves for every selected
    /// reference (`registry/repository:tag`), `None` where it serves none.
    pub served: Option<(String, HashMap<String, Option<String>>)>,
    /// The builder every build goes through.
    pub builder: BuilderKind,
    /// What the registry recorded for the variants the engine lacks (DESIGN §9).
    pub remote: crate::remote::RemoteFacts,
}

impl EngineFacts {
    /// What the registry serves, by `registry/repository:tag`, and the registry.
    pub fn served(&self) -> Option<(&HashMap<String, Option<String>>, &str)> {
        self.served.as_ref().map(|(registry, served)| (served, registry.as_str()))
    }
}

/// What a finished node reports: the job output contract between the backends, the state
/// store and the reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeOutput {
    /// Build, test, tag, push: the image ID the node built, tested, tagged or pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Push: the digest the registry serves for the pushed references.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl NodeOutput {
    pub fn image(image: String) -> Self {
        Self { image: Some(image), digest: None }
    }
}

/// What a job carries: the graph node it runs.
#[derive(Debug, Clone)]
pub(crate) struct NodeJob {
    pub node: Node,
    /// For render nodes: where the Dockerfile goes and its bytes.
    pub render: Option<(PathBuf, Arc<str>)>,
    /// Build without the layer cache (`--refresh`).
    pub no_cache: bool,
    /// For push nodes: what the registry's record of the variant holds besides the push.
    pub record: Option<Arc<crate::remote::RecordPlan>>,
}

/// Where a run's builds, tests, tags and pushes go, with what the engine held when attached
/// (see [`crate::Workspace::attach`]).
#[derive(Debug, Clone)]
pub struct Backend {
    pub(crate) worker: Worker,
    pub(crate) facts: Option<Arc<EngineFacts>>,
}

#[derive(Debug, Clone)]
pub(crate) enum Worker {
    Simulate(Arc<Simulation>),
    Docker(Arc<DockerBackend>),
}

impl Backend {
    /// Runs the graph without containers, by `simulation`'s script.
    pub fn simulate(simulation: Simulation) -> Self {
        Self { worker: Worker::Simulate(Arc::new(simulation)), facts: None }
    }

    /// What the engine and registry held when attached; `None` for a simulation.
    pub fn facts(&self) -> Option<&EngineFacts> {
        self.facts.as_deref()
    }

    /// The engine's client, when attached to one.
    pub(crate) fn client(&self) -> Option<&trellis_docker::DockerClient> {
        match &self.worker {
            Worker::Docker(docker) => Some(&docker.client),
            Worker::Simulate(_) => None,
        }
    }
}

/// The executor's runner for trellis nodes.
#[derive(Debug, Clone)]
pub(crate) struct NodeRunner {
    pub worker: Worker,
}

impl Runner<NodeJob> for NodeRunner {
    type Output = NodeOutput;

    fn run(
        &self,
        job: &Job<NodeJob>,
        ctx: JobContext<NodeOutput>,
    ) -> impl Future<Output = Result<NodeOutput, JobError>> + Send {
        let payload = job.payload.clone();
        let worker = self.worker.clone();
        async move {
            if let Some((path, text)) = &payload.render {
                return write_rendered(path, text, &ctx);
            }
            match worker {
                Worker::Simulate(simulation) => simulation.run(&payload.node, &ctx).await,
                Worker::Docker(docker) => docker.run(&payload, &ctx).await,
            }
        }
    }
}

fn write_rendered(path: &std::path::Path, text: &str, ctx: &JobContext<NodeOutput>) -> Result<NodeOutput, JobError> {
    match trellis_graph::render::write_if_changed(path, text.as_bytes()) {
        Ok(true) => {
            ctx.line(format!("wrote {}", path.display()));
            Ok(NodeOutput::default())
        }
        Ok(false) => Ok(NodeOutput::default()),
        Err(e) => Err(JobError::new(ErrorClass::InvalidInput, format!("cannot write {}: {e}", path.display()))),
    }
}

/// A scripted stand-in for the container engine (the CLI's `TRELLIS_ENGINE=simulate`, script
/// in `TRELLIS_SIMULATE`): every node takes `default_ms` unless the script says otherwise for
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
    async fn run(&self, node: &Node, ctx: &JobContext<NodeOutput>) -> Result<NodeOutput, JobError> {
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
        Ok(match node.kind {
            NodeKind::Build => NodeOutput::image(format!("sha256:{}", node.key.to_hex())),
            _ => NodeOutput::default(),
        })
    }
}
