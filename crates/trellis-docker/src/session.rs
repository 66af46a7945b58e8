//! A BuildKit session that serves one build's context and Dockerfile, the way the docker CLI's
//! BuildKit builds reach the engine: `POST /session` upgrades a connection to HTTP/2, on which
//! trellis is the gRPC server and the engine's BuildKit the client; the build itself
//! (`POST /build?version=2&remote=client-session&session=<id>`) then carries no body, and its
//! Dockerfile front end asks the session for two directories over `moby.filesync.v1.FileSync/
//! DiffCopy`: `dockerfile` (the rendered Dockerfile) and `context` (the build context).
//!
//! Why not the tar body every engine took before: on the containerd image store (Docker 26
//! with `containerd-snapshotter`, the default of Engine 29 and Docker Desktop) BuildKit cannot
//! read a tar body at all (`load remote build context … Get "http://build-context-<id>": no
//! such host`). The session works on every engine trellis supports (dockerd 20.10's BuildKit
//! 0.8.4 included), so it is the one way BuildKit builds get their context; what is served is
//! exactly the [`ContextWalk`] the key hashed, as the tar was.
//!
//! The DiffCopy protocol is fsutil's (tonistiigi/fsutil `send.go`), the sender side: one
//! `STAT` packet per entry in fsutil's walk order (a directory, then what is in it, names in
//! byte order; parents before children) whose index is the file's id, an empty `STAT` to end
//! the listing; then for each `REQ` the file's bytes as `DATA` packets and an empty `DATA`;
//! `FIN` is answered with `FIN`. Modes are Go's `os.FileMode` (type bits high). Times are fixed
//! (as the tar's were) so that the same inputs give the same layers anywhere; each session has
//! a key of its own, so BuildKit keeps no earlier copy to compare those times against (a file
//! changed at the same size would otherwise look unchanged) and asks for every file.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bollard_buildkit_proto::fsutil::types::packet::PacketType;
use bollard_buildkit_proto::fsutil::types::{Packet, Stat};
use bollard_buildkit_proto::health::health_check_response::ServingStatus;
use bollard_buildkit_proto::health::health_server::{Health, HealthServer};
use bollard_buildkit_proto::health::{HealthCheckRequest, HealthCheckResponse, HealthListRequest, HealthListResponse};
use bollard_buildkit_proto::moby::filesync::v1::file_sync_server::{FileSync, FileSyncServer};
use bytes::Bytes;
use futures_util::Stream;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use trellis_graph::{ContextWalk, EntryKind};

use crate::endpoint::Endpoint;
use crate::errors::EngineError;

/// The name the Dockerfile is served under in the `dockerfile` directory (the build's
/// `dockerfile` parameter).
pub(crate) const DOCKERFILE: &str = "Dockerfile";

/// File times in what is served: 2000-01-01, as the context tar had (reproducible-build tools
/// use it rather than the epoch, which some tools reject), in nanoseconds.
const MTIME_NANOS: i64 = 946_684_800 * 1_000_000_000;

/// fsutil sends file data in 32 KiB packets.
const CHUNK: usize = 32 * 1024;

/// Go's `os.FileMode` type bits.
const GO_MODE_DIR: u32 = 1 << 31;
const GO_MODE_SYMLINK: u32 = 1 << 27;

/// What the session serves, by directory name.
#[derive(Debug, Clone)]
pub(crate) struct ServedFiles {
    /// The build context (`None`: an empty one).
    pub context: Option<ContextWalk>,
    /// The Dockerfile's text.
    pub dockerfile: String,
}

/// An open session: served until dropped (after the build's stream ended).
pub(crate) struct Session {
    pub id: String,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Session {
    /// Opens a session on the engine and serves `files` on it.
    pub(crate) async fn open(endpoint: &Endpoint, api_version: &str, files: ServedFiles) -> Result<Self, EngineError> {
        let id = session_id();
        let mut request = http::Request::post(format!("/v{api_version}/session"))
            .header(http::header::HOST, endpoint.host_header())
            .header(http::header::CONNECTION, "Upgrade")
            .header(http::header::UPGRADE, "h2c")
            .header("X-Docker-Expose-Session-Uuid", &id)
            .header("X-Docker-Expose-Session-Name", "trellis")
            // One key per session: BuildKit keeps no copy of an earlier session's files (see
            // the module docs).
            .header("X-Docker-Expose-Session-Sharedkey", &id);
        for method in SERVED_METHODS {
            request = request.header("X-Docker-Expose-Session-Grpc-Method", *method);
        }
        let request = request.body(Full::new(Bytes::new())).map_err(|e| EngineError::Failed(e.to_string()))?;
        let upgraded = endpoint.upgrade(request).await.map_err(|error| match error {
            Ok((status, body)) => {
                EngineError::Failed(format!("the engine refused a BuildKit session (HTTP {status}): {body}"))
            }
            Err(why) => EngineError::Unreachable(why),
        })?;
        let io = SessionIo(TokioIo::new(upgraded));
        let files = Arc::new(files);
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(HealthServer::new(Healthy))
                .add_service(FileSyncServer::new(Served(files)))
                .serve_with_incoming(futures_util::stream::iter([Ok::<_, io::Error>(io)]))
                .await;
        });
        Ok(Self { id, server })
    }
}

