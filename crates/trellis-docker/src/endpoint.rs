//! Where the engine listens ([`crate::engine_host`] chooses the address), and the one way this
//! crate opens a byte stream there: a unix socket, a TCP connection, or, for `ssh://`, an
//! `ssh … docker system dial-stdio` process whose stdin and stdout carry the HTTP. bollard
//! connects there, and each BuildKit build opens its own HTTP/1 connection there.
//!
//! Why BuildKit builds have a connection of their own (measured with bollard 0.21 against
//! dockerd 20.10):
//! - without bollard's `buildkit` feature, `build_image` decodes each message's `aux` as an
//!   image ID, so the first `moby.buildkit.trace` (a base64 string) ends the stream with
//!   "Failed to deserialize JSON: invalid type: string";
//! - with `buildkit_providerless` (which also needs `time` or `chrono`), `build_image` refuses
//!   a BuildKit build without a gRPC session, and the feature compiles 48 more crates (tonic,
//!   axum, h2, prost, rustls, …): a cold `cargo build -p trellis-docker` went from 177 crates
//!   in 198 s to 225 in 374 s, and switching it on in a warm tree rebuilt 127 crates (179 s),
//!   on 2 busy cores.
//!
//! Why `ssh://` is ours and not bollard's `ssh` feature: that feature runs the same remote
//! command, but through the `openssh` crate's multiplexed master session (more crates, a
//! control socket in a temp dir, and not what the docker CLI runs), and it would serve bollard
//! alone: BuildKit builds would still need their own ssh. Instead bollard takes a custom
//! transport ([`Endpoint::bollard`]): hyper-util's pooling client over [`Endpoint::open`], the
//! function BuildKit builds open their connections with. One dialer, so bollard and BuildKit
//! cannot disagree about where the engine is or how to get there.
//!
//! The ssh command is the docker CLI's (docker/cli `cli/connhelper`): `ssh -o
//! ConnectTimeout=30 -T [-l user] [-p port] -- host docker [--host=unix://path] system
//! dial-stdio`, no other options (the user's `~/.ssh/config` applies), in a session of its own
//! (a Ctrl-C at the terminal reaches trellis, which still needs the engine to clean up, and
//! not ssh) and killed should trellis die. Measured against an sshd on the loopback (2 busy
//! cores): an image inspect over a fresh ssh connection takes 287 ms (the ssh handshake and a
//! remote `docker` process), over a pooled one 0.3 ms — as fast as bollard's own unix socket
//! transport, which opens a connection per request. So bollard's ssh connections are kept
//! (idle ones close after 30 s); BuildKit builds open one each, which a build's seconds dwarf.
//!
//! The raw stream needs hyper, hyper-util and http-body-util with the features bollard
//! already builds them with (no compile time), a base64 protobuf reader for four messages
//! (`buildkit_status.rs`), and this file.

use crate::errors::with_sources;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::connect::{Connected, Connection as LegacyConnection};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An engine address this crate can open connections to itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `unix:///var/run/docker.sock`
    Unix(PathBuf),
    /// `tcp://host:2375` or `http://host:2375` (plain HTTP).
    Tcp(String),
    /// `ssh://[user@]host[:port][/socket path]`: `docker system dial-stdio` over ssh.
    Ssh(SshDestination),
}

/// An `ssh://` address, parsed as the docker CLI parses it (docker/cli `cli/connhelper/ssh`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SshDestination {
    user: Option<String>,
    host: String,
    port: Option<String>,
    /// The engine's socket on the far side, when the address names one (`ssh://host/run/x.sock`).
    socket: Option<String>,
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

/// bollard's own request timeout, which a custom transport does not get by default.
const REQUEST_TIMEOUT_SECONDS: u64 = 120;

