//! `trellis build` as a library call: lock the state directory, plan against the state store,
//! turn the plan into the executor's job graph, run it, and write the reports.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use petgraph::graph::NodeIndex;
use trellis_exec::{
    ExecOptions, Initial, Job, JobGraph, Limits, RetryPolicy, RunSummary, Shutdown, StateLock, StateStore,
};
use trellis_graph::{Action, Graph, NodeKind, Selection};

use crate::engine::{Backend, NodeEngine, NodeJob};
use crate::facade::{Error, Workspace};
use crate::reporter::{NodeInfo, Progress, Reporter};
use crate::store_view::StoreView;

/// Everything `trellis build` was asked to do, validated: nothing downstream sees clap.
#[derive(Debug, Clone, Default)]
pub struct RunConfig {
    pub filters: Vec<String>,
    pub push: bool,
    pub no_test: bool,
    pub refresh: bool,
    /// `-j`: cap on running nodes of all kinds.
    pub jobs: Option<usize>,
    pub retries: Option<u32>,
    pub fail_fast: bool,
    pub summary_md: Option<PathBuf>,
    pub junit: Option<PathBuf>,
    /// Live progress bar (a terminal) or one line per node.
    pub terminal: bool,
    /// How long cancelled nodes get for their cleanup.
    pub grace: Option<Duration>,
}

#[derive(Debug)]
pub struct RunOutcome {
    pub run_id: String,
    pub summary: RunSummary,
    pub report: PathBuf,
}

