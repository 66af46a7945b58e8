//! Rendering for people and for machines: diagnostics (miette), plan and tag tables, JSON,
//! and the graph as DOT, Mermaid or JSON.

use std::fmt::Write as _;

use miette::{GraphicalReportHandler, GraphicalTheme};
use trellis_graph::{Action, Graph, PlannedNode};

use trellis::TagEntry;

/// Renders diagnostics the way `check` prints them; colour only when asked.
pub fn diagnostics(diagnostics: &[trellis_model::Diagnostic], color: bool) -> String {
    let theme = if color { GraphicalTheme::unicode() } else { GraphicalTheme::unicode_nocolor() };
    let handler = GraphicalReportHandler::new_themed(theme).with_width(100);
    let mut out = String::new();
    for diagnostic in diagnostics {
        // Writing into a String cannot fail.
        let _ = handler.render_report(&mut out, diagnostic);
        out.push('\n');
    }
    let n = diagnostics.len();
    let _ = writeln!(out, "error: {n} problem{} found; nothing was run", if n == 1 { "" } else { "s" });
    out
}

pub fn plan_table(plan: &[PlannedNode]) -> String {
    let width = plan.iter().map(|n| n.id.len()).max().unwrap_or(0);
    let mut out = String::new();
    for node in plan {
        let action = match node.action {
            Action::Run => "run ",
            Action::Skip => "skip",
        };
        let _ = writeln!(out, "{action}  {:width$}  {}", node.id, node.reason);
    }
    let runs = plan.iter().filter(|n| n.action == Action::Run).count();
    let _ = writeln!(out, "{runs} to run, {} to skip", plan.len() - runs);
    out
}

pub fn tag_table(entries: &[TagEntry]) -> String {
    let mut out = String::new();
    for entry in entries {
        let _ = writeln!(out, "{}", entry.variant);
        for reference in &entry.references {
            let _ = writeln!(out, "    {reference}");
        }
    }
    out
}

/// Graph output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphFormat {
    Dot,
    Mermaid,
    Json,
}

pub fn graph(graph: &Graph, format: GraphFormat) -> String {
    let order = graph.stable_order();
    let edges: Vec<(usize, usize)> = {
        let mut e: Vec<(usize, usize)> = graph
            .dag
            .edge_indices()
            .filter_map(|e| graph.dag.edge_endpoints(e))
            .map(|(a, b)| (a.index(), b.index()))
            .collect();
        e.sort_unstable();
        e
    };
    let id = |i: usize| graph.dag[petgraph::graph::NodeIndex::new(i)].id.as_str();
    let mut out = String::new();
    match format {
        GraphFormat::Dot => {
            out.push_str("digraph trellis {\n    rankdir=LR;\n");
            for index in &order {
                let node = &graph.dag[*index];
                let _ = writeln!(out, "    \"{}\" [shape={}];", node.id, shape(node.kind));
            }
            for (a, b) in &edges {
                let _ = writeln!(out, "    \"{}\" -> \"{}\";", id(*a), id(*b));
            }
            out.push_str("}\n");
        }
        GraphFormat::Mermaid => {
            out.push_str("flowchart LR\n");
            for index in &order {
                let _ = writeln!(out, "    n{}[\"{}\"]", index.index(), graph.dag[*index].id);
            }
            for (a, b) in &edges {
                let _ = writeln!(out, "    n{a} --> n{b}");
            }
        }
        GraphFormat::Json => {
            let nodes: Vec<serde_json::Value> = order
                .iter()
                .map(|i| {
                    let node = &graph.dag[*i];
                    serde_json::json!({"id": node.id, "kind": node.kind, "key": node.key})
                })
                .collect();
            let edges: Vec<serde_json::Value> =
                edges.iter().map(|(a, b)| serde_json::json!({"from": id(*a), "to": id(*b)})).collect();
            out =
                serde_json::to_string_pretty(&serde_json::json!({"nodes": nodes, "edges": edges})).unwrap_or_default();
            out.push('\n');
        }
    }
    out
}

fn shape(kind: trellis_graph::NodeKind) -> &'static str {
    match kind {
        trellis_graph::NodeKind::Render => "note",
        trellis_graph::NodeKind::Build => "box",
        trellis_graph::NodeKind::Test => "diamond",
        trellis_graph::NodeKind::Tag => "cds",
        trellis_graph::NodeKind::Push => "folder",
    }
}

/// A path as the user can open it from where they stand: relative to the current directory
/// when it lies below it, as given otherwise (`-f ../other/matrix.kdl` gives `../other/…`).
pub fn path_for_user(path: &std::path::Path) -> String {
    let cwd = std::env::current_dir().ok();
    let shown = match (path.is_absolute(), &cwd) {
        (true, Some(cwd)) => path.strip_prefix(cwd).unwrap_or(path),
        _ => path,
    };
    let shown = shown.strip_prefix(".").unwrap_or(shown);
    shown.display().to_string()
}

/// `trellis doctor`'s findings, one per line, with what to do under each that is not ok.
pub fn doctor(found: &trellis::Doctor) -> String {
    let mut text = String::new();
    for finding in &found.checks {
        let mark = match finding.status {
            trellis::Status::Ok => "ok  ",
            trellis::Status::Warning => "warn",
            trellis::Status::Failed => "FAIL",
        };
        text.push_str(&format!("{mark}  {:<12} {}\n", finding.check, finding.detail));
        if let Some(fix) = finding.fix.as_ref().filter(|_| finding.status != trellis::Status::Ok) {
            text.push_str(&format!("      {:<12} fix: {fix}\n", ""));
        }
    }
    text.push_str(match found.ok {
        true => "a build would work here\n",
        false => "a build would not work here: fix what says FAIL\n",
    });
    text
}
