//! Publishing a variant's images to a registry: each platform's image pushed by digest only (no
//! tag, not even a temporary one), then one OCI image index naming them put under every tag of
//! the variant, so that every alias serves the same index digest. The engine cannot push an
//! image without a tag, so this module talks to the registry itself; it reads the engine only
//! to inspect and export images, and never tags, pulls or removes anything there.
//!
//! **Why oci-client.** The registry protocol around the bytes is the work: basic credentials
//! and bearer tokens exchanged per repository scope (what Docker Hub, GHCR and cloud registries
//! ask), TLS, monolithic and chunked blob uploads, cross-repository mounts, and the manifest
//! PUTs. oci-client 0.18 does those, built on native-tls (its default rustls pulls aws-lc-sys, a
//! long C build). What it lacks is done beside it with reqwest, the HTTP client it is built on
//! (no compile time): a HEAD that tells a blob's size (its `blob_exists` answers a bool, and the
//! manifest needs the size), a manifest HEAD that is one request (its `fetch_manifest_digest`
//! falls back to a GET when the answer carries no digest header, as no 404 does), and counting
//! requests ([`Registry::stats`]). Those HEADs carry what oci-client's auth flow produced.
//!
//! **Deterministic manifests.** The same local image always gives the same manifest digest, so
//! re-pushing an unchanged image never publishes a new digest. The manifest is an OCI image
//! manifest whose config blob is the exact config the engine exports (its sha256 is the image
//! ID, so the registry's config digest is the local image ID) and whose layers are the
//! uncompressed tars the engine exports (`application/vnd.oci.image.layer.v1.tar`; their digests
//! are the image's diff IDs). Nothing is compressed, so no compressor's version or level can
//! change a byte; the cost is registry storage and transfer of uncompressed layers. dockerd
//! 20.10 pulls such images back to the same image ID. Manifests and indexes are serialized by
//! serde_json from oci-client's types: fields in declaration order, no maps; the same manifests
//! in the same order give the same bytes.
//!
//! **Few requests.** A blob the registry holds is not sent: the config and every layer are
//! asked for first (one HEAD each), and the engine exports the image (into a temporary file,
//! whole: `docker save` writes its index last) only when one is missing;
//! a blob another repository of `mount_from` holds is mounted, not uploaded. Uploads are
//! monolithic (POST + PUT, streamed from the export file): two requests per blob whatever its
//! size. A tag already serving the index costs one HEAD. Each repository's credentials are
//! settled once per run: one `GET /v2/` (and the token request on bearer registries).
//! Without credentials nothing is settled and requests carry none: an open registry. (Holding
//! "anonymous" credentials, oci-client asks `/v2/` before every request of a registry that hands
//! out no token.)
//!
//! **Limits.** oci-client asks a bearer token for one repository: a bearer registry then cannot
//! mount from another repository and opens an upload session instead (202), and the blob is
//! uploaded (the session is left to the registry's purge of stale uploads). oci-client renews
//! an expired bearer token by itself: [`Registry::stats`] does not count those requests. The
//! export must hold uncompressed layers (the engine's classic image store, as in dockerd 20.10):
//! a layer whose bytes do not match its diff ID is refused by the registry's digest check.

use std::collections::HashMap;
use std::fmt;
use std::io::{Read as _, SeekFrom};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::TryStreamExt as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{self, ImageIndexEntry, OciDescriptor, OciImageIndex, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::token_cache::RegistryTokenType;
use oci_client::{Reference, RegistryOperation};
use sha2::Digest as _;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use crate::client::{DockerClient, DockerCredentials, EngineError};

const MANIFEST_MEDIA_TYPE: &str = manifest::OCI_IMAGE_MEDIA_TYPE;
const INDEX_MEDIA_TYPE: &str = manifest::OCI_IMAGE_INDEX_MEDIA_TYPE;

/// The artifact type of trellis's records in a registry (see `Registry::put_record`).
pub const RECORD_ARTIFACT_TYPE: &str = "application/vnd.dev.trellis.record.v1+json";
/// The annotation holding a record's JSON.
pub const RECORD_ANNOTATION: &str = "dev.trellis.record";
/// The OCI empty descriptor's content (`{}`), type and digest.
const EMPTY_JSON: &str = "{}";
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const EMPTY_DIGEST: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

/// What a manifest HEAD accepts: a registry rewrites an index into one platform's manifest
/// for a client that does not accept indexes.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// A host that does not answer within this is unreachable (the executor retries).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

const USER_AGENT: &str = concat!("trellis/", env!("CARGO_PKG_VERSION"));

/// One registry host, for one run: it remembers how each repository's requests are authorized.
pub struct Registry {
    host: String,
    /// `http(s)://host/v2`, for the HEADs.
    api: String,
    credentials: Option<(String, String)>,
    /// Uploads, mounts, manifest PUTs, and the auth flows.
    oci: oci_client::Client,
    /// The HEADs (see the module docs).
    http: reqwest::Client,
    access: tokio::sync::Mutex<HashMap<String, Access>>,
    requests: AtomicU64,
    uploaded_bytes: AtomicU64,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry").field("host", &self.host).finish_non_exhaustive()
    }
}

