//! The bollard client and the operations trellis needs from the engine.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::credentials::DockerCredentials;
use bollard::Docker;
use bollard::query_parameters::{CreateImageOptions, ListImagesOptions, RemoveImageOptions, TagImageOptions};
use futures_util::StreamExt;

use crate::endpoint::Endpoint;
use crate::engine_host::EngineHost;
use crate::errors::{EngineError, classify};
use crate::oci::{ImageLayout, Platform};
use crate::store::ImageStore;

/// An image of the workspace, from the one listing per run.
#[derive(Debug, Clone)]
pub struct ImageListing {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub labels: HashMap<String, String>,
    /// Seconds since the epoch.
    pub created: i64,
}

#[derive(Clone)]
pub struct DockerClient {
    docker: Docker,
    /// Where BuildKit builds open their own connections: where bollard connects.
    endpoint: Endpoint,
    /// Whether the engine offers BuildKit, judged at connect from the engine's version.
    buildkit: bool,
    /// The engine's own platform, `os/arch`, from its version answer at connect.
    platform: String,
    /// How the engine stores images, from its `info` answer at connect.
    store: ImageStore,
    /// The engine's version and API version, as it answered at connect.
    version: String,
    api_version: String,
}

impl std::fmt::Debug for DockerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DockerClient")
    }
}

impl DockerClient {
    /// Connects to the engine the docker CLI would use ([`EngineHost::from_environment`]:
    /// `DOCKER_HOST`, else `DOCKER_CONTEXT`, else the docker config's current context, else
    /// the local socket) and negotiates the API version (bollard's defaults send unversioned
    /// paths). Every error names the address and what chose it.
    pub async fn connect() -> Result<Self, EngineError> {
        let host = EngineHost::from_environment().map_err(EngineError::Unreachable)?;
        let at = |error: EngineError| match error {
            EngineError::Unreachable(why) => {
                EngineError::Unreachable(format!("{} ({}): {why}", host.address, host.chosen_by))
            }
            other => other,
        };
        let endpoint = Endpoint::parse(&host.address)
            .map_err(|why| EngineError::Unreachable(format!("{why} (from {})", host.chosen_by)))?;
        let docker = endpoint.bollard(&host.address).map_err(classify).map_err(at)?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(classify)
            .map_err(at)?
            .with_request_modifier(url_safe_registry_auth);
        // Asked instead of a ping: it answers the same way, and says what the engine offers.
        let version = docker.version().await.map_err(classify).map_err(at)?;
        let buildkit = offers_buildkit(&version);
        let platform =
            format!("{}/{}", version.os.clone().unwrap_or_default(), version.arch.clone().unwrap_or_default());
        let info = docker.info().await.map_err(classify).map_err(at)?;
        let store = ImageStore::of(&info);
        Ok(Self {
            docker,
            endpoint,
            buildkit,
            platform,
            store,
            version: version.version.unwrap_or_default(),
            api_version: version.api_version.unwrap_or_default(),
        })
    }

    /// Whether builds can go through the engine's BuildKit (`/build?version=2`): a Linux
    /// engine with API 1.39 or newer (BuildKit's API version; dockerd 20.10 answers 1.41, and
    /// its `/_ping` has no `Builder-Version` header yet). Judged at connect: no request.
    pub fn offers_buildkit(&self) -> bool {
        self.buildkit
    }

    /// How the engine stores images (judged at connect: no request).
    pub fn store(&self) -> ImageStore {
        self.store
    }

    /// The engine's version and its API version (`26.1.5`, `1.45`), as answered at connect.
    pub fn version(&self) -> (&str, &str) {
        (&self.version, &self.api_version)
    }

    /// The version of the BuildKit the engine embeds, when it says (BuildKit 0.11 and newer,
    /// asked through its control API): for `trellis doctor`.
    pub async fn buildkit_version(&self) -> Result<Option<String>, EngineError> {
        crate::control::buildkit_version(&self.endpoint, &self.docker.client_version().to_string()).await
    }

