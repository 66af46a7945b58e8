//! Reports a run wrote inside the workspace (`--summary-md`, `--junit` paths), remembered in
//! `<state>/reports.json`: trellis's own files, never build context, also in later runs that
//! do not write them.

use std::path::{Path, PathBuf};

const REPORTS_FILE: &str = "reports.json";

/// The reports runs wrote inside the workspace (relative to its root), as recorded in the
/// state directory.
pub(crate) fn recorded_reports(state_dir: &Path) -> Vec<PathBuf> {
    std::fs::read(state_dir.join(REPORTS_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Records reports a run wrote inside the workspace: trellis's own files, never build context.
pub(crate) fn record_reports(state_dir: &Path, written: &[PathBuf]) -> std::io::Result<()> {
    let mut reports = recorded_reports(state_dir);
    let before = reports.len();
    for report in written {
        if !reports.contains(report) {
            reports.push(report.clone());
        }
    }
    if reports.len() == before {
        return Ok(());
    }
    let bytes = serde_json::to_vec_pretty(&reports).map_err(std::io::Error::other)?;
    trellis_graph::render::write_if_changed(&state_dir.join(REPORTS_FILE), &bytes).map(|_| ())
}
