//! What differs between the engine's image stores (DESIGN §12), read off `docker info` at
//! connect; how an image's bytes leave each is `export.rs`'s.
//!
//! - **Classic** (the graph drivers; Docker 20.10, and 25+ without `containerd-snapshotter`):
//!   an image ID is the digest of its config; layers are kept as uncompressed tars, so the
//!   export holds them uncompressed (their digests are the diff IDs) and trellis compresses
//!   them on the way out (`compress.rs`).
//! - **Containerd** (`containerd-snapshotter`: Engine 29's default, Docker Desktop): an image
//!   ID is the digest of its manifest; layers are kept compressed as built or pulled, and the
//!   export is an OCI layout holding that very manifest and those blobs, which are pushed as
//!   stored: the published manifest digest is the local image ID.

use std::fmt;

/// How the engine stores images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageStore {
    Classic,
    Containerd,
}

impl fmt::Display for ImageStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImageStore::Classic => "classic",
            ImageStore::Containerd => "containerd",
        })
    }
}

impl ImageStore {
    /// Read off `docker info`: the containerd store reports the driver type
    /// `io.containerd.snapshotter.v1` among its driver status.
    pub(crate) fn of(info: &bollard::models::SystemInfo) -> Self {
        let containerd = info.driver_status.iter().flatten().any(|pair| {
            pair.first().is_some_and(|k| k == "driver-type")
                && pair.get(1).is_some_and(|v| v.starts_with("io.containerd.snapshotter"))
        });
        match containerd {
            true => ImageStore::Containerd,
            false => ImageStore::Classic,
        }
    }
}