impl Endpoint {
    /// An engine address as `DOCKER_HOST` or a context spells it. The error names the scheme
    /// when it is one trellis does not speak.
    pub(crate) fn parse(address: &str) -> Result<Self, String> {
        if let Some(path) = address.strip_prefix("unix://") {
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = address.strip_prefix("tcp://").or_else(|| address.strip_prefix("http://")) {
            let rest = rest.trim_end_matches('/');
            return match rest.is_empty() {
                true => Err(format!("{address} names no host")),
                false => Ok(Self::Tcp(rest.to_owned())),
            };
        }
        if let Some(rest) = address.strip_prefix("ssh://") {
            return SshDestination::parse(rest)
                .map(Self::Ssh)
                .map_err(|e| format!("{address} is not a valid ssh address: {e}"));
        }
        Err(match address.split_once("://") {
            Some(("https", _)) => {
                format!("{address}: trellis does not speak TLS to the engine; use ssh://, unix:// or plain tcp://")
            }
            Some((scheme, _)) => format!(
                "{address}: trellis reaches the engine over unix://, tcp:// (or http://) and ssh://, not {scheme}://"
            ),
            None => format!("{address} is not an engine address: it needs a scheme (unix://, tcp://, ssh://)"),
        })
    }

    /// The `Host` header requests carry (the daemon ignores it on a socket or through ssh).
    pub(crate) fn host_header(&self) -> &str {
        match self {
            Self::Unix(_) | Self::Ssh(_) => "docker",
            Self::Tcp(address) => address,
        }
    }

    /// A byte stream to the engine: HTTP/1 goes over it.
    pub(crate) async fn open(&self) -> io::Result<EngineStream> {
        match self {
            Self::Unix(path) => tokio::net::UnixStream::connect(path)
                .await
                .map(EngineStream::Unix)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
            Self::Tcp(address) => tokio::net::TcpStream::connect(address.as_str())
                .await
                .map(EngineStream::Tcp)
                .map_err(|e| io::Error::new(e.kind(), format!("{address}: {e}"))),
            Self::Ssh(destination) => DialStdio::spawn(destination).map(EngineStream::Ssh),
        }
    }

    /// An HTTP/1 connection of its own (one BuildKit build).
    pub(crate) async fn connect(&self) -> io::Result<Connection> {
        let stream = self.open().await?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(io::Error::other)?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Connection { sender, driver })
    }

    /// Sends `request` (to be answered 101, `Upgrade: h2c`) on a connection of its own and
    /// returns the upgraded connection: BuildKit's session and control API speak HTTP/2 on it.
    /// A refusal is `Err(Ok((status, body)))`; a lost connection `Err(Err(why))`.
    pub(crate) async fn upgrade(
        &self,
        request: http::Request<Full<Bytes>>,
    ) -> Result<hyper::upgrade::Upgraded, Result<(http::StatusCode, String), String>> {
        use http_body_util::BodyExt as _;
        let stream = self.open().await.map_err(|e| Err(e.to_string()))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| Err(with_sources(&e)))?;
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        let response = sender.send_request(request).await.map_err(|e| Err(with_sources(&e)))?;
        if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            let status = response.status();
            let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            return Err(Ok((status, String::from_utf8_lossy(&body).trim().to_owned())));
        }
        hyper::upgrade::on(response).await.map_err(|e| Err(with_sources(&e)))
    }

    /// A bollard client for this engine: bollard's own transport for a socket or TCP, and for
    /// ssh a custom transport (a pooling hyper-util client) over [`Endpoint::open`].
    pub(crate) fn bollard(&self, address: &str) -> Result<bollard::Docker, bollard::errors::Error> {
        match self {
            Self::Unix(_) | Self::Tcp(_) => bollard::Docker::connect_with_host(address),
            Self::Ssh(_) => {
                let mut builder = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new());
                builder.pool_idle_timeout(Duration::from_secs(30)).pool_timer(hyper_util::rt::TokioTimer::new());
                let client = Arc::new(builder.build(Dialer(Arc::new(self.clone()))));
                let transport = move |request: bollard::BollardRequest| {
                    let client = Arc::clone(&client);
                    async move {
                        client
                            .request(request)
                            .await
                            .map_err(|e| bollard::errors::Error::IOError { err: io::Error::other(with_sources(&e)) })
                    }
                };
                bollard::Docker::connect_with_custom_transport(
                    transport,
                    Some("http://docker"),
                    REQUEST_TIMEOUT_SECONDS,
                    bollard::API_DEFAULT_VERSION,
                )
            }
        }
    }
}

