//! BuildKit's control API as the engine serves it (`POST /grpc`, upgraded to HTTP/2, as
//! buildx's docker driver reaches it): asked only what BuildKit it is, for `trellis doctor`.
//! Builds themselves go through `/build` with a session (`buildkit.rs`, `session.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bollard_buildkit_proto::moby::buildkit::v1::InfoRequest;
use bollard_buildkit_proto::moby::buildkit::v1::control_client::ControlClient;
use bytes::Bytes;
use http_body_util::Full;

use crate::endpoint::Endpoint;
use crate::errors::EngineError;

/// The version of the BuildKit the engine embeds (`v0.13.2`), or `None` when it does not say
/// (BuildKit before 0.11 has no `Info`, as dockerd 20.10's 0.8.4).
pub(crate) async fn buildkit_version(endpoint: &Endpoint, api_version: &str) -> Result<Option<String>, EngineError> {
    let request = http::Request::post(format!("/v{api_version}/grpc"))
        .header(http::header::HOST, endpoint.host_header())
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "h2c")
        .body(Full::new(Bytes::new()))
        .map_err(|e| EngineError::Failed(e.to_string()))?;
    let upgraded = match endpoint.upgrade(request).await {
        Ok(upgraded) => upgraded,
        // An engine without the control API (or refusing it) says nothing of its BuildKit.
        Err(Ok(_)) => return Ok(None),
        Err(Err(why)) => return Err(EngineError::Unreachable(why)),
    };
    let connector = Once(Mutex::new(Some(upgraded)));
    let channel = tonic::transport::Endpoint::from_static("http://buildkit")
        .connect_with_connector(connector)
        .await
        .map_err(|e| EngineError::Failed(format!("BuildKit's control API: {e}")))?;
    match ControlClient::new(channel).info(InfoRequest {}).await {
        Ok(answer) => Ok(answer.into_inner().buildkit_version.map(|v| v.version).filter(|v| !v.is_empty())),
        Err(_) => Ok(None),
    }
}

/// A connector that hands tonic the one connection already upgraded.
struct Once(Mutex<Option<hyper::upgrade::Upgraded>>);

impl tower_service::Service<http::Uri> for Once {
    type Response = hyper::upgrade::Upgraded;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let taken = self.0.lock().ok().and_then(|mut once| once.take());
        Box::pin(async move { taken.ok_or_else(|| std::io::Error::other("the control connection was used")) })
    }
}