/// How a repository's requests are authorized.
#[derive(Clone)]
enum Access {
    Anonymous,
    Basic { username: String, password: String },
    Bearer(String),
}

/// An image pushed by digest: what the index names it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedImage {
    /// The manifest's digest.
    pub digest: String,
    /// The manifest's size in bytes.
    pub size: u64,
    pub media_type: String,
    pub platform: Platform,
    /// Blob bytes this push uploaded (0 when the registry held every blob or mounted them).
    pub uploaded_bytes: u64,
}

/// An image's platform as its config records it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(variant) => write!(f, "/{variant}"),
            None => Ok(()),
        }
    }
}

/// An OCI image index, serialized once: its digest is the digest of these bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageIndex {
    pub digest: String,
    pub bytes: Vec<u8>,
    pub media_type: &'static str,
}

impl ImageIndex {
    /// The index naming `images`, in this order: the same manifests in the same order give the
    /// same bytes, hence the same digest.
    pub fn of(images: &[PushedImage]) -> Self {
        let manifests = images
            .iter()
            .map(|image| ImageIndexEntry {
                media_type: image.media_type.clone(),
                digest: image.digest.clone(),
                size: image.size as i64,
                platform: Some(manifest::Platform {
                    architecture: image.platform.architecture.as_str().into(),
                    os: image.platform.os.as_str().into(),
                    variant: image.platform.variant.clone(),
                    os_version: None,
                    os_features: None,
                    features: None,
                }),
                annotations: None,
                artifact_type: None,
            })
            .collect();
        let index = OciImageIndex {
            schema_version: 2,
            media_type: Some(INDEX_MEDIA_TYPE.to_owned()),
            manifests,
            artifact_type: None,
            annotations: None,
        };
        let bytes = serde_json::to_vec(&index).expect("an index has no map that could fail to serialize");
        Self { digest: sha256(&bytes), bytes, media_type: INDEX_MEDIA_TYPE }
    }
}

/// Requests sent and blob bytes uploaded by one [`Registry`] so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryStats {
    pub requests: u64,
    pub uploaded_bytes: u64,
}

/// An image as the engine records it, for its manifest.
pub(crate) struct ImageLayout {
    pub platform: Platform,
    /// The layers' diff IDs (digests of their uncompressed tars), base first.
    pub diff_ids: Vec<String>,
}

/// Where the registry found a blob, or did not.
enum Found {
    Held(u64),
    Mounted { size: u64, from: String },
    Missing,
}

impl Registry {
    /// `registry` is a `host[:port]` like `127.0.0.1:5000`. Plain HTTP for `localhost`,
    /// 127.0.0.0/8 and `::1` (the docker daemon's default insecure registries), HTTPS
    /// otherwise. A username and password are sent as basic credentials or exchanged for
    /// bearer tokens, as the registry asks; credentials without them (an identity token) and
    /// `None` are anonymous.
    /// The registry's `host[:port]`, as given to [`Registry::new`].
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn new(registry: &str, credentials: Option<DockerCredentials>) -> Self {
        let (protocol, scheme) = match is_loopback(registry) {
            true => (ClientProtocol::HttpsExcept(vec![registry.to_owned()]), "http"),
            false => (ClientProtocol::Https, "https"),
        };
        let config = ClientConfig {
            protocol,
            use_monolithic_push: true,
            connect_timeout: Some(CONNECT_TIMEOUT),
            user_agent: USER_AGENT,
            ..Default::default()
        };
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(USER_AGENT)
            .build()
            .unwrap_or_default();
        // oci-client addresses Docker Hub by its API host; the HEADs go where it goes.
        let api_host =
            Reference::with_tag(registry.to_owned(), "x".to_owned(), "x".to_owned()).resolve_registry().to_owned();
        Self {
            host: registry.to_owned(),
            api: format!("{scheme}://{api_host}/v2"),
            credentials: credentials.and_then(|c| Some((c.username?, c.password?))),
            oci: oci_client::Client::new(config),
            http,
            access: tokio::sync::Mutex::default(),
            requests: AtomicU64::new(0),
            uploaded_bytes: AtomicU64::new(0),
        }
    }