/// The gRPC methods the session offers (the engine calls nothing else).
const SERVED_METHODS: &[&str] =
    &["/moby.filesync.v1.FileSync/DiffCopy", "/moby.filesync.v1.FileSync/TarStream", "/grpc.health.v1.Health/Check"];

/// 25 characters of `[a-z0-9]`, as BuildKit's own identities.
fn session_id() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut id = String::with_capacity(25);
    while id.len() < 25 {
        // RandomState is seeded per instance from the OS: no extra crate for 25 characters.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
        );
        let mut n = hasher.finish();
        for _ in 0..12 {
            id.push(char::from_digit((n % 36) as u32, 36).unwrap_or('0'));
            n /= 36;
        }
    }
    id.truncate(25);
    id
}

/// The upgraded connection, as tonic's server takes a connection.
struct SessionIo(TokioIo<hyper::upgrade::Upgraded>);

impl tonic::transport::server::Connected for SessionIo {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for SessionIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SessionIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The engine checks the session's health while it lasts.
struct Healthy;

type PacketStream = Pin<Box<dyn Stream<Item = Result<Packet, Status>> + Send>>;
type HealthStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for Healthy {
    async fn check(&self, _: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(HealthCheckResponse { status: ServingStatus::Serving as i32 }))
    }

    async fn list(&self, _: Request<HealthListRequest>) -> Result<Response<HealthListResponse>, Status> {
        Err(Status::unimplemented("list"))
    }

    type WatchStream = HealthStream;

    async fn watch(&self, _: Request<HealthCheckRequest>) -> Result<Response<HealthStream>, Status> {
        Err(Status::unimplemented("watch"))
    }
}

struct Served(Arc<ServedFiles>);

#[tonic::async_trait]
impl FileSync for Served {
    type DiffCopyStream = PacketStream;

    async fn diff_copy(&self, request: Request<Streaming<Packet>>) -> Result<Response<PacketStream>, Status> {
        let metadata = request.metadata();
        let values = |key: &str| -> Vec<String> {
            metadata.get_all(key).iter().filter_map(|v| v.to_str().ok()).map(str::to_owned).collect()
        };
        let dir = values("dir-name").into_iter().next().unwrap_or_default();
        let filter = Filter {
            follow: values("followpaths"),
            include: values("include-patterns"),
            exclude: values("exclude-patterns"),
        };
        let entries = match dir.as_str() {
            "dockerfile" => vec![Entry::bytes(DOCKERFILE, self.0.dockerfile.clone().into_bytes())],
            "context" => match &self.0.context {
                Some(walk) => context_entries(walk),
                None => Vec::new(),
            },
            other => return Err(Status::not_found(format!("no access allowed to dir {other:?}"))),
        };
        let entries = filter.apply(entries).map_err(Status::invalid_argument)?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(send(entries, request.into_inner(), tx));
        Ok(Response::new(Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|packet| (packet, rx))
        }))))
    }

    type TarStreamStream = PacketStream;

    async fn tar_stream(&self, _: Request<Streaming<Packet>>) -> Result<Response<PacketStream>, Status> {
        Err(Status::unimplemented("trellis serves contexts by DiffCopy"))
    }
}

/// One entry of a served directory.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    stat: Stat,
    content: Content,
}

#[derive(Debug, Clone, PartialEq)]
enum Content {
    None,
    File(PathBuf),
    Bytes(Vec<u8>),
}

impl Entry {
    fn bytes(path: &str, bytes: Vec<u8>) -> Self {
        let stat = Stat {
            path: path.to_owned(),
            mode: 0o644,
            size: bytes.len() as i64,
            mod_time: MTIME_NANOS,
            ..Default::default()
        };
        Self { stat, content: Content::Bytes(bytes) }
    }

    fn directory(path: &str) -> Self {
        let stat =
            Stat { path: path.to_owned(), mode: GO_MODE_DIR | 0o755, mod_time: MTIME_NANOS, ..Default::default() };
        Self { stat, content: Content::None }
    }
}

