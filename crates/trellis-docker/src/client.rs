//! The bollard client and the operations trellis needs from the engine.

use std::collections::HashMap;

use bollard::Docker;
pub use bollard::auth::DockerCredentials;
use bollard::query_parameters::{
    BuildImageOptions, BuilderVersion, CreateImageOptions, ListImagesOptions, PushImageOptions, RemoveImageOptions,
    TagImageOptions,
};
use futures_util::StreamExt;
use trellis_graph::ContextWalk;

use crate::context_tar::{RESERVED_DOCKERFILE, context_tar};

/// What went wrong, classified for the executor's retry decisions.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine could not be reached (not running, socket missing, connection dropped).
    #[error("cannot reach the Docker engine: {0}")]
    Unreachable(String),
    /// The engine ran the request and it failed (a build step, a missing image).
    #[error("{0}")]
    Failed(String),
    /// The engine refused the request as it stands (HTTP 4xx: a Dockerfile it cannot parse, a
    /// bad argument): sending it again gives the same answer.
    #[error("{0}")]
    Refused(String),
    /// A registry refused the credentials (or their absence).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
}

fn classify(error: bollard::errors::Error) -> EngineError {
    use bollard::errors::Error as E;
    match error {
        E::DockerStreamError { error } | E::DockerResponseServerError { message: error, .. }
            if is_unreachable(&error) =>
        {
            EngineError::Unreachable(error)
        }
        E::DockerStreamError { error } if is_unauthorized(&error) => EngineError::Unauthorized(error),
        E::DockerStreamError { error } if is_deterministic(&error) => EngineError::Refused(error),
        E::DockerStreamError { error } => EngineError::Failed(error),
        E::DockerResponseServerError { status_code: 401, message } => EngineError::Unauthorized(message),
        E::DockerResponseServerError { message, .. } if is_unauthorized(&message) => EngineError::Unauthorized(message),
        E::DockerResponseServerError { status_code, message } if (400..500).contains(&status_code) => {
            EngineError::Refused(format!("{message} ({status_code})"))
        }
        E::DockerResponseServerError { status_code, message } => {
            EngineError::Failed(format!("{message} ({status_code})"))
        }
        E::IOError { err } => EngineError::Unreachable(err.to_string()),
        E::HyperResponseError { err } => EngineError::Unreachable(err.to_string()),
        E::RequestTimeoutError => EngineError::Unreachable("the request timed out".to_owned()),
        other => EngineError::Unreachable(other.to_string()),
    }
}

/// What the engine reports when a registry refused credentials (distribution's `UNAUTHORIZED`
/// and `DENIED` errors, and the daemon's own wording).
fn is_unauthorized(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    ["unauthorized", "authentication required", "no basic auth credentials", "denied: requested access"]
        .iter()
        .any(|m| message.contains(m))
}

/// What the engine reports when it could not reach a registry (the daemon answers, the
/// registry does not): retried, and exit 3 when it stays so.
fn is_unreachable(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    ["connection refused", "no such host", "i/o timeout", "network is unreachable", "connection reset by peer"]
        .iter()
        .any(|m| message.contains(m))
}

/// Build failures that the same inputs reproduce every time: retrying cannot help.
fn is_deterministic(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    ["file not found in build context", "dockerfile parse error", "unknown instruction", "manifest unknown"]
        .iter()
        .any(|m| message.contains(m))
}

/// One image build.
pub struct BuildRequest<'a> {
    pub dockerfile: &'a str,
    pub context: Option<&'a ContextWalk>,
    pub args: &'a [(String, String)],
    pub labels: HashMap<String, String>,
    /// `default`, `host` or `none`.
    pub network: &'a str,
    pub target: Option<&'a str>,
    /// Build without the layer cache (`--refresh`).
    pub no_cache: bool,
}

/// A test: layers built on top of an exact image ID, then removed.
pub struct TestRequest<'a> {
    pub image_id: &'a str,
    /// `RUN` lines (a run test) — or a user Dockerfile taking `ARG IMAGE` with its context.
    pub run: Option<&'a [String]>,
    pub dockerfile: Option<(&'a str, &'a ContextWalk)>,
    pub network: &'a str,
}

/// What a build made in the engine, recorded as the stream names it, so that it can be
/// removed even when the build is cancelled mid-step.
#[derive(Debug, Default, Clone)]
pub struct BuildTrace {
    /// Layers committed by steps after `FROM` (short IDs).
    pub layers: Vec<String>,
    /// Containers steps ran in (removed by the daemon when a step ends, but not when the
    /// client goes away mid-step).
    pub containers: Vec<String>,
}

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
}

