//! A build context: the one walk of a context directory that both the key and the build tar
//! use, so they can never disagree about what is in the context.
//!
//! [`ContextWalk::new`] applies the context's `.dockerignore` with Docker's rules and lists the
//! surviving entries in path order; [`ContextWalk::digest`] hashes their contents in parallel.
//! Modes are normalised to what git records (executable or not), so a checkout's umask does not
//! change keys; the build tar writes the same normalised modes.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::dockerignore::{DockerIgnore, PatternError};
use crate::key::{KeyHasher, NodeKey};
use crate::own_files::{ContextExclusions, Own};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntryKind {
    File,
    Directory,
    Symlink,
}

/// One file, directory or symlink that survives `.dockerignore`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextEntry {
    /// Relative to the context root, `/`-separated.
    pub path: String,
    pub kind: EntryKind,
    /// 0o755 or 0o644 for files, 0o755 for directories, 0o777 for symlinks.
    pub mode: u32,
    pub size: u64,
    /// For symlinks: the link target as written.
    pub link_target: Option<String>,
}

/// The surviving entries of a context directory, sorted by path.
#[derive(Debug, Clone)]
pub struct ContextWalk {
    pub root: PathBuf,
    pub entries: Vec<ContextEntry>,
}

/// Why a context could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("build context `{path}` is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("build context `{path}` leads outside the workspace, to `{real}`")]
    OutsideWorkspace { path: PathBuf, real: PathBuf },
    #[error("cannot read `{path}`")]
    Io { path: PathBuf, source: io::Error },
    #[error("bad .dockerignore in `{context}`: {source}")]
    Ignore { context: PathBuf, source: PatternError },
}

/// A context's content hash.
pub type ContextDigest = NodeKey;

/// A context's digest and the content hash of each file in it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContextManifest {
    #[serde(skip, default = "zero_key")]
    pub digest: ContextDigest,
    /// (relative path, content hash hex), sorted by path.
    pub files: Vec<(String, String)>,
}

fn zero_key() -> NodeKey {
    NodeKey([0; 32])
}

impl ContextManifest {
    /// Paths whose content differs, appeared or disappeared, in path order.
    pub fn changed_files(&self, before: &ContextManifest) -> Vec<String> {
        let old: std::collections::HashMap<&str, &str> =
            before.files.iter().map(|(p, h)| (p.as_str(), h.as_str())).collect();
        let new: std::collections::HashMap<&str, &str> =
            self.files.iter().map(|(p, h)| (p.as_str(), h.as_str())).collect();
        let mut changed: Vec<String> = self
            .files
            .iter()
            .filter(|(p, h)| old.get(p.as_str()) != Some(&h.as_str()))
            .map(|(p, _)| p.clone())
            .chain(before.files.iter().filter(|(p, _)| !new.contains_key(p.as_str())).map(|(p, _)| p.clone()))
            .collect();
        changed.sort();
        changed
    }
}

impl ContextWalk {
    /// Walks `root`, leaving out trellis's own files (`own`) and applying `root/.dockerignore`.
    pub fn new(root: &Path, own: &ContextExclusions) -> Result<Self, ContextError> {
        let io_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ContextError::Io { path, source }
        };
        let meta = fs::metadata(root).map_err(io_error(root))?;
        if !meta.is_dir() {
            return Err(ContextError::NotADirectory { path: root.to_path_buf() });
        }
        let ignore = match fs::read_to_string(root.join(".dockerignore")) {
            Ok(text) => DockerIgnore::parse(&text)
                .map_err(|source| ContextError::Ignore { context: root.to_path_buf(), source })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => DockerIgnore::default(),
            Err(e) => return Err(ContextError::Io { path: root.join(".dockerignore"), source: e }),
        };
        let mut entries = Vec::new();
        let mut walker = walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name().into_iter();
        while let Some(item) = walker.next() {
            let item = item.map_err(|e| {
                let path = e.path().unwrap_or(root).to_path_buf();
                ContextError::Io { path, source: e.into() }
            })?;
            let Ok(relative) = item.path().strip_prefix(root) else { continue };
            let Some(relative) = relative.to_str() else {
                return Err(ContextError::Io {
                    path: item.path().to_path_buf(),
                    source: io::Error::new(io::ErrorKind::InvalidData, "file name is not UTF-8"),
                });
            };
            let file_type = item.file_type();
            match own.judge(relative, file_type.is_dir(), item.path()) {
                Own::No => {}
                Own::DirectoryOnly => continue,
                Own::Whole => {
                    if file_type.is_dir() {
                        walker.skip_current_dir();
                    }
                    continue;
                }
            }
            if ignore.excludes(relative) {
                if file_type.is_dir() && !ignore.may_reinclude_under(relative) {
                    walker.skip_current_dir();
                }
                continue;
            }
            let meta =
                item.metadata().map_err(|e| ContextError::Io { path: item.path().to_path_buf(), source: e.into() })?;
            let (kind, mode, size, link_target) = if file_type.is_symlink() {
                let target = fs::read_link(item.path()).map_err(io_error(item.path()))?;
                (EntryKind::Symlink, 0o777, 0, Some(target.to_string_lossy().into_owned()))
            } else if file_type.is_dir() {
                (EntryKind::Directory, 0o755, 0, None)
            } else if file_type.is_file() {
                let executable = meta.permissions().mode() & 0o111 != 0;
                (EntryKind::File, if executable { 0o755 } else { 0o644 }, meta.len(), None)
            } else {
                // Sockets, FIFOs and devices cannot be part of an image build context.
                continue;
            };
            entries.push(ContextEntry { path: relative.to_owned(), kind, mode, size, link_target });
        }
        // walkdir sorts per directory by name; a global byte order makes the digest independent
        // of how a platform orders `a/b` against `a.b`.
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Self { root: root.to_path_buf(), entries })
    }

    /// The digest over (path, kind, mode, content hash) of every entry; file contents are
    /// hashed in parallel.
    pub fn digest(&self) -> Result<ContextDigest, ContextError> {
        Ok(self.manifest()?.digest)
    }

    /// The digest and each file's content hash (for saying which file changed).
    pub fn manifest(&self) -> Result<ContextManifest, ContextError> {
        let contents: Vec<Option<[u8; 32]>> = self
            .entries
            .par_iter()
            .map(|entry| match entry.kind {
                EntryKind::File => hash_file(&self.root.join(&entry.path)).map(Some),
                _ => Ok(None),
            })
            .collect::<Result<_, _>>()?;
        let mut hasher = KeyHasher::new("context");
        hasher.count(self.entries.len());
        for (entry, content) in self.entries.iter().zip(contents.iter().copied()) {
            hasher.str(&entry.path);
            hasher.u64(entry.kind as u64);
            hasher.u64(u64::from(entry.mode));
            match (content, &entry.link_target) {
                (Some(hash), _) => hasher.bytes(&hash),
                (None, Some(target)) => hasher.str(target),
                (None, None) => hasher.bytes(&[]),
            };
        }
        let files = self
            .entries
            .iter()
            .zip(&contents)
            .filter_map(|(entry, content)| match (content, &entry.link_target) {
                (Some(hash), _) => Some((entry.path.clone(), format!("{:o}:{}", entry.mode, NodeKey(*hash).to_hex()))),
                (None, Some(target)) => Some((entry.path.clone(), format!("link:{target}"))),
                (None, None) => None,
            })
            .collect();
        Ok(ContextManifest { digest: hasher.finish(), files })
    }
}