impl Workspace {
    /// Runs the selected part of the graph. Returns when every node finished or the run was
    /// stopped by `shutdown`; node failures are in the summary, not errors.
    pub async fn run(&self, config: &RunConfig, backend: Backend, shutdown: Shutdown) -> Result<RunOutcome, Error> {
        let model = self.model();
        let state_dir = model.root.join(&model.settings.state);
        let _lock = StateLock::acquire(&state_dir)?;
        let store = StateStore::open(&state_dir)?;
        let graph = self.graph()?;
        let selection = self.select(&config.filters)?;
        // `--refresh FILTER` refreshes what the filter names, not the parents it pulls in.
        let refresh = if config.refresh {
            (0..model.variants.len()).filter(|v| selection.matched[*v]).collect()
        } else {
            Default::default()
        };
        let view = StoreView {
            store: &store,
            state_dir: &state_dir,
            workspace: model,
            graph,
            refresh,
            engine: backend.images_by_key(),
            // `attach` pulled or refused every missing base before the run.
            unresolved: HashMap::new(),
            served: backend.served(),
        };
        let plan = trellis_graph::plan(model, graph, &selection, &view);
        let (jobs, infos) = self.job_graph(graph, config, &selection, &plan, &store, &view.refresh);

        let run_id = run_id();
        let progress =
            Progress::new(config.terminal, jobs.jobs.iter().filter(|j| j.initial == Initial::Run).count() as u64);
        let mut reporter = Reporter::new(run_id.clone(), model.root.clone(), state_dir.clone(), infos, store, progress);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let reporting = tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                reporter.handle(event);
            }
            reporter
        });
        let options = self.exec_options(config);
        let summary = trellis_exec::run(Arc::new(jobs), Arc::new(NodeEngine { backend }), options, shutdown, tx).await;
        let mut reporter = reporting.await.map_err(|e| Error::Report(std::io::Error::other(e)))?;

        let report = state_dir.join("runs").join(&run_id).join("report.json");
        write(&report, &reporter.report_json(&summary))?;
        if let Some(path) = &config.summary_md {
            write(path, &reporter.summary_markdown(&summary))?;
        }
        if let Some(path) = &config.junit {
            write(path, &reporter.junit(&summary))?;
        }
        let inside: Vec<PathBuf> = [&config.summary_md, &config.junit]
            .into_iter()
            .flatten()
            .filter_map(|path| crate::facade::inside(&model.root, path))
            .collect();
        crate::facade::record_reports(&state_dir, &inside).map_err(Error::Report)?;
        reporter.store.compact()?;
        for problem in &reporter.store_errors {
            eprintln!("warning: {problem}: the next run may repeat work");
        }
        eprintln!("{summary} — report: {}", crate::output::path_for_user(&report));
        Ok(RunOutcome { run_id, summary, report })
    }

    fn exec_options(&self, config: &RunConfig) -> ExecOptions {
        let settings = &self.model().settings;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let per_kind = HashMap::from([
            ("build".to_owned(), settings.jobs.build.map_or(cores, |n| n as usize)),
            ("test".to_owned(), settings.jobs.test.map_or(cores, |n| n as usize)),
            ("push".to_owned(), settings.jobs.push.map_or(4, |n| n as usize)),
        ]);
        ExecOptions {
            limits: Limits { per_kind, global: config.jobs },
            retry: RetryPolicy {
                retries: config.retries.unwrap_or(settings.retries),
                delay: settings.backoff,
                max_delay: Duration::from_secs(60),
                jitter: true,
            },
            fail_fast: config.fail_fast,
            grace: config.grace.unwrap_or(Duration::from_secs(10)),
        }
    }

    /// The selected nodes of the included kinds, in plan order; a dependency on an excluded
    /// kind (tests with `--no-test`) is replaced by that node's own dependencies.
    fn job_graph(
        &self,
        graph: &Graph,
        config: &RunConfig,
        selection: &Selection,
        plan: &[trellis_graph::PlannedNode],
        store: &StateStore,
        refresh: &std::collections::HashSet<usize>,
    ) -> (JobGraph<NodeJob>, Vec<NodeInfo>) {
        let model = self.model();
        let included = |kind: NodeKind| match kind {
            NodeKind::Test => !config.no_test,
            NodeKind::Push => config.push,
            _ => true,
        };
        let planned: Vec<&trellis_graph::PlannedNode> = plan.iter().filter(|p| included(p.kind)).collect();
        let position: HashMap<&str, usize> = planned.iter().enumerate().map(|(i, p)| (p.id.as_str(), i)).collect();
        let mut jobs = Vec::with_capacity(planned.len());
        let mut infos = Vec::with_capacity(planned.len());
        for planned_node in &planned {
            let node = graph.node(&planned_node.id).expect("planned nodes exist").clone();
            let index = graph.index(&node.id).expect("planned nodes exist");
            let mut deps = Vec::new();
            let mut stack: Vec<NodeIndex> = graph.dag.neighbors_directed(index, petgraph::Incoming).collect();
            while let Some(dep) = stack.pop() {
                let dep_node = &graph.dag[dep];
                if !selection.contains(dep_node.variant) {
                    continue;
                }
                match position.get(dep_node.id.as_str()) {
                    Some(&p) => deps.push(p),
                    None => stack.extend(graph.dag.neighbors_directed(dep, petgraph::Incoming)),
                }
            }
            deps.sort_unstable();
            deps.dedup();
            let variant = &model.variants[node.variant];
            let render = (node.kind == NodeKind::Render)
                .then(|| (model.root.join(&variant.render_path), Arc::<str>::from(variant.dockerfile.as_str())));
            let initial = match planned_node.action {
                Action::Run => Initial::Run,
                Action::Skip => Initial::Done(planned_node.reason.clone()),
            };
            infos.push(NodeInfo {
                node: node.clone(),
                action: if planned_node.action == Action::Run { "run" } else { "skip" },
                reason: planned_node.reason.clone(),
                references: variant.references.iter().map(ToString::to_string).collect(),
                context: (node.kind == NodeKind::Build)
                    .then(|| graph.context_manifests.get(&variant.context).cloned())
                    .flatten(),
            });
            // Critical-path priority needs costs: the node's duration in its last run, or a
            // rough default per kind.
            let cost = store
                .get(&node.id)
                .and_then(|r| r.details.get("duration_ms"))
                .and_then(|ms| ms.parse().ok())
                .unwrap_or(match node.kind {
                    NodeKind::Render | NodeKind::Tag => 10,
                    NodeKind::Build => 30_000,
                    NodeKind::Test => 5_000,
                    NodeKind::Push => 2_000,
                });
            let no_cache = node.kind == NodeKind::Build && refresh.contains(&node.variant);
            let mut job = Job::new(node.id.clone(), node.kind.as_str(), deps, NodeJob { node, render, no_cache });
            job.initial = initial;
            job.cost = cost;
            jobs.push(job);
        }
        (JobGraph::new(jobs), infos)
    }
}

fn write(path: &std::path::Path, text: &str) -> Result<(), Error> {
    trellis_graph::render::write_if_changed(path, text.as_bytes()).map(|_| ()).map_err(Error::Report)
}

/// A sortable, unique-enough id: the UTC time to the millisecond (runs are serialised by the
/// state lock).
fn run_id() -> String {
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    now.replace([':', '.'], "").replace('-', "")
}