impl std::fmt::Debug for DockerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DockerClient")
    }
}

impl DockerClient {
    /// Connects through `DOCKER_HOST` or the default socket and negotiates the API version
    /// (bollard's defaults send unversioned paths).
    pub async fn connect() -> Result<Self, EngineError> {
        let docker = Docker::connect_with_defaults().map_err(classify)?;
        let docker = docker.negotiate_version().await.map_err(classify)?.with_request_modifier(url_safe_registry_auth);
        docker.ping().await.map_err(classify)?;
        Ok(Self { docker })
    }

    /// Pushes `target` (`registry/repository:tag`, tagged to `image_id` first) and returns the
    /// digest the registry stored. Progress lines go to `line`; credentials never do.
    pub async fn push(
        &self,
        image_id: &str,
        target: &str,
        credentials: Option<DockerCredentials>,
        line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<String, EngineError> {
        self.tag(image_id, target).await?;
        let (repository, tag) = split_reference(target);
        let options = PushImageOptions { tag: Some(tag.to_owned()), ..Default::default() };
        let stream = self.docker.push_image(repository, Some(options), credentials);
        follow(stream, |info| info.status.as_deref().filter(|_| info.progress_detail.is_none()), line).await?;
        let recorded = self.repo_digests(image_id).await?;
        digest_in(&recorded, repository)
            .ok_or_else(|| EngineError::Failed(format!("the engine recorded no digest for {target} after the push")))
    }

    /// Every `repository@digest` the engine recorded for `image_id`: one per repository it was
    /// pushed to (`push_image` itself reports no digest). See [`digest_in`].
    pub async fn repo_digests(&self, image_id: &str) -> Result<Vec<String>, EngineError> {
        let inspect = self.docker.inspect_image(image_id).await.map_err(classify)?;
        Ok(inspect.repo_digests.unwrap_or_default())
    }

    /// The digest the registry serves for `target`, or `None` when it has no such tag.
    pub async fn registry_digest(
        &self,
        target: &str,
        credentials: Option<DockerCredentials>,
    ) -> Result<Option<String>, EngineError> {
        let with_credentials = credentials.is_some();
        match self.docker.inspect_registry_image(target, credentials).await {
            Ok(inspect) => Ok(inspect.descriptor.digest),
            // Credentials given and refused: say so (without them a registry may still serve
            // reads, and the push says why it cannot).
            Err(error @ bollard::errors::Error::DockerResponseServerError { status_code: 401, .. })
                if with_credentials =>
            {
                Err(classify(error))
            }
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 401 | 403 | 404, .. }) => Ok(None),
            Err(other) => Err(classify(other)),
        }
    }

    /// Builds and returns the image ID from the build stream; every output line goes to
    /// `line`. A failed step is an error inside the stream, not an HTTP error.
    pub async fn build(
        &self,
        request: BuildRequest<'_>,
        trace: &mut BuildTrace,
        line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<String, EngineError> {
        let tar = context_tar(request.context, request.dockerfile)
            .map_err(|e| EngineError::Failed(format!("cannot read the build context: {e}")))?;
        let options = BuildImageOptions {
            dockerfile: RESERVED_DOCKERFILE.to_owned(),
            buildargs: Some(request.args.iter().cloned().collect()),
            labels: Some(request.labels),
            networkmode: Some(request.network.to_owned()),
            target: request.target.unwrap_or_default().to_owned(),
            nocache: request.no_cache,
            rm: true,
            forcerm: true,
            version: BuilderVersion::BuilderV1,
            ..Default::default()
        };
        let id = self.run_build(options, tar, trace, line).await?;
        id.ok_or_else(|| EngineError::Failed("the build finished without naming an image".to_owned()))
    }

    /// Streams one build; returns the image ID and records the IDs of the layers its steps
    /// made, FROM images excepted (what a test build must remove).
    async fn run_build(
        &self,
        options: BuildImageOptions,
        tar: Vec<u8>,
        trace: &mut BuildTrace,
        line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Option<String>, EngineError> {
        let mut stream = self.docker.build_image(options, None, Some(bollard::body_full(tar.into())));
        let mut pending = String::new();
        let mut image = None;
        // Whether the current step is a FROM, whose " ---> id" names an existing image (the
        // image under test, another stage's base) rather than a layer this build made.
        let mut from_step = true;
        let mut failure = None;
        let mut emit = |text: &str, pending: &mut String, from_step: &mut bool, trace: &mut BuildTrace| {
            pending.push_str(text);
            while let Some(end) = pending.find('\n') {
                let whole: String = pending.drain(..=end).collect();
                let whole = whole.trim_end_matches(['\n', '\r']);
                if let Some(step) = whole.strip_prefix("Step ") {
                    let instruction = step.split_once(" : ").map_or("", |(_, rest)| rest);
                    *from_step = instruction.split_whitespace().next().is_some_and(|i| i.eq_ignore_ascii_case("FROM"));
                }
                // " ---> 1a2b3c4d5e6f": the layer a step committed.
                if let Some(id) = whole.strip_prefix(" ---> ")
                    && !*from_step
                    && id.len() == 12
                    && id.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    trace.layers.push(id.to_owned());
                }
                if let Some(container) = whole.strip_prefix(" ---> Running in ") {
                    trace.containers.push(container.trim().to_owned());
                }
                line(whole);
            }
        };
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(text) = &info.stream {
                        emit(text, &mut pending, &mut from_step, trace);
                    }
                    if let Some(id) = info.aux.and_then(|aux| aux.id) {
                        image = Some(id);
                    }
                    if let Some(detail) = info.error_detail {
                        failure = Some(detail.message.unwrap_or_else(|| "the build failed".to_owned()));
                    }
                }
                Err(bollard::errors::Error::DockerStreamError { error }) => {
                    failure = Some(error);
                    break;
                }
                Err(other) => return Err(classify(other)),
            }
        }
        if !pending.is_empty() {
            emit("\n", &mut pending, &mut from_step, trace);
        }
        match failure {
            Some(message) => {
                line(&format!("error: {message}"));
                Err(classify(bollard::errors::Error::DockerStreamError { error: message }))
            }
            None => Ok(image),
        }
    }

    /// Runs a test as layers on `image_id`. Every layer it makes is pushed to `layers` as
    /// soon as the engine names it, so that the caller can remove them after success, failure
    /// or cancellation alike (with [`DockerClient::remove_test`]).
    pub async fn test(
        &self,
        request: TestRequest<'_>,
        trace: &mut BuildTrace,
        line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(), EngineError> {
        let (dockerfile, context, args) = match (request.run, request.dockerfile) {
            (Some(lines), _) => {
                let mut text = format!("FROM {}\n", request.image_id);
                for run in lines {
                    text.push_str("RUN ");
                    text.push_str(run);
                    text.push('\n');
                }
                (text, None, HashMap::new())
            }
            (None, Some((text, walk))) => {
                (text.to_owned(), Some(walk), HashMap::from([("IMAGE".to_owned(), request.image_id.to_owned())]))
            }
            (None, None) => return Err(EngineError::Failed("a test needs run lines or a Dockerfile".to_owned())),
        };
        let tar = context_tar(context, &dockerfile)
            .map_err(|e| EngineError::Failed(format!("cannot read the test context: {e}")))?;
        let options = BuildImageOptions {
            dockerfile: RESERVED_DOCKERFILE.to_owned(),
            buildargs: Some(args),
            labels: Some(HashMap::from([(crate::labels::TEST.to_owned(), "true".to_owned())])),
            networkmode: Some(request.network.to_owned()),
            // Tests must really run: never satisfied from the layer cache.
            nocache: true,
            rm: true,
            forcerm: true,
            version: BuilderVersion::BuilderV1,
            ..Default::default()
        };
        let id = self.run_build(options, tar, trace, line).await?;
        let layers = &mut trace.layers;
        layers.extend(id.filter(|id| !layers.iter().any(|l| id.trim_start_matches("sha256:").starts_with(l.as_str()))));
        Ok(())
    }

    /// Force-removes the containers a build ran (a no-op for those the daemon removed).
    pub async fn remove_containers(&self, trace: &BuildTrace) {
        for id in &trace.containers {
            let options = bollard::query_parameters::RemoveContainerOptions { force: true, ..Default::default() };
            let _ = self.docker.remove_container(id, Some(options)).await;
        }
    }

    /// Removes a test's containers and layers, newest layer first, without touching their
    /// parents (the variant's image may still be untagged).
    pub async fn remove_test(&self, trace: &BuildTrace) {
        self.remove_containers(trace).await;
        for id in trace.layers.iter().rev() {
            let options = RemoveImageOptions { force: true, noprune: true, ..Default::default() };
            let _ = self.docker.remove_image(id, Some(options), None).await;
        }
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
        let stream = self.docker.create_image(Some(options), None, credentials);
        follow(stream, |info| info.status.as_deref().filter(|_| info.progress_detail.is_none()), line).await?;
        self.image_id(reference)
            .await?
            .ok_or_else(|| EngineError::Failed(format!("the engine has no {reference} after pulling it")))
    }

    /// The image ID a reference (or ID) names, or `None` when the engine has no such image.
    pub async fn image_id(&self, reference: &str) -> Result<Option<String>, EngineError> {
        match self.docker.inspect_image(reference).await {
            Ok(inspect) => Ok(inspect.id),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
            Err(other) => Err(classify(other)),
        }
    }

    /// Every image labelled with this workspace: one call per run answers "is this build up
    /// to date" for every variant, and which references point where.
    pub async fn workspace_images(&self, workspace: &str) -> Result<Vec<ImageListing>, EngineError> {
        let filters = HashMap::from([("label".to_owned(), vec![format!("{}={workspace}", crate::labels::WORKSPACE)])]);
        let options = ListImagesOptions { all: false, filters: Some(filters), ..Default::default() };
        let images = self.docker.list_images(Some(options)).await.map_err(classify)?;
        Ok(images
            .into_iter()
            .map(|i| ImageListing { id: i.id, repo_tags: i.repo_tags, labels: i.labels, created: i.created })
            .collect())
    }

    /// Whether `id` is the image a build labelled `label=value` itself, rather than an image
    /// built on top of it: Docker copies a parent's labels into every image built FROM it, so
    /// the label alone proves nothing. trellis's labels are the last steps of its builds: the
    /// newest entries of the image's history are `LABEL` steps, one of them this label.
    pub async fn labelled_last(&self, id: &str, label: &str, value: &str) -> Result<bool, EngineError> {
        let history = self.docker.image_history(id).await.map_err(classify)?;
        let wanted = format!("{label}={value}");
        Ok(history
            .iter()
            .map(|step| step.created_by.as_str())
            .take_while(|step| step.contains("#(nop)  LABEL ") || step.starts_with("LABEL "))
            .any(|step| step.split_whitespace().any(|word| word == wanted)))
    }

    /// Removes an image by ID (for `trellis clean` and tests).
    pub async fn remove_image(&self, id: &str, force: bool) -> Result<(), EngineError> {
        let options = RemoveImageOptions { force, noprune: false, ..Default::default() };
        self.docker.remove_image(id, Some(options), None).await.map(|_| ()).map_err(classify)
    }
}