    /// Pushes the engine's image `image_id` (`sha256:…`) into `repository` (`trellis/node`,
    /// without the host) by digest and returns what the index needs. The config and every layer
    /// are asked for first; a blob `repository` lacks is mounted from the first repository of
    /// `mount_from` that holds it; only when blobs are still missing is the image exported from
    /// the engine, and each missing blob uploaded once. Then the manifest is PUT by its digest.
    pub async fn push_image(
        &self,
        docker: &DockerClient,
        image_id: &str,
        repository: &str,
        mount_from: &[String],
        line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<PushedImage, EngineError> {
        let ImageLayout { platform, diff_ids } = docker.image_layout(image_id).await?;
        let mut blobs = vec![image_id];
        for diff_id in &diff_ids {
            if !blobs.contains(&diff_id.as_str()) {
                blobs.push(diff_id);
            }
        }
        let found =
            futures_util::future::try_join_all(blobs.iter().map(|blob| self.find(repository, blob, mount_from)))
                .await?;
        let mut sizes = HashMap::new();
        let mut missing = Vec::new();
        for (blob, found) in blobs.into_iter().zip(found) {
            match found {
                Found::Held(size) => {
                    sizes.insert(blob, size);
                }
                Found::Mounted { size, from } => {
                    line(&format!("mounted {} from {from}", short(blob)));
                    sizes.insert(blob, size);
                }
                Found::Missing => missing.push(blob),
            }
        }
        let mut uploaded_bytes = 0;
        if !missing.is_empty() {
            line(&format!("exporting {} ({platform}): {} blob(s) to upload", short(image_id), missing.len()));
            let export = Export::of(docker, image_id, &diff_ids).await?;
            for blob in missing {
                let size = self.upload(repository, &export, blob).await?;
                line(&format!("uploaded {} ({size} bytes)", short(blob)));
                uploaded_bytes += size;
                sizes.insert(blob, size);
            }
        }
        let bytes = serde_json::to_vec(&image_manifest(image_id, &diff_ids, &sizes))
            .expect("a manifest has no map that could fail to serialize");
        let (digest, size) = (sha256(&bytes), bytes.len() as u64);
        self.put_manifest(repository, &digest, bytes, MANIFEST_MEDIA_TYPE).await?;
        line(&format!("pushed {platform} as {repository}@{digest}"));
        Ok(PushedImage { digest, size, media_type: MANIFEST_MEDIA_TYPE.to_owned(), platform, uploaded_bytes })
    }

    /// The digest `repository:tag` serves (one HEAD), `None` when it serves nothing.
    pub async fn served(&self, repository: &str, tag: &str) -> Result<Option<String>, EngineError> {
        let Some(headers) = self.head(repository, &format!("manifests/{tag}")).await? else { return Ok(None) };
        match headers.get("Docker-Content-Digest").and_then(|value| value.to_str().ok()) {
            Some(digest) => Ok(Some(digest.to_owned())),
            None => {
                Err(EngineError::Failed(format!("registry {}: {repository}:{tag} has no digest header", self.host)))
            }
        }
    }

    /// Puts `index` under `repository:tag` unless the tag already serves it: one HEAD, and one
    /// PUT when it does not. True when it put.
    pub async fn put_index(&self, repository: &str, tag: &str, index: &ImageIndex) -> Result<bool, EngineError> {
        if self.served(repository, tag).await?.as_deref() == Some(index.digest.as_str()) {
            return Ok(false);
        }
        self.put_manifest(repository, tag, index.bytes.clone(), index.media_type).await?;
        Ok(true)
    }

    /// The digest of `platform`'s image in what `repository:tag` serves: the entry of an index
    /// (or manifest list) for it, or the manifest itself when it serves one image. `None`
    /// when it serves nothing, or an index without that platform. Pulling that digest gets
    /// one platform's image without moving any of the engine's tags.
    pub async fn platform_manifest(
        &self,
        repository: &str,
        tag: &str,
        platform: &str,
    ) -> Result<Option<String>, EngineError> {
        let reference = Reference::with_tag(self.host.clone(), repository.to_owned(), tag.to_owned());
        let auth = match &self.credentials {
            Some((username, password)) => RegistryAuth::Basic(username.clone(), password.clone()),
            None => RegistryAuth::Anonymous,
        };
        let accepted = MANIFEST_ACCEPT.split(", ").map(str::trim).collect::<Vec<_>>();
        self.count(1);
        let (bytes, digest) = match self.oci.pull_manifest_raw(&reference, &auth, &accepted).await {
            Ok(found) => found,
            Err(OciDistributionError::ImageManifestNotFoundError(_)) => return Ok(None),
            Err(error) => return Err(self.oci_error(error)),
        };
        let served: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| EngineError::Failed(format!("registry {}: {repository}:{tag} is not JSON: {e}", self.host)))?;
        let Some(entries) = served["manifests"].as_array() else { return Ok(Some(digest)) };
        let of_platform = |entry: &&serde_json::Value| {
            let p = &entry["platform"];
            let mut recorded =
                format!("{}/{}", p["os"].as_str().unwrap_or(""), p["architecture"].as_str().unwrap_or(""));
            if let Some(variant) = p["variant"].as_str() {
                recorded = format!("{recorded}/{variant}");
            }
            trellis_model::platform::matches(&recorded, platform)
        };
        Ok(entries.iter().find(of_platform).and_then(|entry| entry["digest"].as_str()).map(str::to_owned))
    }

