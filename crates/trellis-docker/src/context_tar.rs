//! The build context as a tar: exactly the entries of a [`ContextWalk`] (so the context the
//! engine sees is the context the key hashed), plus the rendered Dockerfile under a reserved
//! name. As the docker CLI does for a Dockerfile from outside the context, the reserved name
//! is appended to the context's `.dockerignore` (one is made, listing itself, when there is
//! none), so the classic builder drops it from the context before any `COPY`. BuildKit builds
//! take no tar: a session serves them the walk (`session.rs`).

use std::fs;
use std::io;

use trellis_graph::{ContextWalk, EntryKind};

/// Where the rendered Dockerfile goes in the tar.
pub const RESERVED_DOCKERFILE: &str = ".trellis.Dockerfile";

/// File times in the tar: fixed, so that the same inputs give the same layers anywhere
/// (2000-01-01, as reproducible-build tools use, rather than the epoch some tools reject).
const MTIME: u64 = 946_684_800;

/// A tar of `walk` (or of nothing) with `dockerfile` under [`RESERVED_DOCKERFILE`], for the
/// classic builder.
pub fn context_tar(walk: Option<&ContextWalk>, dockerfile: &str) -> io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    let mut dockerignore: Option<Vec<u8>> = None;
    if let Some(walk) = walk {
        for entry in &walk.entries {
            let mut header = tar::Header::new_gnu();
            header.set_mode(entry.mode);
            header.set_mtime(MTIME);
            header.set_uid(0);
            header.set_gid(0);
            match entry.kind {
                EntryKind::Directory => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    builder.append_data(&mut header, format!("{}/", entry.path), io::empty())?;
                }
                EntryKind::Symlink => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    let target = entry.link_target.as_deref().unwrap_or("");
                    builder.append_link(&mut header, &entry.path, target)?;
                }
                EntryKind::File if entry.path == ".dockerignore" => {
                    dockerignore = Some(fs::read(walk.root.join(&entry.path))?);
                }
                EntryKind::File => {
                    let file = fs::File::open(walk.root.join(&entry.path))?;
                    let size = file.metadata()?.len();
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(size);
                    builder.append_data(&mut header, &entry.path, file)?;
                }
            }
        }
    }
    let mut ignore = dockerignore.unwrap_or_else(|| b".dockerignore".to_vec());
    ignore.extend_from_slice(format!("\n{RESERVED_DOCKERFILE}\n").as_bytes());
    let generated = [(".dockerignore", ignore), (RESERVED_DOCKERFILE, dockerfile.as_bytes().to_vec())];
    for (name, bytes) in generated {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_mtime(MTIME);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(bytes.len() as u64);
        builder.append_data(&mut header, name, bytes.as_slice())?;
    }
    builder.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tar_bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut archive = tar::Archive::new(tar_bytes);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().to_string_lossy().into_owned();
                let mut body = Vec::new();
                io::Read::read_to_end(&mut e, &mut body).unwrap();
                (name, body)
            })
            .collect()
    }

    #[test]
    fn the_tar_holds_the_walk_and_the_reserved_dockerfile() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".dockerignore"), "*.log").unwrap();
        fs::write(dir.path().join("app.js"), "1").unwrap();
        fs::write(dir.path().join("debug.log"), "noise").unwrap();
        let walk = ContextWalk::new(dir.path(), &Default::default()).unwrap();
        let entries = names(&context_tar(Some(&walk), "FROM scratch\n").unwrap());
        let paths: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(paths, ["app.js", ".dockerignore", RESERVED_DOCKERFILE]);
        assert_eq!(entries[1].1, format!("*.log\n{RESERVED_DOCKERFILE}\n").into_bytes());
    }

    #[test]
    fn without_a_context_the_dockerignore_lists_itself() {
        let entries = names(&context_tar(None, "FROM x\n").unwrap());
        assert_eq!(
            entries[0],
            (".dockerignore".to_owned(), format!(".dockerignore\n{RESERVED_DOCKERFILE}\n").into_bytes())
        );
    }

    #[test]
    fn the_same_walk_gives_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), "1").unwrap();
        let walk = ContextWalk::new(dir.path(), &Default::default()).unwrap();
        let first = context_tar(Some(&walk), "FROM x\n").unwrap();
        fs::write(dir.path().join("a"), "1").unwrap(); // new mtime, same content
        let walk = ContextWalk::new(dir.path(), &Default::default()).unwrap();
        assert_eq!(first, context_tar(Some(&walk), "FROM x\n").unwrap());
    }
}
