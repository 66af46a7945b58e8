//! The bottom of the crate: what the engine, the exports and the registry say about an image
//! in the same words (its platform, its layers' diff IDs, digests).

use std::fmt;

use sha2::Digest as _;

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

/// An image as the engine records it, for its manifest.
#[derive(Debug, Clone)]
pub(crate) struct ImageLayout {
    pub platform: Platform,
    /// The layers' diff IDs (digests of their uncompressed tars), base first.
    pub diff_ids: Vec<String>,
}

pub(crate) fn sha256(bytes: &[u8]) -> String {
    let hash = sha2::Sha256::digest(bytes);
    let hex: String = hash.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("sha256:{hex}")
}

/// `sha256:0123456789ab…` → `0123456789ab`, for progress lines.
pub(crate) fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.get(..12).unwrap_or(hex)
}