    /// The record `tag` of `repository` holds (see [`Registry::put_record`]): one GET; `None`
    /// when the tag serves nothing, or something that is not a trellis record.
    pub async fn record(&self, repository: &str, tag: &str) -> Result<Option<String>, EngineError> {
        let reference = Reference::with_tag(self.host.clone(), repository.to_owned(), tag.to_owned());
        let auth = match &self.credentials {
            Some((username, password)) => RegistryAuth::Basic(username.clone(), password.clone()),
            None => RegistryAuth::Anonymous,
        };
        self.count(1);
        let bytes = match self.oci.pull_manifest_raw(&reference, &auth, &[MANIFEST_MEDIA_TYPE]).await {
            Ok((bytes, _)) => bytes,
            Err(OciDistributionError::ImageManifestNotFoundError(_)) => return Ok(None),
            Err(error) => return Err(self.oci_error(error)),
        };
        let Ok(manifest) = serde_json::from_slice::<OciImageManifest>(&bytes) else { return Ok(None) };
        if manifest.artifact_type.as_deref() != Some(RECORD_ARTIFACT_TYPE) {
            return Ok(None);
        }
        Ok(manifest.annotations.and_then(|mut a| a.remove(RECORD_ANNOTATION)))
    }

    /// Puts `record` (JSON) under `repository:tag` as an OCI artifact: a manifest of type
    /// [`RECORD_ARTIFACT_TYPE`] whose config and only layer are the empty descriptor, the
    /// record in its annotation [`RECORD_ANNOTATION`]. The manifest GET that reads it back is
    /// one request; nothing in it is an image layer a client could pull by mistake.
    pub async fn put_record(&self, repository: &str, tag: &str, record: &str) -> Result<(), EngineError> {
        if !matches!(self.find(repository, EMPTY_DIGEST, &[]).await?, Found::Held(_)) {
            self.access(repository, false).await?;
            self.count(2);
            (self.oci.push_blob(&self.blobs(repository), EMPTY_JSON.as_bytes().to_vec(), EMPTY_DIGEST).await)
                .map_err(|error| self.oci_error(error))?;
        }
        let empty = OciDescriptor {
            media_type: EMPTY_MEDIA_TYPE.to_owned(),
            digest: EMPTY_DIGEST.to_owned(),
            size: EMPTY_JSON.len() as i64,
            ..Default::default()
        };
        let manifest = OciImageManifest {
            schema_version: 2,
            media_type: Some(MANIFEST_MEDIA_TYPE.to_owned()),
            config: empty.clone(),
            layers: vec![empty],
            subject: None,
            artifact_type: Some(RECORD_ARTIFACT_TYPE.to_owned()),
            annotations: Some(std::collections::BTreeMap::from([(RECORD_ANNOTATION.to_owned(), record.to_owned())])),
        };
        let bytes = serde_json::to_vec(&manifest).expect("a manifest serializes");
        self.put_manifest(repository, tag, bytes, MANIFEST_MEDIA_TYPE).await
    }

