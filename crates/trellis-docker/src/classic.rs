//! The classic builder (`/build?version=1`): its text stream is the log, the image ID comes
//! from the stream's `aux`, and a test stands on `FROM sha256:<id>` (which this builder finds
//! locally). Every step runs in a container and commits a layer image: the stream names both,
//! and a test's are removed afterwards.

use std::collections::HashMap;

use bollard::Docker;
use bollard::query_parameters::{BuildImageOptions, BuilderVersion, RemoveContainerOptions, RemoveImageOptions};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;

use crate::builder::{
    BuildRequest, BuildTrace, Builder, BuilderKind, TestRequest, run_test_dockerfile, with_label_step,
};
use crate::context_tar::{RESERVED_DOCKERFILE, context_tar};
use crate::errors::{EngineError, classify, classify_build};

/// How many times a build runs when its cache lookup keeps racing removals.
const CACHE_RACE_ATTEMPTS: u32 = 3;

/// The classic builder's cache lookup for a step lists the images, then reads each sibling;
/// an image removed in between (by anyone: another build's test, `docker image prune`) fails
/// the step with `unable to find image "sha256:…"` although nothing is wrong with the build.
/// Steps on `FROM scratch` compare against every parentless image, so they meet it most.
/// Measured on dockerd 20.10; the same inputs build at the next attempt.
fn raced_a_removal(message: &str) -> bool {
    message.starts_with("unable to find image \"sha256:")
}

#[derive(Debug, Clone)]
pub(crate) struct ClassicBuilder {
    docker: Docker,
}

impl ClassicBuilder {
    pub(crate) fn new(docker: Docker) -> Self {
        Self { docker }
    }

    pub(crate) async fn build(
        &self,
        request: BuildRequest<'_>,
        trace: &mut BuildTrace,
        line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<String, EngineError> {
        // One LABEL step for the labels, not one committed container per label.
        let (dockerfile, target, rest) = with_label_step(request.dockerfile, &request.labels, request.target);
        let tar = context_tar(request.context, &dockerfile)
            .map_err(|e| EngineError::Failed(format!("cannot read the build context: {e}")))?;
        let options = BuildImageOptions {
            dockerfile: RESERVED_DOCKERFILE.to_owned(),
            buildargs: Some(request.args.iter().cloned().collect()),
            labels: Some(rest),
            networkmode: Some(request.network.to_owned()),
            target: target.unwrap_or_default(),
            platform: request.platform.unwrap_or_default().to_owned(),
            nocache: request.no_cache,
            rm: true,
            forcerm: true,
            version: BuilderVersion::BuilderV1,
            ..Default::default()
        };
        let mut attempt = 1;
        let id = loop {
            // A build's layers are the image's own history, not leftovers: record none.
            let mut steps = BuildTrace::default();
            let id = self.run_build(options.clone(), tar.clone(), &mut steps, line).await;
            trace.containers.append(&mut steps.containers);
            match id {
                Err(EngineError::Failed(message)) if raced_a_removal(&message) && attempt < CACHE_RACE_ATTEMPTS => {
                    line("trellis: the engine's layer-cache lookup raced the removal of another image; building again");
                    attempt += 1;
                }
                other => break other,
            }
        };
        id?.ok_or_else(|| EngineError::Failed("the build finished without naming an image".to_owned()))
    }

    pub(crate) async fn test(
        &self,
        request: TestRequest<'_>,
        trace: &mut BuildTrace,
        line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(), EngineError> {
        let (dockerfile, context, args) = match (request.run, request.dockerfile) {
            (Some(lines), _) => (run_test_dockerfile(request.image_id, lines), None, HashMap::new()),
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
            platform: request.platform.unwrap_or_default().to_owned(),
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

    /// Streams one build; returns the image ID and records the IDs of the layers its steps
    /// made, FROM images excepted (what a test build must remove), and the containers steps
    /// ran in.
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
                Err(classify_build(message))
            }
            None => Ok(image),
        }
    }

    /// Force-removes the containers a build ran (a no-op for those the daemon removed), then a
    /// test's layers, newest first, without touching their parents (the image under test may
    /// still be untagged).
    pub(crate) async fn clean_up(&self, trace: &BuildTrace) {
        for id in &trace.containers {
            // Docker 26 refuses the removal while its builder is still tearing the cancelled
            // step down (409, "removal … already in progress" or a container still in use):
            // asked again a few times, backing off, until it is gone (404).
            for attempt in 0..8u64 {
                let options = RemoveContainerOptions { force: true, ..Default::default() };
                match self.docker.remove_container(id, Some(options)).await {
                    Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => break,
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100 << attempt.min(4))).await,
                }
            }
        }
        for id in trace.layers.iter().rev() {
            let options = RemoveImageOptions { force: true, noprune: true, ..Default::default() };
            let _ = self.docker.remove_image(id, Some(options), None).await;
        }
    }
}

impl Builder for ClassicBuilder {
    fn kind(&self) -> BuilderKind {
        BuilderKind::Classic
    }

    fn build<'a>(
        &'a self,
        request: BuildRequest<'a>,
        trace: &'a mut BuildTrace,
        line: &'a mut (dyn FnMut(&str) + Send),
    ) -> BoxFuture<'a, Result<String, EngineError>> {
        Box::pin(ClassicBuilder::build(self, request, trace, line))
    }

    fn test<'a>(
        &'a self,
        request: TestRequest<'a>,
        trace: &'a mut BuildTrace,
        line: &'a mut (dyn FnMut(&str) + Send),
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(ClassicBuilder::test(self, request, trace, line))
    }

    fn clean_up<'a>(&'a self, trace: &'a BuildTrace) -> BoxFuture<'a, ()> {
        Box::pin(ClassicBuilder::clean_up(self, trace))
    }
}

#[cfg(test)]
mod tests {
    use super::raced_a_removal;

    #[test]
    fn only_the_cache_lookup_race_builds_again() {
        assert!(raced_a_removal(
            "unable to find image \"sha256:e5faea5318d2d111c9f32aa7e1d3278db87f7dd78e0488cd82591c6d60b077da\""
        ));
        assert!(!raced_a_removal("pull access denied for missing, repository does not exist"));
        assert!(!raced_a_removal("The command '/bin/sh -c false' returned a non-zero code: 1"));
    }
}
