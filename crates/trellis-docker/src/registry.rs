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
//! **What is pushed** is `publish.rs`'s: the one push path, compressed and deterministic.
//! Manifests and indexes are serialized by serde_json: fields in declaration order, no maps;
//! the same manifests in the same order give the same bytes.
//!
//! **Few requests.** A blob the registry holds is not sent: blobs are asked for first (one
//! HEAD each), and the engine exports the image only when one is missing; a blob another
//! repository of `mount_from` holds is mounted, not uploaded. Uploads are
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
//! an expired bearer token by itself: [`Registry::stats`] does not count those requests.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{self, OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::token_cache::RegistryTokenType;
use oci_client::{Reference, RegistryOperation};

use crate::credentials::DockerCredentials;
use crate::errors::EngineError;

const MANIFEST_MEDIA_TYPE: &str = manifest::OCI_IMAGE_MEDIA_TYPE;

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
    /// One lock per blob digest: concurrent pushes sharing a layer upload it once, one after
    /// the other finding it held (distribution's storage fails one of two simultaneous uploads
    /// of a digest: `DIGEST_INVALID`, or a manifest whose blob is unknown).
    blobs: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
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

/// What a variant's references serve, serialized once: an OCI image index, or one image's
/// manifest. Its digest is the digest of these bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageIndex {
    pub digest: String,
    pub bytes: Vec<u8>,
    pub media_type: String,
}

/// Requests sent and blob bytes uploaded by one [`Registry`] so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryStats {
    pub requests: u64,
    pub uploaded_bytes: u64,
}

/// Where the registry found a blob, or did not.
pub(crate) enum Found {
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
            blobs: std::sync::Mutex::default(),
            requests: AtomicU64::new(0),
            uploaded_bytes: AtomicU64::new(0),
        }
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
        self.put_manifest_bytes(repository, tag, index.bytes.clone(), &index.media_type).await?;
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
        let auth = self.auth();
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
        let auth = self.auth();
        self.count(1);
        let bytes = match self.oci.pull_manifest_raw(&reference, &auth, &[MANIFEST_MEDIA_TYPE]).await {
            Ok((bytes, _)) => bytes,
            Err(error) if unknown(&error) => return Ok(None),
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
        self.put_manifest_bytes(repository, tag, bytes, MANIFEST_MEDIA_TYPE).await
    }

    /// Held while `digest` is looked for and uploaded: another push of the same blob waits,
    /// then finds it held.
    pub(crate) async fn blob_turn(&self, digest: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut blobs = self.blobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            blobs.entry(digest.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
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
    pub(crate) async fn find(&self, repository: &str, blob: &str, mount_from: &[String]) -> Result<Found, EngineError> {
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

    /// Uploads `blob` (`size` bytes from `stream`), monolithically (POST + PUT).
    pub(crate) async fn upload_stream(
        &self,
        repository: &str,
        blob: &str,
        stream: impl futures_util::Stream<Item = oci_client::errors::Result<bytes::Bytes>> + Send + 'static,
        size: u64,
    ) -> Result<(), EngineError> {
        self.access(repository, false).await?;
        self.count(2);
        self.oci
            .push_blob_stream(&self.blobs(repository), stream, blob, Some(size))
            .await
            .map_err(|error| self.oci_error(error))?;
        self.uploaded_bytes.fetch_add(size, Ordering::Relaxed);
        Ok(())
    }

    /// The bytes of the manifest `repository@digest` (one GET), `None` when it has none.
    pub(crate) async fn manifest_bytes(&self, repository: &str, digest: &str) -> Result<Option<Vec<u8>>, EngineError> {
        let reference = Reference::with_digest(self.host.clone(), repository.to_owned(), digest.to_owned());
        let auth = self.auth();
        let accepted = MANIFEST_ACCEPT.split(", ").map(str::trim).collect::<Vec<_>>();
        self.access(repository, false).await?;
        self.count(1);
        match self.oci.pull_manifest_raw(&reference, &auth, &accepted).await {
            Ok((bytes, _)) => Ok(Some(bytes.to_vec())),
            Err(error) if unknown(&error) => Ok(None),
            Err(error) => Err(self.oci_error(error)),
        }
    }

    /// PUTs a manifest of any media type by its digest.
    pub(crate) async fn put_manifest_bytes(
        &self,
        repository: &str,
        reference: &str,
        bytes: Vec<u8>,
        media_type: &str,
    ) -> Result<(), EngineError> {
        let target = match reference.contains(':') {
            true => Reference::with_digest(self.host.clone(), repository.to_owned(), reference.to_owned()),
            false => Reference::with_tag(self.host.clone(), repository.to_owned(), reference.to_owned()),
        };
        let content_type = http::HeaderValue::from_str(media_type)
            .map_err(|_| EngineError::Failed(format!("the media type {media_type:?} is not a header value")))?;
        self.access(repository, false).await?;
        self.count(1);
        self.oci.push_manifest_raw(&target, bytes, content_type).await.map(drop).map_err(|error| self.oci_error(error))
    }

    /// One HEAD on `/v2/<repository>/<path>`: the answer's headers, `None` for a 404. A bearer
    /// token the registry no longer accepts is renewed once. A server error is asked again
    /// twice, after 0.1 s and 0.4 s: distribution answers 500 ("invalid checksum digest
    /// format") to a HEAD that reads a repository's link to a blob while another client writes
    /// it (a mount or an upload of the same layer, from another run or runner).
    async fn head(&self, repository: &str, path: &str) -> Result<Option<http::HeaderMap>, EngineError> {
        let url = format!("{}/{repository}/{path}", self.api);
        let mut renew = false;
        let mut server_errors = 0;
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
                500..=599 if server_errors < 2 => {
                    server_errors += 1;
                    tokio::time::sleep(Duration::from_millis(100 * 4u64.pow(server_errors - 1))).await;
                }
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

    /// The credentials as oci-client takes them for a request of its own.
    fn auth(&self) -> RegistryAuth {
        match &self.credentials {
            Some((username, password)) => RegistryAuth::Basic(username.clone(), password.clone()),
            None => RegistryAuth::Anonymous,
        }
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

/// A registry's "no such manifest" (or no such repository), in any of the ways oci-client
/// reports it.
fn unknown(error: &OciDistributionError) -> bool {
    match error {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope.errors.iter().any(|e| matches!(e.code, OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown))
        }
        _ => false,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_plain_http() {
        for local in ["localhost", "localhost:5000", "127.0.0.1:5000", "127.1.2.3", "[::1]:5000", "::1"] {
            assert!(is_loopback(local), "{local}");
        }
        for remote in ["ghcr.io", "registry.example:5000", "10.0.0.1:5000", "[fe80::1]:5000", "localhost.example"] {
            assert!(!is_loopback(remote), "{remote}");
        }
    }
}