/// hyper-util's connector: every new connection of bollard's client is [`Endpoint::open`].
#[derive(Clone)]
struct Dialer(Arc<Endpoint>);

impl tower_service::Service<http::Uri> for Dialer {
    type Response = TokioIo<EngineStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let endpoint = Arc::clone(&self.0);
        Box::pin(async move { endpoint.open().await.map(TokioIo::new) })
    }
}

impl SshDestination {
    /// What follows `ssh://`: `[user@]host[:port][/path]`, without a password, query or
    /// fragment (refused as the docker CLI refuses them).
    fn parse(rest: &str) -> Result<Self, String> {
        if rest.contains('?') || rest.contains('#') {
            return Err("query parameters and fragments are not allowed".to_owned());
        }
        let (authority, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, ""),
        };
        let (user, host_port) = match authority.rsplit_once('@') {
            Some((user, _)) if user.contains(':') => return Err("a plain-text password is not supported".to_owned()),
            Some((user, host_port)) => (Some(user.to_owned()).filter(|u| !u.is_empty()), host_port),
            None => (None, authority),
        };
        let (host, port) = match host_port.strip_prefix('[') {
            // [::1]:22
            Some(bracketed) => {
                let (host, after) = bracketed.split_once(']').ok_or("an unclosed [ in the host")?;
                (host, after.strip_prefix(':'))
            }
            None => match host_port.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            },
        };
        if host.is_empty() {
            return Err("the host name is empty".to_owned());
        }
        let port = port.filter(|p| !p.is_empty());
        if let Some(port) = port
            && !port.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(format!("the port {port:?} is not a number"));
        }
        let socket = Some(path.to_owned()).filter(|p| !p.trim_matches('/').is_empty());
        Ok(Self { user, host: host.to_owned(), port: port.map(str::to_owned), socket })
    }

    /// The arguments of `ssh`, as the docker CLI passes them.
    fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = ["-o", "ConnectTimeout=30", "-T"].map(str::to_owned).into();
        if let Some(user) = &self.user {
            args.extend(["-l".to_owned(), user.clone()]);
        }
        if let Some(port) = &self.port {
            args.extend(["-p".to_owned(), port.clone()]);
        }
        args.extend(["--".to_owned(), self.host.clone(), "docker".to_owned()]);
        if let Some(socket) = &self.socket {
            // The far side's shell reads the command line: quote what it could split.
            args.push(shell_quoted(&format!("--host=unix://{socket}")));
        }
        args.extend(["system", "dial-stdio"].map(str::to_owned));
        args
    }
}

fn shell_quoted(word: &str) -> String {
    match word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:@%+,".contains(&b)) {
        true => word.to_owned(),
        false => format!("'{}'", word.replace('\'', r"'\''")),
    }
}

/// A byte stream to the engine, whichever way it goes.
pub(crate) enum EngineStream {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
    Ssh(DialStdio),
}

