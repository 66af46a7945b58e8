//! A plan: for every selected node, run or skip, and why. Render nodes are decided by the
//! files on disk; the outcomes of other nodes come from a [`StateView`] (the state store of
//! the executor; with none, every node runs because it was never built).

use std::path::Path;

use trellis_model::Model;

use petgraph::graph::NodeIndex;

use crate::graph::{Graph, Node, NodeKind};
use crate::key::NodeKey;
use crate::select::Selection;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Run,
    Skip,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PlannedNode {
    pub id: String,
    pub kind: NodeKind,
    /// Build and test nodes of a variant with `platforms`: the platform.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    pub action: Action,
    pub reason: String,
    pub key: NodeKey,
}

/// What is known about a node from earlier runs.
pub trait StateView {
    /// `Some(reason)` when the node's current key already succeeded and it can be skipped;
    /// otherwise `Err(reason it must run)`.
    fn judge(&self, node: &Node) -> Result<String, String>;
}

/// No earlier runs.
pub struct NoState;

impl StateView for NoState {
    fn judge(&self, node: &Node) -> Result<String, String> {
        Err(never(node.kind).to_owned())
    }
}

/// Why a node with no record runs: "never built", "never run", …
pub fn never(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::Render => "never rendered",
        NodeKind::Build => "never built",
        NodeKind::Test => "never run",
        NodeKind::Tag => "never tagged",
        NodeKind::Push => "never pushed",
    }
}

/// The plan of the selected nodes in execution order.
pub fn plan(workspace: &Model, graph: &Graph, selection: &Selection, state: &dyn StateView) -> Vec<PlannedNode> {
    let mut out = Vec::new();
    // Per node: the build upstream of it that runs, if any. A rebuilt image has a new ID even
    // under the same key (`--refresh`, an image gone from the engine), so everything built
    // on it, testing it, tagging or pushing it runs again. Tags, tests and pushes that run
    // leave images as they are: they do not make their dependents run.
    let mut rebuilt: Vec<Option<NodeIndex>> = vec![None; graph.dag.node_count()];
    for index in graph.stable_order() {
        let node = &graph.dag[index];
        if !selection.contains(node.variant) {
            continue;
        }
        let judged = match node.kind {
            NodeKind::Render => judge_render(&workspace.root, &workspace.variants[node.variant]),
            _ => state.judge(node),
        };
        let upstream = graph.dag.neighbors_directed(index, petgraph::Incoming).find_map(|p| rebuilt[p.index()]);
        let (action, reason) = match (judged, upstream) {
            (Err(reason), _) => (Action::Run, reason),
            (Ok(_), Some(build)) => (Action::Run, format!("{} re-runs", graph.dag[build].id)),
            (Ok(reason), None) => (Action::Skip, reason),
        };
        rebuilt[index.index()] = match (node.kind, action) {
            (NodeKind::Build, Action::Run) => Some(index),
            (NodeKind::Render, _) => None,
            _ => upstream,
        };
        let platform = node.platform.clone();
        out.push(PlannedNode { id: node.id.clone(), kind: node.kind, platform, action, reason, key: node.key });
    }
    out
}

fn judge_render(root: &Path, variant: &trellis_model::Variant) -> Result<String, String> {
    match std::fs::read(root.join(&variant.render_path)) {
        Ok(bytes) if bytes == variant.dockerfile.as_bytes() => Ok("rendered Dockerfile is up to date".to_owned()),
        Ok(_) => Err(format!("{} is stale", variant.render_path.display())),
        Err(_) => Err(format!("{} is not rendered yet", variant.render_path.display())),
    }
}