    pub(crate) fn docker(&self) -> &Docker {
        &self.docker
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Points `reference` (`repository:tag`) at `image_id`.
    pub async fn tag(&self, image_id: &str, reference: &str) -> Result<(), EngineError> {
        let (repository, tag) = split_reference(reference);
        let options = TagImageOptions { repo: Some(repository.to_owned()), tag: Some(tag.to_owned()) };
        self.docker.tag_image(image_id, Some(options)).await.map_err(classify)
    }

    /// Pulls `reference` (`repository[:tag]` or `repository@digest`) and returns the image ID
    /// it now names. Every status line goes to `line`.
    pub async fn pull(
        &self,
        reference: &str,
        credentials: Option<DockerCredentials>,
        line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<String, EngineError> {
        // Without a tag the API pulls every tag of the repository: always name one.
        let (from_image, tag) = match reference.contains('@') {
            true => (reference, None),
            false => {
                let (repository, tag) = split_reference(reference);
                (repository, Some(tag.to_owned()))
            }
        };
        let options = CreateImageOptions { from_image: Some(from_image.to_owned()), tag, ..Default::default() };
        self.create_image(reference, options, credentials, line).await
    }

    /// Runs one pull and answers the image ID `reference` then names.
    async fn create_image(
        &self,
        reference: &str,
        options: CreateImageOptions,
        credentials: Option<DockerCredentials>,
        line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<String, EngineError> {
        let stream = self.docker.create_image(Some(options), None, credentials);
        follow(stream, |info| info.status.as_deref().filter(|_| info.progress_detail.is_none()), line).await?;
        self.image_id(reference)
            .await?
            .ok_or_else(|| EngineError::Failed(format!("the engine has no {reference} after pulling it")))
    }

    /// Pulls `reference` for `platform` (`os/arch[/variant]`). Name it by digest
    /// (`repository@sha256:…`, an index's): pulling by tag would move the engine's tag, which
    /// names one platform's image only, to this platform's.
    pub async fn pull_platform(
        &self,
        reference: &str,
        platform: &str,
        credentials: Option<DockerCredentials>,
        line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<String, EngineError> {
        let options = CreateImageOptions {
            from_image: Some(reference.to_owned()),
            platform: platform.to_owned(),
            ..Default::default()
        };
        self.create_image(reference, options, credentials, line).await
    }

    /// The image a reference names and its platform (`os/arch[/variant]`), or `None`.
    pub async fn image_platform(&self, reference: &str) -> Result<Option<(String, String)>, EngineError> {
        match self.docker.inspect_image(reference).await {
            Ok(inspect) => {
                let mut platform =
                    format!("{}/{}", inspect.os.unwrap_or_default(), inspect.architecture.unwrap_or_default());
                if let Some(variant) = inspect.variant.filter(|v| !v.is_empty()) {
                    platform = format!("{platform}/{variant}");
                }
                Ok(inspect.id.map(|id| (id, platform)))
            }
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
            Err(other) => Err(classify(other)),
        }
    }

    /// The image ID a reference (or ID) names, or `None` when the engine has no such image.
    pub async fn image_id(&self, reference: &str) -> Result<Option<String>, EngineError> {
        match self.docker.inspect_image(reference).await {
            Ok(inspect) => Ok(inspect.id),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
            Err(other) => Err(classify(other)),
        }
    }

    /// Every image labelled with this workspace: one call answers "is this build up to date"
    /// for every variant (untagged builds included), and which references point where.
    pub async fn workspace_images(&self, workspace: &str) -> Result<Vec<ImageListing>, EngineError> {
        self.list(HashMap::from([("label".to_owned(), vec![format!("{}={workspace}", crate::labels::WORKSPACE)])]))
            .await
    }

    /// The images tagged in `repositories` (any tag) that carry `workspace`'s label: what a
    /// run that finds every build tagged needs, for a fraction of [`DockerClient::workspace_images`]'s
    /// cost on the containerd store, which reads every image's config to filter by label
    /// (1.5 s for 500 images here) but finds names at once (0.1 s). Labels are checked here.
    pub async fn tagged_images(
        &self,
        workspace: &str,
        repositories: &[String],
    ) -> Result<Vec<ImageListing>, EngineError> {
        let mut images = self.list(HashMap::from([("reference".to_owned(), repositories.to_vec())])).await?;
        images.retain(|image| image.labels.get(crate::labels::WORKSPACE).is_some_and(|w| w == workspace));
        Ok(images)
    }

    async fn list(&self, filters: HashMap<String, Vec<String>>) -> Result<Vec<ImageListing>, EngineError> {
        // The containerd store sizes each image from its snapshots while listing: an image
        // removed meanwhile (by anyone) fails the whole listing with a 404 "snapshot … does not
        // exist". Listed again: the removal is over by then.
        let mut attempt = 0;
        let images = loop {
            let options = ListImagesOptions { all: false, filters: Some(filters.clone()), ..Default::default() };
            match self.docker.list_images(Some(options)).await {
                Ok(images) => break images,
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) if attempt < 5 => {
                    attempt += 1;
                }
                Err(other) => return Err(classify(other)),
            }
        };
        Ok(images
            .into_iter()
            .map(|i| ImageListing { id: i.id, repo_tags: i.repo_tags, labels: i.labels, created: i.created })
            .collect())
    }

    /// Whether `id` is the image a build labelled `label=value` itself, rather than an image
    /// built on top of it: Docker copies a parent's labels into every image built FROM it, so
    /// the label alone proves nothing. trellis's labels are the last steps of its builds: the
    /// newest entries of the image's history are `LABEL` steps, one of them this label (the
    /// classic builder writes one step per build label, `#(nop)  LABEL k=v`; under BuildKit,
    /// which records none for build labels, the builder adds one `LABEL k=v …` step itself).
    /// An image built on top that adds nothing but labels still passes: its newest steps
    /// are `LABEL`s too.
    pub async fn labelled_last(&self, id: &str, label: &str, value: &str) -> Result<bool, EngineError> {
        let history = match self.docker.image_history(id).await {
            Ok(history) => history,
            // Removed since it was listed (or, on the containerd store, a snapshot of it): it is
            // no build of anyone's any more.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => return Ok(false),
            Err(other) => return Err(classify(other)),
        };
        let wanted = format!("{label}={value}");
        Ok(history
            .iter()
            .map(|step| step.created_by.as_str())
            .take_while(|step| step.contains("#(nop)  LABEL ") || step.starts_with("LABEL "))
            .any(|step| step.split_whitespace().any(|word| word == wanted)))
    }

    /// Takes `reference` off its image, leaving the image (see [`untag`]).
    pub async fn untag(&self, reference: &str) {
        untag(&self.docker, reference).await;
    }

    /// Tags `image` under a new [`crate::STAND_IN_REPOSITORY`] tag no other build uses, and
    /// returns the reference: a build for another platform names its parent's image by it
    /// (the engine's own tags name one platform's image only). Take it off with
    /// [`DockerClient::untag`]; `trellis clean` takes off what a killed run left.
    pub async fn temporary_tag(&self, image: &str) -> Result<String, EngineError> {
        let tag = temporary_tag();
        let options = TagImageOptions { repo: Some(crate::STAND_IN_REPOSITORY.to_owned()), tag: Some(tag.clone()) };
        self.docker.tag_image(image, Some(options)).await.map_err(classify)?;
        Ok(format!("{}:{tag}", crate::STAND_IN_REPOSITORY))
    }

    /// Removes an image by ID (for `trellis clean` and tests).
    pub async fn remove_image(&self, id: &str, force: bool) -> Result<(), EngineError> {
        let options = RemoveImageOptions { force, noprune: false, ..Default::default() };
        self.docker.remove_image(id, Some(options), None).await.map(|_| ()).map_err(classify)
    }
}

/// BuildKit's `/build?version=2` came with Engine API 1.39 (Docker 18.09), on Linux engines.
fn offers_buildkit(version: &bollard::models::SystemVersion) -> bool {
    let api = version.api_version.as_deref().unwrap_or_default();
    let (major, minor) = api.split_once('.').unwrap_or((api, "0"));
    let api = (major.parse::<u32>().unwrap_or(0), minor.parse::<u32>().unwrap_or(0));
    version.os.as_deref().is_some_and(|os| os.eq_ignore_ascii_case("linux")) && api >= (1, 39)
}

/// An empty image that stays in the engine under this tag: a tag to be removed is first
/// moved onto it (see [`untag`]).
const ANCHOR: &str = "trellis.invalid/anchor:empty";

/// Takes `reference` off its image without deleting the image (removing an image's last tag
/// deletes it, and an image under test is often untagged until its tests pass): the tag is
/// moved onto [`ANCHOR`], which keeps its own tag, and then removed from it. The anchor is made
/// once per engine (an empty import) and never removed: an image that comes and goes without
/// a parent races the classic builder, which looks through such images for a cache hit of a
/// `FROM scratch` step and fails when one vanishes under it.
pub(crate) async fn untag(docker: &Docker, reference: &str) {
    let Some((repository, tag)) = reference.rsplit_once(':') else { return };
    if docker.inspect_image(ANCHOR).await.is_err() {
        let (anchor_repository, anchor_tag) = ANCHOR.rsplit_once(':').unwrap_or((ANCHOR, "empty"));
        let options = CreateImageOptions {
            from_src: Some("-".to_owned()),
            repo: Some(anchor_repository.to_owned()),
            tag: Some(anchor_tag.to_owned()),
            ..Default::default()
        };
        // Two zero blocks: an empty tar.
        let empty = bollard::body_full(bytes::Bytes::from_static(&[0; 1024]));
        let mut import = docker.create_image(Some(options), Some(empty), None);
        while import.next().await.is_some() {}
    }
    let options = TagImageOptions { repo: Some(repository.to_owned()), tag: Some(tag.to_owned()) };
    if docker.tag_image(ANCHOR, Some(options)).await.is_ok() {
        let options = RemoveImageOptions { force: false, noprune: true, ..Default::default() };
        let _ = docker.remove_image(reference, Some(options), None).await;
    }
}

/// Drains a pull progress stream: status lines (not byte counters, which `status`
/// leaves out) go to `line`; an error inside the stream ends it.
async fn follow<T>(
    mut stream: impl futures_util::Stream<Item = Result<T, bollard::errors::Error>> + Unpin,
    status: impl Fn(&T) -> Option<&str>,
    line: &mut (dyn FnMut(&str) + Send),
) -> Result<(), EngineError> {
    while let Some(item) = stream.next().await {
        if let Some(text) = status(&item.map_err(classify)?) {
            line(text);
        }
    }
    Ok(())
}

/// bollard encodes `X-Registry-Auth` with standard base64; the daemon expects URL-safe and
/// silently drops credentials whose encoding has `+` or `/` ("no basic auth credentials").
fn url_safe_registry_auth(mut request: bollard::BollardRequest) -> bollard::BollardRequest {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    let recoded = request
        .headers()
        .get("X-Registry-Auth")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| STANDARD.decode(value).ok())
        .and_then(|json| http::HeaderValue::from_str(&URL_SAFE.encode(json)).ok());
    if let Some(value) = recoded {
        request.headers_mut().insert("X-Registry-Auth", value);
    }
    request
}

/// `registry:5000/a/b:tag` → (`registry:5000/a/b`, `tag`).
fn split_reference(reference: &str) -> (&str, &str) {
    match reference.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => (repository, tag),
        _ => (reference, "latest"),
    }
}

/// A tag no other run or test uses at the same time.
pub(crate) fn temporary_tag() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{:x}-{nanos:x}-{:x}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// What the registry client (`registry.rs`) needs from the engine.
impl DockerClient {
    /// The engine's own platform, `os/arch` (`linux/amd64`), as its version answer names it
    /// (without a variant: the answer has none). Judged at connect: no request.
    pub fn platform(&self) -> &str {
        &self.platform
    }