/// The digest under which `repository` holds an image, among its [`DockerClient::repo_digests`].
pub fn digest_in(repo_digests: &[String], repository: &str) -> Option<String> {
    let prefix = format!("{repository}@");
    repo_digests.iter().find_map(|d| d.strip_prefix(&prefix).map(str::to_owned))
}

/// Drains a push or pull progress stream: status lines (not byte counters, which `status`
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

/// Credentials for `registry` from the docker config (`DOCKER_CONFIG` or `~/.docker`): auths
/// entries and credential helpers. `None` when there are none (anonymous access).
pub fn credentials_for(registry: &str) -> Option<DockerCredentials> {
    match docker_credential::get_credential(registry).ok()? {
        docker_credential::DockerCredential::UsernamePassword(username, password) => Some(DockerCredentials {
            username: Some(username),
            password: Some(password),
            serveraddress: Some(registry.to_owned()),
            ..Default::default()
        }),
        docker_credential::DockerCredential::IdentityToken(token) => Some(DockerCredentials {
            identitytoken: Some(token),
            serveraddress: Some(registry.to_owned()),
            ..Default::default()
        }),
    }
}

/// Credentials for pulling `reference`, from the docker config entry of its registry (Docker
/// Hub's entry is keyed by its historical index URL).
pub fn credentials_for_image(reference: &str) -> Option<DockerCredentials> {
    match trellis_model::registry_of(reference)?.as_str() {
        "docker.io" => credentials_for("https://index.docker.io/v1/"),
        registry => credentials_for(registry),
    }
}

/// `registry:5000/a/b:tag` → (`registry:5000/a/b`, `tag`).
fn split_reference(reference: &str) -> (&str, &str) {
    match reference.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => (repository, tag),
        _ => (reference, "latest"),
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
    fn references_split_at_the_tag_not_the_port() {
        assert_eq!(split_reference("node:22"), ("node", "22"));
        assert_eq!(split_reference("localhost:5000/a/b:1.0"), ("localhost:5000/a/b", "1.0"));
        assert_eq!(split_reference("localhost:5000/a/b"), ("localhost:5000/a/b", "latest"));
    }
}