/// The walk's entries in fsutil's order, every parent directory listed before what it holds.
fn context_entries(walk: &ContextWalk) -> Vec<Entry> {
    let mut entries: Vec<Entry> = walk
        .entries
        .iter()
        .map(|entry| {
            let mut stat = Stat { path: entry.path.clone(), mod_time: MTIME_NANOS, ..Default::default() };
            let content = match entry.kind {
                EntryKind::Directory => {
                    stat.mode = GO_MODE_DIR | entry.mode;
                    Content::None
                }
                EntryKind::Symlink => {
                    stat.mode = GO_MODE_SYMLINK | entry.mode;
                    stat.linkname = entry.link_target.clone().unwrap_or_default();
                    Content::None
                }
                EntryKind::File => {
                    stat.mode = entry.mode;
                    stat.size = entry.size as i64;
                    Content::File(walk.root.join(&entry.path))
                }
            };
            Entry { stat, content }
        })
        .collect();
    with_parents(&mut entries);
    entries
}

/// Adds the directories a `.dockerignore` re-inclusion left out (`!dir/file` under an
/// excluded `dir`), and sorts as fsutil walks: path components compared in byte order.
fn with_parents(entries: &mut Vec<Entry>) {
    let listed: BTreeSet<String> = entries.iter().map(|e| e.stat.path.clone()).collect();
    let mut missing = BTreeSet::new();
    for entry in entries.iter() {
        let mut path = entry.stat.path.as_str();
        while let Some((parent, _)) = path.rsplit_once('/') {
            if !listed.contains(parent) {
                missing.insert(parent.to_owned());
            }
            path = parent;
        }
    }
    entries.extend(missing.iter().map(|dir| Entry::directory(dir)));
    entries.sort_by(|a, b| a.stat.path.split('/').cmp(b.stat.path.split('/')));
}

/// What the front end asked of a directory: only some paths (`followpaths`, how it reads
/// `.dockerignore` before the context), include and exclude patterns (Docker's rules).
struct Filter {
    follow: Vec<String>,
    include: Vec<String>,
    exclude: Vec<String>,
}

impl Filter {
    fn apply(&self, entries: Vec<Entry>) -> Result<Vec<Entry>, String> {
        // Each list is a set of patterns with Docker's rules (a followpath may be a glob too:
        // the Dockerfile front end asks for `COPY`'s sources as written, `app/*.whl`); a path
        // matches when it or a directory above it does.
        let patterns = |list: &[String]| match list.is_empty() {
            true => Ok(None),
            false => trellis_graph::dockerignore::DockerIgnore::parse(&list.join("\n")).map(Some),
        };
        let follow = patterns(&self.follow).map_err(|e| e.to_string())?;
        let include = patterns(&self.include).map_err(|e| e.to_string())?;
        let exclude = patterns(&self.exclude).map_err(|e| e.to_string())?;
        let matches = |list: &Option<trellis_graph::dockerignore::DockerIgnore>, path: &str| {
            list.as_ref().is_none_or(|patterns| patterns.excludes(path))
        };
        let mut kept: Vec<Entry> = entries
            .into_iter()
            .filter(|entry| {
                let path = entry.stat.path.as_str();
                let excluded = exclude.as_ref().is_some_and(|patterns| patterns.excludes(path));
                matches(&follow, path) && matches(&include, path) && !excluded
            })
            .collect();
        // What is kept still needs the directories leading to it.
        with_parents(&mut kept);
        Ok(kept)
    }
}