    /// Requests sent and blob bytes uploaded so far.
    pub fn stats(&self) -> RegistryStats {
        RegistryStats {
            requests: self.requests.load(Ordering::Relaxed),
            uploaded_bytes: self.uploaded_bytes.load(Ordering::Relaxed),
        }
    }

    /// Whether `repository` holds `blob`, or a repository of `mount_from` does and it was
    /// mounted. A held blob costs one HEAD; a mounted one, a HEAD in each repository and the
    /// mount.
    async fn find(&self, repository: &str, blob: &str, mount_from: &[String]) -> Result<Found, EngineError> {
        if let Some(size) = self.blob_size(repository, blob).await? {
            return Ok(Found::Held(size));
        }
        for source in mount_from.iter().filter(|source| *source != repository) {
            if let Some(size) = self.blob_size(source, blob).await?
                && self.mount(repository, source, blob).await?
            {
                return Ok(Found::Mounted { size, from: source.clone() });
            }
        }
        Ok(Found::Missing)
    }

    async fn blob_size(&self, repository: &str, blob: &str) -> Result<Option<u64>, EngineError> {
        let Some(headers) = self.head(repository, &format!("blobs/{blob}")).await? else { return Ok(None) };
        let size = headers.get("Content-Length").and_then(|value| value.to_str().ok()?.parse().ok());
        // Not `Response::content_length`: it says 0 for any HEAD.
        size.map(Some).ok_or_else(|| {
            EngineError::Failed(format!("registry {}: {repository} has {blob} without a size", self.host))
        })
    }

    /// Mounts `blob` from `source`: false when the registry opened an upload session instead
    /// (202: it would not mount, as bearer registries do for a token of one repository).
    async fn mount(&self, repository: &str, source: &str, blob: &str) -> Result<bool, EngineError> {
        self.access(repository, false).await?;
        self.count(1);
        match self.oci.mount_blob(&self.blobs(repository), &self.blobs(source), blob).await {
            Ok(()) => Ok(true),
            Err(OciDistributionError::SpecViolationError(_)) => Ok(false),
            Err(error) => Err(self.oci_error(error)),
        }
    }

    /// Uploads `blob` from the export, monolithically (POST + PUT): returns its size.
    async fn upload(&self, repository: &str, export: &Export, blob: &str) -> Result<u64, EngineError> {
        let (stream, size) = export.read(blob).await?;
        self.access(repository, false).await?;
        self.count(2);
        self.oci
            .push_blob_stream(&self.blobs(repository), stream, blob, Some(size))
            .await
            .map_err(|error| self.oci_error(error))?;
        self.uploaded_bytes.fetch_add(size, Ordering::Relaxed);
        Ok(size)
    }

