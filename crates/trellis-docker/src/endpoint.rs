//! Where the engine listens (`DOCKER_HOST`, else the local socket), read once at connect:
//! bollard connects there, and each BuildKit build opens its own HTTP/1 connection there.
//!
//! Why a connection of its own (measured with bollard 0.21 against dockerd 20.10):
//! - without bollard's `buildkit` feature, `build_image` decodes each message's `aux` as an
//!   image ID, so the first `moby.buildkit.trace` (a base64 string) ends the stream with
//!   "Failed to deserialize JSON: invalid type: string";
//! - with `buildkit_providerless` (which also needs `time` or `chrono`), `build_image` refuses
//!   a BuildKit build without a gRPC session, and the feature compiles 48 more crates (tonic,
//!   axum, h2, prost, rustls, …): a cold `cargo build -p trellis-docker` went from 177 crates
//!   in 198 s to 225 in 374 s, and switching it on in a warm tree rebuilt 127 crates (179 s),
//!   on 2 busy cores.
//!
//! The raw stream needs hyper, hyper-util and http-body-util with the features bollard
//! already builds them with (no compile time), a base64 protobuf reader for four messages
//! (`buildkit_status.rs`), and this file.

use std::io;
use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// An engine address this crate can open connections to itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `unix:///var/run/docker.sock`
    Unix(PathBuf),
    /// `tcp://host:2375` or `http://host:2375` (plain HTTP, as bollard without TLS).
    Tcp(String),
}

/// A connection's request side; the connection closes when this and every response body of
/// it are dropped (a dropped BuildKit build is then cancelled by the engine).
pub(crate) struct Connection {
    pub sender: SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Endpoint {
    /// `DOCKER_HOST` as bollard reads it; `None` for schemes this crate does not speak
    /// (`ssh://`, `npipe://`, TLS).
    pub(crate) fn parse(host: &str) -> Option<Self> {
        if let Some(path) = host.strip_prefix("unix://") {
            return Some(Self::Unix(PathBuf::from(path)));
        }
        let address = host.strip_prefix("tcp://").or_else(|| host.strip_prefix("http://"))?;
        Some(Self::Tcp(address.trim_end_matches('/').to_owned()))
    }

    /// The `Host` header requests carry (the daemon ignores it on a socket).
    pub(crate) fn host_header(&self) -> &str {
        match self {
            Self::Unix(_) => "docker",
            Self::Tcp(address) => address,
        }
    }

    pub(crate) async fn connect(&self) -> io::Result<Connection> {
        match self {
            Self::Unix(path) => handshake(tokio::net::UnixStream::connect(path).await?).await,
            Self::Tcp(address) => handshake(tokio::net::TcpStream::connect(address.as_str()).await?).await,
        }
    }
}

async fn handshake<S>(stream: S) -> io::Result<Connection>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(io::Error::other)?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(Connection { sender, driver })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_host_schemes() {
        assert_eq!(Endpoint::parse("unix:///var/run/docker.sock"), Some(Endpoint::Unix("/var/run/docker.sock".into())));
        assert_eq!(Endpoint::parse("tcp://10.0.0.2:2375"), Some(Endpoint::Tcp("10.0.0.2:2375".to_owned())));
        assert_eq!(Endpoint::parse("http://localhost:2375/"), Some(Endpoint::Tcp("localhost:2375".to_owned())));
        assert_eq!(Endpoint::parse("ssh://me@host"), None);
    }
}
