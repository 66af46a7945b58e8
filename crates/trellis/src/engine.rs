//! The executor's engine for trellis nodes: render nodes write their Dockerfile here; build,
//! test, tag and push go to a backend — the Docker engine, or `simulate`, which runs the
//! graph without containers (scripted durations and failures) for tests and demos.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
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
}

#[derive(Debug, Clone)]
pub enum Backend {
    Simulate(Arc<Simulation>),
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
