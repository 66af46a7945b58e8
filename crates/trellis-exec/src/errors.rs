//! Error classes decide what is retried; messages are lowercase fragments.

use serde::{Deserialize, Serialize};

/// What kind of failure a job attempt had. Only [`ErrorClass::is_retryable`] classes are
/// attempted again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorClass {
    /// The job's input is wrong; trying again cannot help.
    InvalidInput,
    /// The engine (or registry) could not be reached.
    EngineUnreachable,
    /// The engine or registry refused access (wrong or missing credentials): retrying cannot
    /// help, and like an unreachable engine it is not the node's own failure.
    AccessDenied,
    /// The job ran and failed (a build step, a test, a push).
    NodeFailed,
    /// The job was cancelled.
    Cancelled,
}

impl ErrorClass {
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorClass::EngineUnreachable | ErrorClass::NodeFailed)
    }
}

/// A failed attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    pub class: ErrorClass,
    pub message: String,
}

impl JobError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self { class, message: message.into() }
    }

    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::NodeFailed, message)
    }

    pub fn cancelled() -> Self {
        Self::new(ErrorClass::Cancelled, "cancelled")
    }
}
