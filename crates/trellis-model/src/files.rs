//! Where template files come from: the disk under the workspace root, or memory (tests,
//! benchmarks, fuzzing).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

/// Reads files by path relative to the workspace root.
pub trait Files: Sync {
    fn read(&self, relative: &Path) -> io::Result<String>;
}

/// Files on disk under a root directory.
#[derive(Clone, Debug)]
pub struct DiskFiles {
    pub root: PathBuf,
}

impl Files for DiskFiles {
    fn read(&self, relative: &Path) -> io::Result<String> {
        std::fs::read_to_string(self.root.join(relative))
    }
}

/// An in-memory file tree.
#[derive(Clone, Debug, Default)]
pub struct MemoryFiles(pub HashMap<PathBuf, String>);

impl MemoryFiles {
    pub fn with(mut self, path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        self.0.insert(path.into(), text.into());
        self
    }
}

impl Files for MemoryFiles {
    fn read(&self, relative: &Path) -> io::Result<String> {
        self.0.get(relative).cloned().ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
    }
}
