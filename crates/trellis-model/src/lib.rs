//! trellis-model: `matrix.kdl` → a validated [`Model`] of variants, rendered templates and
//! resolved references, or every [`Diagnostic`] that stands in the way.
//!
//! This crate is pure: it reads `matrix.kdl` and the Dockerfile templates it names, and knows
//! nothing about Docker, the graph, keys or the terminal. Pipeline: KDL document (the `kdl`
//! crate) → [`manifest::Manifest`] (`decode`: shapes and types, spans kept) → [`Model`]
//! (`compile`: names, axes, variants, minijinja templates, floating tags, references).

mod axis_vars;
mod compile;
mod decode;
mod diagnostic;
mod files;
pub mod manifest;
mod model;
pub mod platform;
pub mod reference;
mod template;

use std::path::{Path, PathBuf};

pub use diagnostic::{Diagnostic, SourceFile};
pub use files::{DiskFiles, Files, MemoryFiles};
pub use manifest::{AttributeValue, BuilderChoice, CompressionChoice, Jobs, NetworkMode, PullPolicy};
pub use model::*;

pub use reference::{normalise as normalise_reference, registry_of};

/// The mistakes that kept a workspace from loading, in reading order.
#[derive(Debug)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl std::fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.len() {
            1 => write!(f, "1 error in the workspace"),
            n => write!(f, "{n} errors in the workspace"),
        }
    }
}

impl std::error::Error for Diagnostics {}

/// Compiles `text` (the contents of the file shown as `name`) with templates from `files`;
/// `root` is recorded as the workspace root. Never panics on any input.
pub fn compile(root: &Path, name: &str, text: &str, files: &dyn Files) -> Result<Model, Diagnostics> {
    match compile_all(root, name, text, files) {
        (Some(workspace), diags) if diags.is_empty() => Ok(workspace),
        (_, diags) => Err(Diagnostics(diags)),
    }
}

/// Compiles as [`compile`] does and returns every diagnostic with what did compile: with
/// diagnostics, the workspace is partial (the variants that rendered), good only for finding
/// further mistakes (build contexts, dependencies) in the same run.
pub fn compile_all(root: &Path, name: &str, text: &str, files: &dyn Files) -> (Option<Model>, Vec<Diagnostic>) {
    let source = SourceFile::new(name, text);
    let mut diags = Vec::new();
    let workspace = decode::decode(&source, &mut diags)
        .and_then(|manifest| compile::compile(root, &source, manifest, files, &mut diags));
    (workspace, diags)
}

/// [`load`] with every diagnostic and the partial workspace (see [`compile_all`]).
pub fn load_all(path: &Path) -> Result<(Option<Model>, Vec<Diagnostic>), LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read { path: path.to_path_buf(), source })?;
    let root = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let root = if root.as_os_str().is_empty() { PathBuf::from(".") } else { root };
    let name = path.file_name().map_or_else(|| path.to_string_lossy(), |n| n.to_string_lossy()).into_owned();
    Ok(compile_all(&root, &name, &text, &DiskFiles { root: root.clone() }))
}

/// Reads and compiles the `matrix.kdl` at `path`; templates are read relative to its directory.
pub fn load(path: &Path) -> Result<Model, LoadError> {
    match load_all(path)? {
        (Some(workspace), diags) if diags.is_empty() => Ok(workspace),
        (_, diags) => Err(LoadError::Invalid(Diagnostics(diags))),
    }
}

/// Why a workspace did not load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(Diagnostics),
}
