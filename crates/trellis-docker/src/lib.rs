//! trellis-docker: the Docker Engine backend — build contexts streamed as tars from the same
//! walk the keys hash, builds and tests as layers on an exact image ID behind one [`Builder`]
//! trait (the classic builder and the engine's embedded BuildKit), tags and the one image
//! listing per run — through bollard.
//!
//! It knows the engine, not the graph: callers hand it a rendered Dockerfile, a context walk,
//! args and labels, and get image IDs back. Traps of bollard 0.21 against Engine API 1.41 are
//! handled here (see ENGINE-NOTES): the version is negotiated, every build gets a body, a
//! failed build is an error inside a 200 stream, the image ID comes from the stream's `aux`,
//! and the daemon does not apply `.dockerignore`, so the tar is filtered here. BuildKit builds
//! read their stream over a connection of their own (`endpoint.rs` says why). The engine is the
//! one the docker CLI would use (`DOCKER_HOST`, else the current context: [`EngineHost`]),
//! reached over a unix socket, TCP or ssh (`docker system dial-stdio`).

mod builder;
mod buildkit;
mod buildkit_progress;
mod buildkit_status;
mod classic;
mod client;
mod compress;
mod context_tar;
mod control;
mod credentials;
mod endpoint;
mod engine_host;
mod errors;
mod export;
mod oci;
pub mod publish;
pub mod registry;
mod session;
mod store;

/// The `dev.trellis.*` labels on the images trellis builds: what `clean`, the skip listing and
/// the plan read back. Defined once, here.
pub mod labels {
    /// The workspace's `name`: one listing per run finds its images.
    pub const WORKSPACE: &str = "dev.trellis.workspace";
    /// The variant id.
    pub const VARIANT: &str = "dev.trellis.variant";
    /// The build key (hex): an image with the current key is up to date.
    pub const KEY: &str = "dev.trellis.key";
    /// `<parent variant>@<image id>` of each workspace image the build stood on, comma
    /// separated: a parent whose tested image changed under the same key (`--refresh`) makes
    /// its children rebuild.
    pub const PARENTS: &str = "dev.trellis.parents";
    /// On test images (removed after each test; `clean` removes what a crash left).
    pub const TEST: &str = "dev.trellis.test";
    /// On images built for a named platform (`linux/arm64`): the engine's tags name one
    /// platform's image, and this says which platform the others are.
    pub const PLATFORM: &str = "dev.trellis.platform";
}

/// The repository of the temporary local tags BuildKit tests stand on (BuildKit looks `FROM
/// sha256:<id>` up on Docker Hub; a local tag is found locally). `.invalid` never resolves
/// (RFC 2606): should the tag vanish mid-test, nothing is pulled from anywhere. A tag left
/// by a killed run is `trellis clean`'s to remove.
pub const TEST_BASE_REPOSITORY: &str = "trellis.invalid/under-test";

/// The repository of the temporary local tags a build for another platform names its
/// parents' images by (see [`DockerClient::temporary_tag`]).
pub const STAND_IN_REPOSITORY: &str = "trellis.invalid/parent";

pub use builder::{BuildRequest, BuildTrace, Builder, BuilderKind, TestRequest};
pub use client::{DockerClient, ImageListing};
pub use compress::Compression;
pub use context_tar::{RESERVED_DOCKERFILE, context_tar};
pub use credentials::{DockerCredentials, credentials_for, credentials_for_image};
pub use engine_host::{ChosenBy, EngineHost, LOCAL_SOCKET};
pub use errors::EngineError;
pub use oci::Platform;
pub use store::ImageStore;

use std::sync::Arc;

use buildkit::BuildKitBuilder;
use classic::ClassicBuilder;

/// The top of the layering: the one place that knows both builders.
impl DockerClient {
    /// The builder of `kind` on this engine (check [`DockerClient::offers_buildkit`] first).
    pub fn builder(&self, kind: BuilderKind) -> Arc<dyn Builder> {
        match kind {
            BuilderKind::Classic => Arc::new(ClassicBuilder::new(self.docker().clone())),
            BuilderKind::BuildKit => Arc::new(BuildKitBuilder::new(self.docker().clone(), self.endpoint().clone())),
        }
    }
}