    /// PUTs a manifest or index under `reference`: a digest (`sha256:…`) or a tag.
    async fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        bytes: Vec<u8>,
        media_type: &'static str,
    ) -> Result<(), EngineError> {
        let target = match reference.contains(':') {
            true => Reference::with_digest(self.host.clone(), repository.to_owned(), reference.to_owned()),
            false => Reference::with_tag(self.host.clone(), repository.to_owned(), reference.to_owned()),
        };
        self.access(repository, false).await?;
        self.count(1);
        self.oci
            .push_manifest_raw(&target, bytes, http::HeaderValue::from_static(media_type))
            .await
            .map(drop)
            .map_err(|error| self.oci_error(error))
    }

    /// One HEAD on `/v2/<repository>/<path>`: the answer's headers, `None` for a 404. A bearer
    /// token the registry no longer accepts is renewed once.
    async fn head(&self, repository: &str, path: &str) -> Result<Option<http::HeaderMap>, EngineError> {
        let url = format!("{}/{repository}/{path}", self.api);
        let mut renew = false;
        loop {
            let access = self.access(repository, renew).await?;
            // Blobs ignore the Accept header; manifests need it.
            let request = self.http.head(&url).header(http::header::ACCEPT, MANIFEST_ACCEPT);
            let request = match &access {
                Access::Anonymous => request,
                Access::Basic { username, password } => request.basic_auth(username, Some(password)),
                Access::Bearer(token) => request.bearer_auth(token),
            };
            self.count(1);
            let response = request.send().await.map_err(|error| self.http_error(&error))?;
            match response.status().as_u16() {
                200 => return Ok(Some(response.headers().clone())),
                404 => return Ok(None),
                401 if matches!(access, Access::Bearer(_)) && !renew => renew = true,
                status @ (401 | 403) => return Err(EngineError::Unauthorized(format!("{url} (HTTP {status})"))),
                status => return Err(EngineError::Failed(format!("HEAD {url} answered HTTP {status}"))),
            }
        }
    }

    /// How `repository`'s requests are authorized, settled on first use (or anew, `renew`).
    async fn access(&self, repository: &str, renew: bool) -> Result<Access, EngineError> {
        let mut known = self.access.lock().await;
        if !renew && let Some(access) = known.get(repository) {
            return Ok(access.clone());
        }
        let access = self.authorize(repository).await?;
        known.insert(repository.to_owned(), access.clone());
        Ok(access)
    }

    /// oci-client's auth flow asks the registry (`GET /v2/`) which scheme it wants and, for a
    /// bearer token, exchanges the credentials for a pull-and-push token of `repository`, which
    /// it keeps for its own requests. Basic credentials are kept for its requests here: it
    /// would ask `/v2/` again before each one of a registry that wants none.
    async fn authorize(&self, repository: &str) -> Result<Access, EngineError> {
        let Some((username, password)) = &self.credentials else { return Ok(Access::Anonymous) };
        let reference = self.blobs(repository);
        let credentials = RegistryAuth::Basic(username.clone(), password.clone());
        self.count(1);
        let token = self
            .oci
            .auth(&reference, &credentials, RegistryOperation::Push)
            .await
            .map_err(|error| self.oci_error(error))?;
        match token {
            Some(token) => {
                self.count(1);
                Ok(Access::Bearer(token))
            }
            None => {
                let basic = RegistryTokenType::Basic(username.clone(), password.clone());
                self.oci.tokens.insert(&reference, RegistryOperation::Push, basic).await;
                Ok(Access::Basic { username: username.clone(), password: password.clone() })
            }
        }
    }

    /// A reference to `repository` for blob requests (which use only its host and repository).
    fn blobs(&self, repository: &str) -> Reference {
        Reference::with_tag(self.host.clone(), repository.to_owned(), "latest".to_owned())
    }

    fn count(&self, requests: u64) {
        self.requests.fetch_add(requests, Ordering::Relaxed);
    }

    /// A connection refused, reset, closed mid-answer or timed out is `Unreachable` (the
    /// executor retries); anything else `Failed`.
    fn http_error(&self, error: &reqwest::Error) -> EngineError {
        let mut message = format!("registry {}: {error}", self.host);
        let mut lost = error.is_connect() || error.is_timeout();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            let io = cause.downcast_ref::<std::io::Error>().map(std::io::Error::kind);
            lost |= matches!(
                io,
                Some(
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::TimedOut
                )
            );
            lost |= cause.downcast_ref::<hyper::Error>().is_some_and(|h| h.is_incomplete_message() || h.is_closed());
            source = cause.source();
        }
        match lost {
            true => EngineError::Unreachable(message),
            false => EngineError::Failed(message),
        }
    }

    /// HTTP 401 and 403, and a registry's `UNAUTHORIZED` and `DENIED`, are `Unauthorized`.
    fn oci_error(&self, error: OciDistributionError) -> EngineError {
        use OciDistributionError as E;
        let refused = match &error {
            E::RequestError(error) => return self.http_error(error),
            E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => true,
            E::ServerError { code, .. } => matches!(code, 401 | 403),
            E::RegistryError { envelope, .. } => {
                envelope.errors.iter().any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            }
            _ => false,
        };
        let message = format!("registry {}: {error}", self.host);
        match refused {
            true => EngineError::Unauthorized(message),
            false => EngineError::Failed(message),
        }
    }
}

/// The OCI manifest of an image: its config, then its layers as the engine exports them.
fn image_manifest(config: &str, diff_ids: &[String], sizes: &HashMap<&str, u64>) -> OciImageManifest {
    let descriptor = |media_type: &str, digest: &str| OciDescriptor {
        media_type: media_type.to_owned(),
        digest: digest.to_owned(),
        size: sizes[digest] as i64,
        ..Default::default()
    };
    OciImageManifest {
        schema_version: 2,
        media_type: Some(MANIFEST_MEDIA_TYPE.to_owned()),
        config: descriptor(manifest::IMAGE_CONFIG_MEDIA_TYPE, config),
        layers: diff_ids.iter().map(|diff_id| descriptor(manifest::IMAGE_LAYER_MEDIA_TYPE, diff_id)).collect(),
        ..Default::default()
    }
}