/// Sends the listing, then the files the engine asks for, until it says `FIN`.
async fn send(entries: Vec<Entry>, mut incoming: Streaming<Packet>, tx: mpsc::Sender<Result<Packet, Status>>) {
    let packet =
        |kind: PacketType, id: u32, stat: Option<Stat>, data: Vec<u8>| Packet { r#type: kind as i32, stat, id, data };
    let mut requestable: HashMap<u32, Content> = HashMap::new();
    for (id, entry) in entries.into_iter().enumerate() {
        let id = id as u32;
        if !matches!(entry.content, Content::None) {
            requestable.insert(id, entry.content);
        }
        if tx.send(Ok(packet(PacketType::PacketStat, id, Some(entry.stat), Vec::new()))).await.is_err() {
            return;
        }
    }
    if tx.send(Ok(packet(PacketType::PacketStat, 0, None, Vec::new()))).await.is_err() {
        return;
    }
    while let Ok(Some(request)) = incoming.message().await {
        match PacketType::try_from(request.r#type) {
            Ok(PacketType::PacketReq) => {
                let Some(content) = requestable.remove(&request.id) else {
                    let _ = tx.send(Err(Status::invalid_argument(format!("invalid file id {}", request.id)))).await;
                    return;
                };
                if let Err(error) = send_file(request.id, content, &tx).await {
                    let _ = tx.send(Ok(packet(PacketType::PacketErr, 0, None, error.to_string().into_bytes()))).await;
                    return;
                }
            }
            Ok(PacketType::PacketFin) => {
                let _ = tx.send(Ok(packet(PacketType::PacketFin, 0, None, Vec::new()))).await;
                return;
            }
            Ok(PacketType::PacketErr) => return,
            _ => {}
        }
    }
}

/// One file's bytes as `DATA` packets, then the empty `DATA` that ends it.
async fn send_file(id: u32, content: Content, tx: &mpsc::Sender<Result<Packet, Status>>) -> io::Result<()> {
    let data = |data: Vec<u8>| Ok(Packet { r#type: PacketType::PacketData as i32, stat: None, id, data });
    let closed = || io::Error::new(io::ErrorKind::BrokenPipe, "the engine closed the session");
    match content {
        Content::None => {}
        Content::Bytes(bytes) => {
            for chunk in bytes.chunks(CHUNK) {
                tx.send(data(chunk.to_vec())).await.map_err(|_| closed())?;
            }
        }
        Content::File(path) => {
            let mut file = tokio::fs::File::open(&path)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            loop {
                let mut buffer = vec![0; CHUNK];
                let read = file.read(&mut buffer).await?;
                if read == 0 {
                    break;
                }
                buffer.truncate(read);
                tx.send(data(buffer)).await.map_err(|_| closed())?;
            }
        }
    }
    tx.send(data(Vec::new())).await.map_err(|_| closed())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(entries: &[Entry]) -> Vec<&str> {
        entries.iter().map(|e| e.stat.path.as_str()).collect()
    }

    fn walk(files: &[&str]) -> (tempfile::TempDir, ContextWalk) {
        let dir = tempfile::tempdir().unwrap();
        for file in files {
            let path = dir.path().join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, format!("# {file}\n")).unwrap();
        }
        let walk = ContextWalk::new(dir.path(), &Default::default()).unwrap();
        (dir, walk)
    }

    #[test]
    fn entries_come_in_fsutil_order_parents_first() {
        let (_dir, walk) = walk(&["a.txt", "a/b", "a/c/d", "B"]);
        let entries = context_entries(&walk);
        // A directory, then what it holds, then the next name: `a/…` before `a.txt`.
        assert_eq!(paths(&entries), ["B", "a", "a/b", "a/c", "a/c/d", "a.txt"]);
        assert_eq!(entries[1].stat.mode, GO_MODE_DIR | 0o755);
        assert_eq!(entries[2].stat.mode, 0o644);
        assert_eq!(entries[2].stat.size, 6);
    }

    #[test]
    fn a_reincluded_file_gets_its_directories() {
        let (_dir, walk) = walk(&[".dockerignore", "logs/keep.log", "logs/drop.log"]);
        std::fs::write(walk.root.join(".dockerignore"), "logs\n!logs/keep.log\n").unwrap();
        let walk = ContextWalk::new(&walk.root, &Default::default()).unwrap();
        assert_eq!(paths(&context_entries(&walk)), [".dockerignore", "logs", "logs/keep.log"]);
    }

    #[test]
    fn followpaths_serve_only_what_they_name() {
        let (_dir, walk) = walk(&[".dockerignore", "app/main.js", "rootfs.tar"]);
        let filter = Filter {
            follow: vec![".dockerignore".into(), "Dockerfile.dockerignore".into()],
            include: vec![],
            exclude: vec![],
        };
        assert_eq!(paths(&filter.apply(context_entries(&walk)).unwrap()), [".dockerignore"]);
        let filter = Filter { follow: vec!["app/main.js".into()], include: vec![], exclude: vec![] };
        assert_eq!(paths(&filter.apply(context_entries(&walk)).unwrap()), ["app", "app/main.js"]);
        // As `COPY arm64/node-*.whl /tmp/node.whl` asks for its source: a glob.
        let (_wheels, wheels) = super::tests::walk(&["amd64/node-1.whl", "arm64/node-1.whl", "arm64/other.txt"]);
        let filter = Filter { follow: vec!["arm64/node-*.whl".into()], include: vec![], exclude: vec![] };
        assert_eq!(paths(&filter.apply(context_entries(&wheels)).unwrap()), ["arm64", "arm64/node-1.whl"]);
    }

    #[test]
    fn patterns_include_and_exclude_as_docker_reads_them() {
        let (_dir, walk) = walk(&["app/main.js", "app/test/x.js", "rootfs.tar"]);
        let filter = Filter { follow: vec![], include: vec!["app".into()], exclude: vec!["app/test".into()] };
        assert_eq!(paths(&filter.apply(context_entries(&walk)).unwrap()), ["app", "app/main.js"]);
    }

    #[test]
    fn session_ids_are_25_characters_and_differ() {
        let (a, b) = (session_id(), session_id());
        assert_eq!(a.len(), 25);
        assert!(a.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()), "{a}");
        assert_ne!(a, b);
    }
}
