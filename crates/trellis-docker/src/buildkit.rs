//! The engine's embedded BuildKit (`POST /build?version=2`), its context and Dockerfile served
//! by a session of trellis's own (`session.rs`: the one way that works on every image store),
//! as measured on dockerd 20.10 / BuildKit 0.8.4 and Docker 26.1.5 / BuildKit 0.13:
//! - progress arrives as `moby.buildkit.trace` messages (rendered like `--progress=plain`),
//!   the image ID as the aux of `moby.image.id`, a failure as the stream's `error`;
//! - the context served is the walk the key hashed; the Dockerfile is served apart from it, so
//!   `COPY . …` does not see it;
//! - build labels reach the image config without a history entry, so they are also written
//!   as a final `LABEL` step (see [`with_label_step`]);
//! - `FROM sha256:<id>` is looked up on Docker Hub, a local tag is found locally: a test
//!   stands on a temporary tag of the image under test, moved away and removed afterwards;
//! - dropping the connection cancels the build: the running step is killed and no container
//!   or image stays (BuildKit's steps are not engine containers).

use std::collections::HashMap;

use bollard::Docker;
use bollard::query_parameters::{BuildImageOptions, BuilderVersion, RemoveImageOptions, TagImageOptions};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, Full};

use crate::builder::{
    BuildRequest, BuildTrace, Builder, BuilderKind, TestRequest, run_test_dockerfile, with_label_step,
};
use crate::buildkit_progress::PlainProgress;
use crate::buildkit_status::decode_trace;
use crate::client::{temporary_tag, untag};
use crate::endpoint::Endpoint;
use crate::errors::{EngineError, classify, classify_build, with_sources};
use crate::session::{self, ServedFiles, Session};

use crate::TEST_BASE_REPOSITORY;

#[derive(Debug, Clone)]
pub(crate) struct BuildKitBuilder {
    docker: Docker,
    endpoint: Endpoint,
}

impl BuildKitBuilder {
    pub(crate) fn new(docker: Docker, endpoint: Endpoint) -> Self {
        Self { docker, endpoint }
    }