/// The engine's export of one image in a temporary file (removed on drop), and where each
/// blob lies in it.
struct Export {
    path: tempfile::TempPath,
    blobs: HashMap<String, Entry>,
}

/// A file's bytes inside the export tar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    offset: u64,
    size: u64,
}

impl Export {
    async fn of(docker: &DockerClient, image_id: &str, diff_ids: &[String]) -> Result<Self, EngineError> {
        let failed = |e: std::io::Error| EngineError::Failed(format!("cannot keep the export of {image_id}: {e}"));
        let (file, path) = tempfile::NamedTempFile::new().map_err(failed)?.into_parts();
        docker.export_image(image_id, &mut tokio::fs::File::from_std(file)).await?;
        let (config, diff_ids) = (image_id.to_owned(), diff_ids.to_vec());
        let tar = path.to_path_buf();
        let blobs = tokio::task::spawn_blocking(move || locate_blobs(&tar, &config, &diff_ids))
            .await
            .map_err(|e| EngineError::Failed(e.to_string()))?
            .map_err(|e| EngineError::Failed(format!("the export of {image_id}: {e}")))?;
        Ok(Self { path, blobs })
    }

    /// A blob's bytes as a stream, and its size.
    async fn read(
        &self,
        blob: &str,
    ) -> Result<(impl futures_util::Stream<Item = oci_client::errors::Result<bytes::Bytes>> + use<>, u64), EngineError>
    {
        let failed = |e: std::io::Error| EngineError::Failed(format!("cannot read the export: {e}"));
        let Some(entry) = self.blobs.get(blob) else {
            return Err(EngineError::Failed(format!("the engine's export has no {blob}")));
        };
        let mut file = tokio::fs::File::open(&self.path).await.map_err(failed)?;
        file.seek(SeekFrom::Start(entry.offset)).await.map_err(failed)?;
        let stream = tokio_util::io::ReaderStream::with_capacity(file.take(entry.size), 1 << 20);
        Ok((stream.map_err(OciDistributionError::IoError), entry.size))
    }
}

/// Where the config and each layer lie in a `docker save` tar. Its `manifest.json` names their
/// entries, layers in the order of the image's diff IDs. A layer that repeats is saved once, and
/// its repeats as symbolic links to it: the first is kept.
fn locate_blobs(tar: &Path, config: &str, diff_ids: &[String]) -> Result<HashMap<String, Entry>, String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Saved {
        config: String,
        layers: Vec<String>,
    }
    let mut archive = tar::Archive::new(std::fs::File::open(tar).map_err(|e| e.to_string())?);
    let mut files = HashMap::new();
    let mut saved = None;
    for entry in archive.entries_with_seek().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let name = entry.path().map_err(|e| e.to_string())?.to_string_lossy().into_owned();
        if name == "manifest.json" {
            let mut json = Vec::new();
            entry.read_to_end(&mut json).map_err(|e| e.to_string())?;
            saved = Some(json);
        } else if entry.header().entry_type().is_file() {
            files.insert(name, Entry { offset: entry.raw_file_position(), size: entry.size() });
        }
    }
    let saved: Vec<Saved> = serde_json::from_slice(&saved.ok_or("no manifest.json")?).map_err(|e| e.to_string())?;
    let [saved] = saved.as_slice() else { return Err(format!("{} images, not one", saved.len())) };
    if saved.layers.len() != diff_ids.len() {
        return Err(format!("{} layers, the image has {}", saved.layers.len(), diff_ids.len()));
    }
    let config_entry = files.get(&saved.config).ok_or_else(|| format!("no {}", saved.config))?;
    let mut blobs = HashMap::from([(config.to_owned(), *config_entry)]);
    for (diff_id, path) in diff_ids.iter().zip(&saved.layers) {
        if let Some(entry) = files.get(path) {
            blobs.entry(diff_id.clone()).or_insert(*entry);
        }
    }
    Ok(blobs)
}