/// Large files are memory-mapped and hashed with blake3's own parallelism.
fn hash_file(path: &Path) -> Result<[u8; 32], ContextError> {
    const MMAP_THRESHOLD: u64 = 1 << 20;
    let io_error = |source| ContextError::Io { path: path.to_path_buf(), source };
    let len = fs::metadata(path).map_err(io_error)?.len();
    let mut hasher = blake3::Hasher::new();
    if len >= MMAP_THRESHOLD {
        hasher.update_mmap_rayon(path).map_err(io_error)?;
    } else {
        hasher.update(&fs::read(path).map_err(io_error)?);
    }
    Ok(*hasher.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let full = dir.path().join(path);
            fs::create_dir_all(full.parent().unwrap()).unwrap();
            fs::write(full, text).unwrap();
        }
        dir
    }

    fn paths(walk: &ContextWalk) -> Vec<&str> {
        walk.entries.iter().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn dockerignore_filters_the_walk() {
        let dir = tree(&[
            (".dockerignore", "node_modules\n*.log\ndocs\n!docs/keep.md\n"),
            ("index.js", "x"),
            ("debug.log", "x"),
            ("node_modules/a/b.js", "x"),
            ("docs/keep.md", "x"),
            ("docs/drop.md", "x"),
        ]);
        let walk = ContextWalk::new(dir.path(), &ContextExclusions::default()).unwrap();
        assert_eq!(paths(&walk), [".dockerignore", "docs/keep.md", "index.js"]);
    }

    #[test]
    fn ignored_files_do_not_change_the_digest() {
        let dir = tree(&[(".dockerignore", "*.log\n"), ("a.txt", "a")]);
        let before = ContextWalk::new(dir.path(), &ContextExclusions::default()).unwrap().digest().unwrap();
        fs::write(dir.path().join("noise.log"), "changes every run").unwrap();
        let after = ContextWalk::new(dir.path(), &ContextExclusions::default()).unwrap().digest().unwrap();
        assert_eq!(before, after);
        fs::write(dir.path().join("a.txt"), "b").unwrap();
        assert_ne!(ContextWalk::new(dir.path(), &ContextExclusions::default()).unwrap().digest().unwrap(), after);
    }

    #[test]
    fn executable_bit_is_part_of_the_digest_but_umask_is_not() {
        let dir = tree(&[("run.sh", "echo")]);
        let path = dir.path().join("run.sh");
        let digest = |mode| {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            ContextWalk::new(dir.path(), &ContextExclusions::default()).unwrap().digest().unwrap()
        };
        assert_eq!(digest(0o644), digest(0o664));
        assert_ne!(digest(0o644), digest(0o755));
        assert_eq!(digest(0o755), digest(0o775));
    }

    #[test]
    fn renaming_a_file_changes_the_digest() {
        let dir = tree(&[("a", "same")]);
        let before = ContextWalk::new(dir.path(), &ContextExclusions::default()).unwrap().digest().unwrap();
        fs::rename(dir.path().join("a"), dir.path().join("b")).unwrap();
        assert_ne!(ContextWalk::new(dir.path(), &ContextExclusions::default()).unwrap().digest().unwrap(), before);
    }
}