    async fn build(
        &self,
        request: BuildRequest<'_>,
        line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<String, EngineError> {
        // Every label also goes through the API: BuildKit writes them into the config only.
        let (dockerfile, target, _) = with_label_step(request.dockerfile, &request.labels, request.target);
        let options = BuildImageOptions {
            buildargs: Some(request.args.iter().cloned().collect()),
            labels: Some(request.labels),
            networkmode: Some(request.network.to_owned()),
            target: target.unwrap_or_default(),
            platform: request.platform.unwrap_or_default().to_owned(),
            nocache: request.no_cache,
            ..Default::default()
        };
        let files = ServedFiles { context: request.context.cloned(), dockerfile };
        // Nothing to record: BuildKit runs no engine containers, and a build's image is its result.
        let id = self.run_build(options, files, None, line).await?;
        id.ok_or_else(|| EngineError::Failed("the build finished without naming an image".to_owned()))
    }

    async fn test(
        &self,
        request: TestRequest<'_>,
        trace: &mut BuildTrace,
        line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(), EngineError> {
        let tag = temporary_tag();
        let base = format!("{TEST_BASE_REPOSITORY}:{tag}");
        let (dockerfile, context, args) = match (request.run, request.dockerfile) {
            (Some(lines), _) => (run_test_dockerfile(&base, lines), None, HashMap::new()),
            (None, Some((text, walk))) => {
                (text.to_owned(), Some(walk), HashMap::from([("IMAGE".to_owned(), base.clone())]))
            }
            (None, None) => return Err(EngineError::Failed("a test needs run lines or a Dockerfile".to_owned())),
        };
        // Recorded before it exists: clean_up copes with a tag that was never made.
        trace.temporary_tag = Some(base);
        let options = TagImageOptions { repo: Some(TEST_BASE_REPOSITORY.to_owned()), tag: Some(tag) };
        self.docker.tag_image(request.image_id, Some(options)).await.map_err(classify)?;
        let labels = HashMap::from([(crate::labels::TEST.to_owned(), "true".to_owned())]);
        let (dockerfile, target, _) = with_label_step(&dockerfile, &labels, None);
        let options = BuildImageOptions {
            buildargs: Some(args),
            labels: Some(labels),
            networkmode: Some(request.network.to_owned()),
            target: target.unwrap_or_default(),
            platform: request.platform.unwrap_or_default().to_owned(),
            // Tests must really run: never satisfied from the layer cache.
            nocache: true,
            ..Default::default()
        };
        let files = ServedFiles { context: context.cloned(), dockerfile };
        self.run_build(options, files, Some(trace), line).await?;
        Ok(())
    }

    /// Opens a session serving `files`, streams one build over a connection of its own (see
    /// `endpoint.rs` for why) and returns the image ID. With `trace`, the image is recorded
    /// there as soon as the engine names it.
    async fn run_build(
        &self,
        mut options: BuildImageOptions,
        files: ServedFiles,
        mut trace: Option<&mut BuildTrace>,
        line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Option<String>, EngineError> {
        let endpoint = &self.endpoint;
        let version = self.docker.client_version().to_string();
        // Served until the build's stream ends (dropped on return, or when the build is).
        let session = Session::open(endpoint, &version, files).await?;
        options.version = BuilderVersion::BuilderBuildKit;
        options.remote = Some("client-session".to_owned());
        options.dockerfile = session::DOCKERFILE.to_owned();
        let query = serde_urlencoded::to_string(&options).map_err(|e| EngineError::Failed(e.to_string()))?;
        // bollard's `session` field needs its `buildkit` feature (see endpoint.rs).
        let query = format!("{query}&session={}", session.id);
        let request = http::Request::post(format!("/v{version}/build?{query}"))
            .header(http::header::HOST, endpoint.host_header())
            .body(Full::new(Bytes::new()))
            .map_err(|e| EngineError::Failed(e.to_string()))?;
        let unreachable = |e: hyper::Error| EngineError::Unreachable(with_sources(&e));
        let mut connection = endpoint.connect().await.map_err(|e| EngineError::Unreachable(e.to_string()))?;
        let response = connection.sender.send_request(request).await.map_err(unreachable)?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let message = serde_json::from_slice::<ServerMessage>(&bytes)
                .map_or_else(|_| String::from_utf8_lossy(&bytes).into_owned(), |m| m.message);
            return Err(classify(bollard::errors::Error::DockerResponseServerError {
                status_code: status.as_u16(),
                message,
            }));
        }
        let mut stream = BuildStream::default();
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame.map_err(unreachable)?.data_ref() {
                stream.feed(data, line);
                if let (Some(trace), Some(id)) = (trace.as_deref_mut(), &stream.image)
                    && !trace.layers.contains(id)
                {
                    trace.layers.push(id.clone());
                }
            }
        }
        stream.finish(line)
    }

    /// Removes the test image, then takes the temporary tag off the image under test without
    /// deleting that image (see [`untag`]).
    async fn clean_up(&self, trace: &BuildTrace) {
        for id in trace.layers.iter().rev() {
            let options = RemoveImageOptions { force: true, noprune: true, ..Default::default() };
            let _ = self.docker.remove_image(id, Some(options), None).await;
        }
        if let Some(reference) = &trace.temporary_tag {
            untag(&self.docker, reference).await;
        }
    }
}

impl Builder for BuildKitBuilder {
    fn kind(&self) -> BuilderKind {
        BuilderKind::BuildKit
    }

    fn build<'a>(
        &'a self,
        request: BuildRequest<'a>,
        _trace: &'a mut BuildTrace,
        line: &'a mut (dyn FnMut(&str) + Send),
    ) -> BoxFuture<'a, Result<String, EngineError>> {
        Box::pin(BuildKitBuilder::build(self, request, line))
    }

    fn test<'a>(
        &'a self,
        request: TestRequest<'a>,
        trace: &'a mut BuildTrace,
        line: &'a mut (dyn FnMut(&str) + Send),
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(BuildKitBuilder::test(self, request, trace, line))
    }

    fn clean_up<'a>(&'a self, trace: &'a BuildTrace) -> BoxFuture<'a, ()> {
        Box::pin(BuildKitBuilder::clean_up(self, trace))
    }
}

#[derive(serde::Deserialize)]
struct ServerMessage {
    message: String,
}

/// One JSON message of the `/build` stream.
#[derive(serde::Deserialize)]
struct BuildMessage {
    id: Option<String>,
    stream: Option<String>,
    aux: Option<serde_json::Value>,
    error: Option<String>,
    #[serde(rename = "errorDetail")]
    error_detail: Option<ErrorDetail>,
}