/// The docker daemon's default insecure registries: `localhost`, 127.0.0.0/8 and `::1`.
fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or(bracketed),
        None => match registry.rsplit_once(':') {
            Some((host, _port)) if !host.contains(':') => host,
            _ => registry,
        },
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn sha256(bytes: &[u8]) -> String {
    let hash = sha2::Sha256::digest(bytes);
    let hex: String = hash.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("sha256:{hex}")
}

/// `sha256:0123456789ab…` → `0123456789ab`, for progress lines.
fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.get(..12).unwrap_or(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pushed(digest: &str, architecture: &str, variant: Option<&str>) -> PushedImage {
        PushedImage {
            digest: digest.to_owned(),
            size: 123,
            media_type: MANIFEST_MEDIA_TYPE.to_owned(),
            platform: Platform {
                os: "linux".to_owned(),
                architecture: architecture.to_owned(),
                variant: variant.map(str::to_owned),
            },
            uploaded_bytes: 0,
        }
    }

    #[test]
    fn an_index_is_the_same_bytes_for_the_same_manifests() {
        let images = [pushed("sha256:aa", "amd64", None), pushed("sha256:bb", "arm64", Some("v8"))];
        let index = ImageIndex::of(&images);
        assert_eq!(
            String::from_utf8(index.bytes.clone()).unwrap(),
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa","size":123,"platform":{"architecture":"amd64","os":"linux"}},{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bb","size":123,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}}]}"#
        );
        assert_eq!(index.digest, sha256(&index.bytes));
        assert_eq!(index, ImageIndex::of(&images.clone()));
        assert_ne!(index.digest, ImageIndex::of(&[images[1].clone(), images[0].clone()]).digest, "order matters");
    }

    #[test]
    fn a_manifest_names_the_config_and_the_layers_as_exported() {
        let diff_ids = ["sha256:l1".to_owned(), "sha256:l2".to_owned(), "sha256:l1".to_owned()];
        let sizes = HashMap::from([("sha256:cfg", 7), ("sha256:l1", 1024), ("sha256:l2", 2048)]);
        let json = serde_json::to_string(&image_manifest("sha256:cfg", &diff_ids, &sizes)).unwrap();
        assert_eq!(
            json,
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:cfg","size":7},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:l1","size":1024},{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:l2","size":2048},{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:l1","size":1024}]}"#
        );
    }

    #[test]
    fn platforms_read_as_docker_writes_them() {
        assert_eq!(pushed("d", "amd64", None).platform.to_string(), "linux/amd64");
        assert_eq!(pushed("d", "arm", Some("v7")).platform.to_string(), "linux/arm/v7");
    }

    #[test]
    fn loopback_registries_are_plain_http() {
        for local in ["localhost", "localhost:5000", "127.0.0.1:5000", "127.1.2.3", "[::1]:5000", "::1"] {
            assert!(is_loopback(local), "{local}");
        }
        for remote in ["ghcr.io", "registry.example:5000", "10.0.0.1:5000", "[fe80::1]:5000", "localhost.example"] {
            assert!(!is_loopback(remote), "{remote}");
        }
    }

    #[test]
    fn the_export_is_located_through_its_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let tar_path = dir.path().join("export.tar");
        let mut builder = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
        let mut add_file = |name: &str, data: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            builder.append_data(&mut header, name, data).unwrap();
        };
        add_file("a/layer.tar", b"first layer");
        add_file("cfg.json", b"{}");
        let manifest = r#"[{"Config":"cfg.json","RepoTags":null,"Layers":["a/layer.tar","b/layer.tar"]}]"#;
        add_file("manifest.json", manifest.as_bytes());
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        builder.append_link(&mut link, "b/layer.tar", "../a/layer.tar").unwrap();
        builder.into_inner().unwrap();

        let diff_ids = ["sha256:same".to_owned(), "sha256:same".to_owned()];
        let blobs = locate_blobs(&tar_path, "sha256:cfg", &diff_ids).unwrap();
        let bytes = std::fs::read(&tar_path).unwrap();
        let read = |entry: Entry| &bytes[entry.offset as usize..(entry.offset + entry.size) as usize];
        assert_eq!(read(blobs["sha256:same"]), b"first layer");
        assert_eq!(read(blobs["sha256:cfg"]), b"{}");
        assert_eq!(blobs.len(), 2);
        let wrong = locate_blobs(&tar_path, "sha256:cfg", &diff_ids[..1]).unwrap_err();
        assert!(wrong.contains("2 layers"), "{wrong}");
    }
}
