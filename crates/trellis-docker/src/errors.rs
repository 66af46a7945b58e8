//! The bottom of the crate: how every failure is classified for the executor's retry
//! decisions, whether the engine, BuildKit or a registry said it.

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

pub(crate) fn classify(error: bollard::errors::Error) -> EngineError {
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
        E::HyperResponseError { err } => EngineError::Unreachable(with_sources(&err)),
        E::RequestTimeoutError => EngineError::Unreachable("the request timed out".to_owned()),
        other => EngineError::Unreachable(with_sources(&other)),
    }
}

/// A failure inside a build's or test's stream: the engine answered and ran the build, so
/// whatever the message says ("no such host" from a step or a base's registry included), it
/// is the build's failure, never an unreachable engine (the containerd store's failing
/// BuildKit builds were once reported as "cannot reach the Docker engine").
pub(crate) fn classify_build(message: String) -> EngineError {
    if is_unauthorized(&message) {
        EngineError::Unauthorized(message)
    } else if is_deterministic(&message) {
        EngineError::Refused(message)
    } else {
        EngineError::Failed(message)
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

/// Build failures that the same inputs reproduce every time: retrying cannot help. The
/// classic builder's and BuildKit's wordings (BuildKit: a missing `COPY` source is "failed to
/// compute cache key: \"/x\" not found: not found"; a missing target is "target stage x could
/// not be found"; a failing `RUN` is "executor failed running …: exit code: N", retried).
/// The classic builder refuses BuildKit-only syntax ("the --mount option requires BuildKit").
fn is_deterministic(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    let missing_source = message.contains("failed to compute cache key") && message.contains("not found");
    missing_source
        || [
            "file not found in build context",
            "dockerfile parse error",
            "unknown instruction",
            "manifest unknown",
            "failed to parse stage name",
            "target stage",
            "failed to reach build target",
            "requires buildkit",
        ]
        .iter()
        .any(|m| message.contains(m))
}

/// An error with its sources: hyper's own message ("connection error", "error trying to
/// connect") says nothing of what ssh said.
pub(crate) fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_failures_are_classified_by_their_wording() {
        // As dockerd 20.10 words them (classic builder, then BuildKit 0.8.4).
        let refused = [
            "COPY failed: file not found in build context or excluded by .dockerignore: stat x: file does not exist",
            "the --mount option requires BuildKit. Refer to https://docs.docker.com/go/buildkit/ to learn more",
            r#"failed to compute cache key: "/nothere" not found: not found"#,
            "failed to solve with frontend dockerfile.v0: failed to create LLB definition: dockerfile parse error line 2: unknown instruction: FOO",
            "failed to solve with frontend dockerfile.v0: failed to create LLB definition: target stage nosuch could not be found",
        ];
        for message in refused {
            let error = classify(bollard::errors::Error::DockerStreamError { error: message.to_owned() });
            assert!(matches!(error, EngineError::Refused(_)), "{message}");
        }
        let failed = [
            "The command '/bin/sh -c exit 3' returned a non-zero code: 3",
            "executor failed running [/bin/sh -c echo failing && exit 3]: exit code: 3",
        ];
        for message in failed {
            let error = classify(bollard::errors::Error::DockerStreamError { error: message.to_owned() });
            assert!(matches!(error, EngineError::Failed(_)), "{message}");
        }
        let pull = r#"failed to solve with frontend dockerfile.v0: failed to create LLB definition: failed to do request: Head "https://registry-1.docker.io/v2/library/sha256/manifests/9ac7": dial tcp: lookup registry-1.docker.io on 10.255.255.53:53: no such host"#;
        let error = classify(bollard::errors::Error::DockerStreamError { error: pull.to_owned() });
        assert!(matches!(error, EngineError::Unreachable(_)));
        // The same words inside a build's stream: the build failed; the engine answered.
        let context = r#"failed to solve: failed to read dockerfile: Get "http://build-context-abc/": dial tcp: lookup build-context-abc: no such host"#;
        for message in [pull, context] {
            assert!(matches!(classify_build(message.to_owned()), EngineError::Failed(_)), "{message}");
        }
        let refused = r#"failed to compute cache key: "/nothere" not found: not found"#;
        assert!(matches!(classify_build(refused.to_owned()), EngineError::Refused(_)));
    }
}