    /// The platform `image_id` was built for and its layers' diff IDs, base first.
    pub(crate) async fn image_layout(&self, image_id: &str) -> Result<ImageLayout, EngineError> {
        let inspect = self.docker.inspect_image(image_id).await.map_err(classify)?;
        let known = |value: Option<String>| value.filter(|v| !v.is_empty());
        let (Some(os), Some(architecture)) = (known(inspect.os), known(inspect.architecture)) else {
            return Err(EngineError::Failed(format!("the engine records no platform for {image_id}")));
        };
        let platform = Platform { os, architecture, variant: known(inspect.variant) };
        let diff_ids = inspect.root_fs.and_then(|root_fs| root_fs.layers).unwrap_or_default();
        Ok(ImageLayout { platform, diff_ids })
    }

    /// Writes the engine's export of `image_id` into `file`: `docker save`'s tar, whose
    /// `manifest.json` names the config (the exact bytes the image ID hashes) and each layer's
    /// uncompressed tar (whose digest is its diff ID).
    pub(crate) async fn export_image(&self, image_id: &str, file: &mut tokio::fs::File) -> Result<(), EngineError> {
        use tokio::io::AsyncWriteExt as _;
        let mut export = std::pin::pin!(self.docker.export_image(image_id));
        while let Some(chunk) = export.next().await {
            let chunk = chunk.map_err(classify)?;
            file.write_all(&chunk).await.map_err(|e| EngineError::Failed(format!("cannot write the export: {e}")))?;
        }
        file.flush().await.map_err(|e| EngineError::Failed(format!("cannot write the export: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_auth_is_recoded_url_safe() {
        use base64::Engine as _;
        use base64::engine::general_purpose::{STANDARD, URL_SAFE};
        // A payload whose standard encoding has both `+` and `/`.
        let json = "{\"password\":\"tr+ll/s?pass>w~rd\u{fb}\u{ff}\"}";
        let standard = STANDARD.encode(json);
        assert!(standard.contains('+') || standard.contains('/'), "{standard}");
        let request = http::Request::builder()
            .header("X-Registry-Auth", &standard)
            .body(bollard::body_full(Vec::new().into()))
            .unwrap();
        let recoded = url_safe_registry_auth(request);
        let value = recoded.headers().get("X-Registry-Auth").unwrap().to_str().unwrap();
        assert_eq!(value, URL_SAFE.encode(json));
        assert!(!value.contains('+') && !value.contains('/'));
    }

    #[test]
    fn buildkit_is_offered_by_linux_engines_from_api_1_39() {
        let version = |api: &str, os: &str| bollard::models::SystemVersion {
            api_version: Some(api.to_owned()),
            os: Some(os.to_owned()),
            ..Default::default()
        };
        assert!(offers_buildkit(&version("1.41", "linux")));
        assert!(offers_buildkit(&version("1.39", "linux")));
        assert!(!offers_buildkit(&version("1.38", "linux")));
        assert!(!offers_buildkit(&version("1.41", "windows")));
    }

    #[test]
    fn references_split_at_the_tag_not_the_port() {
        assert_eq!(split_reference("node:22"), ("node", "22"));
        assert_eq!(split_reference("localhost:5000/a/b:1.0"), ("localhost:5000/a/b", "1.0"));
        assert_eq!(split_reference("localhost:5000/a/b"), ("localhost:5000/a/b", "latest"));
    }
}