impl AsyncRead for EngineStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Ssh(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for EngineStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_write(cx, data),
            Self::Tcp(s) => Pin::new(s).poll_write(cx, data),
            Self::Ssh(s) => Pin::new(s).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Ssh(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Ssh(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl LegacyConnection for EngineStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// `ssh … docker system dial-stdio` as a byte stream: its stdin and stdout. When ssh ends with
/// a failure (it could not connect, log in, or run `docker` there), reading or writing fails
/// with its exit status and what it said on stderr. Dropping the stream ends the process
/// (SIGTERM, as the docker CLI does, then SIGKILL after 3 s) and reaps it.
pub(crate) struct DialStdio {
    stdin: tokio::process::ChildStdin,
    stdout: tokio::process::ChildStdout,
    /// The process's failure, known once it exited: `Some(message)` when it failed.
    exit: tokio::task::JoinHandle<Option<String>>,
    failure: Option<Option<String>>,
    /// Dropped with the stream: tells the watcher to end the process.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl DialStdio {
    fn spawn(destination: &SshDestination) -> io::Result<Self> {
        let args = destination.args();
        let described = format!("ssh {}", args.join(" "));
        // stderr goes to an unlinked file, not a pipe: a pipe left unread would block a
        // talkative ssh (`LogLevel DEBUG3`), and one read to its end would wait for as long as
        // an ssh `ControlPersist` master, which inherits it, lives.
        let stderr = tempfile::tempfile()?;
        let mut command = tokio::process::Command::new("ssh");
        command
            .args(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr.try_clone()?)
            .kill_on_drop(true);
        // SAFETY: only async-signal-safe calls between fork and exec: setsid(2) and prctl(2).
        unsafe {
            command.pre_exec(|| {
                // A session of its own, as the docker CLI's commandconn: no controlling
                // terminal, so a Ctrl-C reaches trellis (which still needs the engine to clean
                // up) and not ssh, and ssh cannot stop the run waiting at a prompt.
                if libc::setsid() == -1 {
                    return Err(io::Error::last_os_error());
                }
                // And it dies with trellis, whatever kills trellis.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child =
            command.spawn().map_err(|e| io::Error::new(e.kind(), format!("cannot run `{described}`: {e}")))?;
        let (stdin, stdout) = (child.stdin.take().expect("piped"), child.stdout.take().expect("piped"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let exit = tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status,
                _ = stopped => {
                    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
                        // SAFETY: kill(2) on our own child, which has not been reaped (`wait`
                        // has not returned), so the pid is still its own.
                        unsafe { libc::kill(pid, libc::SIGTERM) };
                    }
                    if tokio::time::timeout(Duration::from_secs(3), child.wait()).await.is_err() {
                        let _ = child.kill().await;
                    }
                    return None;
                }
            };
            match status {
                Ok(status) if status.success() => None,
                Ok(status) => Some(format!(
                    "`{described}` exited with {status}; is the address right, and Docker 18.09 or later installed \
                     on the far side? ssh said: {}",
                    said(&stderr)
                )),
                Err(e) => Some(format!("`{described}`: {e}")),
            }
        });
        Ok(Self { stdin, stdout, exit, failure: None, _stop: stop })
    }

    /// Waits for the process to have exited; the error it ended with, if it failed.
    fn poll_failure(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Error>> {
        if self.failure.is_none() {
            let outcome = ready!(Pin::new(&mut self.exit).poll(cx));
            self.failure = Some(outcome.unwrap_or_default());
        }
        Poll::Ready(self.failure.clone().flatten().map(io::Error::other))
    }
}

/// The end of what ssh wrote on stderr (its last lines say why it gave up).
fn said(stderr: &std::fs::File) -> String {
    use std::os::unix::fs::FileExt as _;
    let mut bytes = vec![0; 64 * 1024];
    let length = stderr.metadata().map_or(0, |m| m.len());
    let start = length.saturating_sub(bytes.len() as u64);
    let read = stderr.read_at(&mut bytes, start).unwrap_or(0);
    let text = String::from_utf8_lossy(&bytes[..read]);
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    match lines.is_empty() {
        true => "nothing".to_owned(),
        false => lines[lines.len().saturating_sub(5)..].join(" / "),
    }
}

impl AsyncRead for DialStdio {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.stdout).poll_read(cx, buf))?;
        if buf.filled().len() == before && buf.remaining() > 0 {
            // The end of the stream: ssh is exiting. Its failure, if that is what it was.
            if let Some(failure) = ready!(this.poll_failure(cx)) {
                return Poll::Ready(Err(failure));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for DialStdio {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match ready!(Pin::new(&mut this.stdin).poll_write(cx, data)) {
            // ssh already exited: why is more useful than "broken pipe".
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                Poll::Ready(Err(ready!(this.poll_failure(cx)).unwrap_or(e)))
            }
            other => Poll::Ready(other),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stdin).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stdin).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssh(user: Option<&str>, host: &str, port: Option<&str>, socket: Option<&str>) -> Endpoint {
        Endpoint::Ssh(SshDestination {
            user: user.map(str::to_owned),
            host: host.to_owned(),
            port: port.map(str::to_owned),
            socket: socket.map(str::to_owned),
        })
    }

    #[test]
    fn engine_addresses() {
        assert_eq!(Endpoint::parse("unix:///var/run/docker.sock"), Ok(Endpoint::Unix("/var/run/docker.sock".into())));
        assert_eq!(Endpoint::parse("tcp://127.0.0.1:2375"), Ok(Endpoint::Tcp("127.0.0.1:2375".to_owned())));
        assert_eq!(Endpoint::parse("http://localhost:2375/"), Ok(Endpoint::Tcp("localhost:2375".to_owned())));
        assert_eq!(Endpoint::parse("ssh://me@host"), Ok(ssh(Some("me"), "host", None, None)));
        assert_eq!(Endpoint::parse("ssh://host:2222"), Ok(ssh(None, "host", Some("2222"), None)));
        assert_eq!(Endpoint::parse("ssh://me@[::1]:22/"), Ok(ssh(Some("me"), "::1", Some("22"), None)));
        assert_eq!(
            Endpoint::parse("ssh://me@host/run/user/1000/docker.sock"),
            Ok(ssh(Some("me"), "host", None, Some("/run/user/1000/docker.sock")))
        );
    }

    #[test]
    fn addresses_trellis_cannot_use_say_why() {
        let error = |address: &str| Endpoint::parse(address).unwrap_err();
        assert!(error("npipe:////./pipe/docker_engine").contains("not npipe://"), "{}", error("npipe://x"));
        assert!(error("fd://").contains("not fd://"));
        assert!(error("https://host:2376").contains("TLS"));
        assert!(error("/var/run/docker.sock").contains("needs a scheme"));
        assert!(error("ssh://me:secret@host").contains("password"));
        assert!(error("ssh://host?x=1").contains("query"));
        assert!(error("ssh://host:ssh").contains("not a number"));
        assert!(error("ssh://me@").contains("host name is empty"));
        assert!(error("tcp://").contains("names no host"));
    }

    #[test]
    fn ssh_runs_what_the_docker_cli_runs() {
        let Ok(Endpoint::Ssh(plain)) = Endpoint::parse("ssh://host") else { panic!() };
        assert_eq!(plain.args().join(" "), "-o ConnectTimeout=30 -T -- host docker system dial-stdio");
        let Ok(Endpoint::Ssh(full)) = Endpoint::parse("ssh://me@host:2222/run/my docker.sock") else { panic!() };
        assert_eq!(
            full.args().join(" "),
            "-o ConnectTimeout=30 -T -l me -p 2222 -- host docker '--host=unix:///run/my docker.sock' system dial-stdio"
        );
    }

    #[tokio::test]
    async fn an_ssh_that_fails_says_why() {
        // Port 1 of the loopback: nothing listens there, so ssh gives up at once.
        let endpoint = Endpoint::parse("ssh://nobody@127.0.0.1:1").unwrap();
        let mut connection = endpoint.connect().await.unwrap();
        let request = http::Request::get("/_ping").header("host", "docker").body(Full::new(Bytes::new())).unwrap();
        let error = connection.sender.send_request(request).await.unwrap_err();
        let message = with_sources(&error);
        assert!(
            message.contains("ssh -o ConnectTimeout=30 -T -l nobody -p 1 -- 127.0.0.1 docker system dial-stdio"),
            "{message}"
        );
        assert!(message.contains("exited with exit status: 255"), "{message}");
        assert!(message.contains("Connection refused"), "{message}");
    }
}