#[derive(serde::Deserialize)]
struct ErrorDetail {
    message: Option<String>,
}

/// The `/build` stream read as it arrives: newline-delimited JSON in arbitrary chunks.
#[derive(Default)]
struct BuildStream {
    pending: Vec<u8>,
    progress: PlainProgress,
    /// Plain `stream` text (what an engine without BuildKit answers) until its newline.
    text: String,
    image: Option<String>,
    failure: Option<String>,
}

impl BuildStream {
    fn feed(&mut self, chunk: &[u8], line: &mut (dyn FnMut(&str) + Send)) {
        self.pending.extend_from_slice(chunk);
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let message: Vec<u8> = self.pending.drain(..=end).collect();
            if message.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<BuildMessage>(&message) {
                Ok(message) => self.message(message, line),
                Err(e) => {
                    line(&format!("unreadable build message ({e}): {}", String::from_utf8_lossy(&message).trim()))
                }
            }
        }
    }

    fn message(&mut self, message: BuildMessage, line: &mut (dyn FnMut(&str) + Send)) {
        match (message.id.as_deref(), message.aux) {
            (Some("moby.buildkit.trace"), Some(serde_json::Value::String(aux))) => match decode_trace(&aux) {
                Ok(update) => self.progress.lines(&update).iter().for_each(|l| line(l)),
                Err(e) => line(&e.to_string()),
            },
            (_, Some(aux)) => {
                if let Some(id) = aux.get("ID").and_then(serde_json::Value::as_str) {
                    self.image = Some(id.to_owned());
                }
            }
            _ => {}
        }
        if let Some(text) = message.stream {
            self.text.push_str(&text);
            while let Some(end) = self.text.find('\n') {
                let whole: String = self.text.drain(..=end).collect();
                line(whole.trim_end_matches(['\n', '\r']));
            }
        }
        if let Some(error) = message.error_detail.and_then(|d| d.message).or(message.error) {
            self.failure = Some(error);
        }
    }

    fn finish(mut self, line: &mut (dyn FnMut(&str) + Send)) -> Result<Option<String>, EngineError> {
        self.progress.finish().iter().for_each(|l| line(l));
        if !self.text.is_empty() {
            line(self.text.trim_end_matches(['\n', '\r']));
        }
        match self.failure {
            Some(message) => {
                line(&format!("error: {message}"));
                Err(classify_build(message))
            }
            None => Ok(self.image),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_read_across_chunks() {
        let trace = r#"{"id":"moby.buildkit.trace","aux":"GnEKR3NoYTI1Njo1Mzc3OGQxYTU3NDI5M2Y5MDhjZGQ4MTk0ODRmOGMzNzQ5ZDQwNTQxZTU3YmVlZTVkNGRjMTZhZmNjZDhlMjExEgwIwumR2AYQ2PzthwIYASIWbWFya2VyLWhpCnNlY29uZCBsaW5lCg=="}"#;
        let id = r#"{"id":"moby.image.id","aux":{"ID":"sha256:9ac7"}}"#;
        let all = format!("{trace}\r\n{id}\r\n");
        let mut stream = BuildStream::default();
        let mut lines = Vec::new();
        let mut line = |l: &str| lines.push(l.to_owned());
        for chunk in all.as_bytes().chunks(7) {
            stream.feed(chunk, &mut line);
        }
        assert_eq!(stream.finish(&mut line).unwrap().as_deref(), Some("sha256:9ac7"));
        assert_eq!(lines, ["#1 marker-hi", "#1 second line"]);
    }

    #[test]
    fn a_failure_in_the_stream_is_classified() {
        let mut stream = BuildStream::default();
        let mut lines = Vec::new();
        let mut line = |l: &str| lines.push(l.to_owned());
        let missing = r#"{"errorDetail":{"message":"failed to compute cache key: \"/nothere\" not found: not found"},"error":"failed to compute cache key: \"/nothere\" not found: not found"}"#;
        stream.feed(format!("{missing}\n").as_bytes(), &mut line);
        assert!(matches!(stream.finish(&mut line), Err(EngineError::Refused(_))));
        let mut stream = BuildStream::default();
        let failing = r#"{"errorDetail":{"message":"executor failed running [/bin/sh -c exit 3]: exit code: 3"}}"#;
        stream.feed(format!("{failing}\n").as_bytes(), &mut line);
        assert!(matches!(stream.finish(&mut line), Err(EngineError::Failed(_))));
    }
}
