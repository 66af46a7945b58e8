//! trellis's own files are never build context (DESIGN §3): the state directory, the rendered
//! Dockerfiles (and generated ones no variant renders any more), the reports a run writes,
//! matrix.kdl and the Dockerfile templates. Inside a context they would change during the run
//! (logs, journal, temp files of atomic writes) or make every edit of matrix.kdl rebuild every
//! image whose context holds it. They are left out of the digest and the tar alike, as if
//! listed in `.dockerignore`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use trellis_model::Model;

use crate::render::GENERATED_MARKER;

/// The prefix of the temporary files trellis writes before renaming them into place.
pub const TEMP_PREFIX: &str = ".trellis-tmp";

/// trellis's own paths in a workspace, relative to its root.
#[derive(Debug, Clone, Default)]
pub struct OwnFiles {
    /// Left out whole.
    dirs: Vec<PathBuf>,
    files: HashSet<PathBuf>,
    /// Directories trellis makes to hold rendered Dockerfiles: no entry of their own (they
    /// appear with the first render), but what else they hold is context.
    render_dirs: HashSet<PathBuf>,
    /// Generated `Dockerfile`s anywhere under this directory are left out too (orphans that
    /// `trellis render` will remove).
    rendered_tree: Option<PathBuf>,
}

impl OwnFiles {
    /// The workspace's own files, and the reports runs write (relative to the root).
    pub fn of(workspace: &Model, reports: &[PathBuf]) -> Self {
        let manifest = PathBuf::from(workspace.manifest.name());
        let mut files: HashSet<PathBuf> = HashSet::from([manifest]);
        let mut render_dirs = HashSet::new();
        for variant in &workspace.variants {
            files.insert(variant.render_path.clone());
            files.insert(variant.template.clone());
            let tree = &workspace.settings.dockerfiles;
            for dir in variant.render_path.ancestors().skip(1) {
                if !dir.starts_with(tree) || !render_dirs.insert(dir.to_path_buf()) {
                    break;
                }
            }
        }
        files.extend(workspace.template_files.iter().cloned());
        files.extend(reports.iter().cloned());
        Self {
            dirs: vec![workspace.settings.state.clone()],
            files,
            render_dirs,
            rendered_tree: Some(workspace.settings.dockerfiles.clone()),
        }
    }

    /// What to leave out of the context at `context` (relative to the root).
    pub fn in_context(&self, context: &Path) -> ContextExclusions {
        let under = |path: &Path| path.strip_prefix(context).ok().map(slash_path).filter(|p| !p.is_empty());
        ContextExclusions {
            dirs: self.dirs.iter().filter_map(|d| under(d)).collect(),
            files: self.files.iter().filter_map(|f| under(f)).collect(),
            render_dirs: self.render_dirs.iter().filter_map(|d| under(d)).collect(),
            rendered_tree: self.rendered_tree.as_ref().and_then(|tree| {
                // The context inside the tree: all of it is under the tree.
                if context.starts_with(tree) { Some(String::new()) } else { under(tree) }
            }),
        }
    }
}

/// trellis's own files inside one context, as context-relative `/`-separated paths.
#[derive(Debug, Clone, Default)]
pub struct ContextExclusions {
    dirs: Vec<String>,
    files: HashSet<String>,
    render_dirs: HashSet<String>,
    rendered_tree: Option<String>,
}

/// How a context walk treats an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Own {
    /// The user's: part of the context.
    No,
    /// trellis's own: left out, and a directory's contents with it.
    Whole,
    /// A directory trellis made for rendered files: no entry, its other contents are context.
    DirectoryOnly,
}

impl ContextExclusions {
    /// Whether the entry at `relative` (a directory when `dir`) is trellis's own; `full` is
    /// its path on disk, read only for `Dockerfile`s in the rendered tree.
    pub fn judge(&self, relative: &str, dir: bool, full: &Path) -> Own {
        let name = relative.rsplit('/').next().unwrap_or(relative);
        if name.starts_with(TEMP_PREFIX) {
            return Own::Whole;
        }
        let in_tree = self.rendered_tree.as_ref().is_some_and(|tree| {
            tree.is_empty() || relative.strip_prefix(tree.as_str()).is_some_and(|rest| rest.starts_with('/'))
        });
        if dir {
            // Folders in the rendered tree come and go with variants (a removed variant's
            // folder is emptied, then removed): their files count, not the folders.
            return if self.dirs.iter().any(|d| d == relative) {
                Own::Whole
            } else if self.render_dirs.contains(relative) || in_tree {
                Own::DirectoryOnly
            } else {
                Own::No
            };
        }
        if self.files.contains(relative) || (in_tree && name == "Dockerfile" && generated(full)) {
            Own::Whole
        } else {
            Own::No
        }
    }
}

fn generated(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|bytes| {
        let head = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]).into_owned();
        head.lines().take(4).any(|line| line.starts_with(GENERATED_MARKER))
    })
}

fn slash_path(path: &Path) -> String {
    path.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_the_context_are_dropped_and_the_rest_made_relative() {
        let own = OwnFiles {
            dirs: vec![PathBuf::from(".trellis")],
            files: HashSet::from([PathBuf::from("matrix.kdl"), PathBuf::from("app/report.md")]),
            render_dirs: HashSet::from([PathBuf::from("dockerfiles"), PathBuf::from("dockerfiles/app")]),
            rendered_tree: Some(PathBuf::from("dockerfiles")),
        };
        let root = own.in_context(Path::new(""));
        assert_eq!(root.dirs, [".trellis"]);
        assert!(root.files.contains("matrix.kdl") && root.files.contains("app/report.md"));
        assert_eq!(root.rendered_tree.as_deref(), Some("dockerfiles"));
        let app = own.in_context(Path::new("app"));
        assert!(app.dirs.is_empty());
        assert_eq!(app.files, HashSet::from(["report.md".to_owned()]));
        assert_eq!(app.rendered_tree, None);
        assert_eq!(root.judge("dockerfiles/app", true, Path::new("/nonexistent")), Own::DirectoryOnly);
        assert_eq!(root.judge(".trellis", true, Path::new("/nonexistent")), Own::Whole);
        assert_eq!(root.judge("src", true, Path::new("/nonexistent")), Own::No);
        let inside = own.in_context(Path::new("dockerfiles/node"));
        assert_eq!(inside.rendered_tree.as_deref(), Some(""));
    }

    #[test]
    fn temp_files_are_excluded_anywhere() {
        let none = ContextExclusions::default();
        assert_eq!(none.judge("a/.trellis-tmpXyZ", false, Path::new("/nonexistent")), Own::Whole);
        assert_eq!(none.judge("a/b", false, Path::new("/nonexistent")), Own::No);
    }
}
