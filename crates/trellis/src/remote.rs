//! The registry as the store CI runners share (DESIGN §9).
//!
//! A push records, per variant, what it published: the build key and image of each platform,
//! the keys of the tests that passed on them, the push key, the digest every reference serves,
//! and how long the nodes took. The record is an OCI artifact in the repository of the
//! variant's first reference, under the tag `sha256-<hex>.trellis` named after the digest it
//! describes (the convention cosign uses for signatures): whoever reads a reference's digest
//! finds its record with one more request, an unchanged image keeps its digest when only its
//! tests' record changes, and nothing else in the repository moves.
//!
//! A machine with an empty engine and no state reads these records when it attaches (for the
//! variants whose images it lacks): a node whose current key is recorded is up to date —
//! "served by <registry> at <digest>, built elsewhere" — and nothing is pulled for it. When a
//! node that runs needs such an image (a child's build, a changed test, a push), the engine
//! pulls it by the digest recorded, never by a tag that may have moved.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use trellis_docker::registry::Registry;

/// The format of a record; a record of another version is ignored (the variant is judged as
/// if it had none).
pub const RECORD_VERSION: u32 = 1;

/// What a push published for one variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteRecord {
    pub trellis: u32,
    pub workspace: String,
    pub variant: String,
    /// What every reference of the variant serves: an image's manifest or an index.
    pub digest: String,
    pub push_key: String,
    /// One per platform the variant is built for (one, unnamed, without `platforms`).
    pub images: Vec<RecordedImage>,
    /// The tests that passed on these images: node id → key.
    #[serde(default)]
    pub tests: BTreeMap<String, String>,
    /// How long the variant's nodes took when they last ran: node id → milliseconds.
    #[serde(default)]
    pub durations_ms: BTreeMap<String, u64>,
    /// The weight shards were balanced with when this was pushed (see [`weight`]).
    #[serde(default)]
    pub balance_ms: u64,
}

/// One platform's image of a variant, as pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedImage {
    /// `None`: the engine's own platform, for a variant without `platforms`.
    pub platform: Option<String>,
    pub build_key: String,
    /// The image ID on the engine that built it: the config's digest on the classic image
    /// store (the same wherever it is pulled to such a store), the manifest's on the
    /// containerd store.
    pub image: String,
    /// The digest of this image's manifest in the record's repository: what is pulled.
    pub manifest: String,
    /// The digest of its config (the image ID on any classic store). Absent from records
    /// written before trellis recorded it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub config: String,
    /// The parents' image IDs it was built on: variant id → image ID.
    #[serde(default)]
    pub parents: BTreeMap<String, String>,
    /// The pinned compressor that made some of its layers (`None`: every layer went to the
    /// registry as the engine stored it, or the record predates compression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compressor: Option<String>,
    /// Each layer, base first: its diff ID and the compressed blob the registry holds for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<RecordedLayer>,
}

impl RecordedImage {
    /// Whether this image went out compressed as `compression` asks: a record of another
    /// compression serves no build (its layers are not what this workspace publishes, and an
    /// engine older than Docker 23 cannot pull zstd), so the image is built here and pushed
    /// again. Records without a compressor are gzip as stored, or older than compression.
    pub fn published_with(&self, compression: trellis_model::CompressionChoice) -> bool {
        let zstd = self.compressor.as_deref().is_some_and(|name| name.starts_with("zstd"));
        zstd == (compression == trellis_model::CompressionChoice::Zstd)
    }
}

/// A layer as published: what a later push of the same layer reuses instead of compressing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedLayer {
    pub diff_id: String,
    pub digest: String,
    pub size: u64,
}

impl RecordedImage {
    /// Whether the engine's image `id`, pulled by this record's manifest digest, is the image
    /// recorded: by image ID on a store like the builder's, else by manifest (containerd store)
    /// or config (classic store) digest.
    pub fn is(&self, id: &str) -> bool {
        id == self.image || id == self.manifest || (!self.config.is_empty() && id == self.config)
    }
}

impl RemoteRecord {
    pub fn image(&self, platform: Option<&str>) -> Option<&RecordedImage> {
        self.images.iter().find(|image| image.platform.as_deref() == platform)
    }

    /// The sum of the recorded durations.
    pub fn total_ms(&self) -> u64 {
        self.durations_ms.values().sum()
    }
}

/// The tag of the record describing `digest` (`sha256:ab…` → `sha256-ab….trellis`).
pub fn record_tag(digest: &str) -> String {
    format!("{}.trellis", digest.replace(':', "-"))
}

/// What the registry holds for the variants a run may skip or shard: their records, and
/// where each is kept.
#[derive(Debug, Default)]
pub struct RemoteFacts {
    /// The registry (`host[:port]`).
    pub registry: String,
    /// By variant index: its record, when its first reference serves a digest that has one.
    pub records: HashMap<usize, RemoteRecord>,
}

/// Reads the records of `variants` (index, workspace name, variant id, first reference as
/// `repository` and `tag`), a few requests at a time: for each, the digest its first
/// reference serves (one HEAD), then that digest's record (one GET). A variant its registry
/// cannot tell about has no record; refused credentials are the error.
pub(crate) async fn read_records(
    registry: &Registry,
    variants: Vec<(usize, String, String, String, String)>,
) -> Result<HashMap<usize, RemoteRecord>, trellis_docker::EngineError> {
    use futures_util::StreamExt;
    let reads = futures_util::stream::iter(variants)
        .map(|(v, workspace, id, repository, tag)| async move {
            let record = read_one(registry, &repository, &tag).await;
            (v, workspace, id, record)
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let mut records = HashMap::new();
    for (v, workspace, id, record) in reads {
        match record {
            Ok(Some(record)) if record.workspace == workspace && record.variant == id => {
                records.insert(v, record);
            }
            // The registry refuses or does not answer: it says nothing of any variant.
            Err(
                error @ (trellis_docker::EngineError::Unauthorized(_) | trellis_docker::EngineError::Unreachable(_)),
            ) => return Err(error),
            _ => {}
        }
    }
    Ok(records)
}

async fn read_one(
    registry: &Registry,
    repository: &str,
    tag: &str,
) -> Result<Option<RemoteRecord>, trellis_docker::EngineError> {
    let Some(digest) = registry.served(repository, tag).await? else { return Ok(None) };
    let Some(json) = registry.record(repository, &record_tag(&digest)).await? else { return Ok(None) };
    let record = serde_json::from_str::<RemoteRecord>(&json).ok();
    Ok(record.filter(|r| r.trellis == RECORD_VERSION && r.digest == digest))
}

/// How heavy a variant is, for balancing shards: the same on every machine that reads the same
/// registry. A record pushed under the current push key carries the weight its pusher balanced
/// with (so that a runner planning after another runner of the same stage pushed still splits
/// the stage as that one did); an older record, the durations it measured; no record, a default
/// per node (`default_ms`).
pub fn weight(record: Option<&RemoteRecord>, push_key: &str, default_ms: u64) -> u64 {
    match record {
        Some(record) if record.push_key == push_key && record.balance_ms > 0 => record.balance_ms,
        Some(record) if record.total_ms() > 0 => record.total_ms(),
        _ => default_ms,
    }
}

/// The reason a node is up to date by the registry's record.
pub(crate) fn served_elsewhere(registry: &str, digest: &str) -> String {
    format!("served by {registry} at {}, {ELSEWHERE}", short(digest))
}

/// Whether a plan's reason is [`served_elsewhere`]'s: such a skip is not recorded in the state
/// store (the machine did nothing; the next run asks the registry again).
pub(crate) fn is_served_elsewhere(reason: &str) -> bool {
    reason.starts_with("served by ") && reason.ends_with(ELSEWHERE)
}

const ELSEWHERE: &str = "built elsewhere";

/// A short digest or image ID for reasons and log lines.
pub(crate) fn short(digest: &str) -> &str {
    let hex = digest.trim_start_matches("sha256:");
    &hex[..hex.len().min(12)]
}

/// What a push records besides what it pushed, fixed when the run is planned.
#[derive(Debug, Clone, Default)]
pub(crate) struct RecordPlan {
    /// Per platform slot: the platform (`None`: the engine's own) and the build key.
    pub images: Vec<(Option<String>, String)>,
    /// Every test of the variant: node id → key.
    pub tests: BTreeMap<String, String>,
    /// The variant's build and test nodes, whose durations are recorded.
    pub nodes: Vec<String>,
    /// The weight the variant is balanced with ([`weight`]).
    pub balance_ms: u64,
    /// The run tests: the tests' keys are recorded (and the push key, which covers them).
    pub tested: bool,
}

impl RecordPlan {
    pub fn of(graph: &trellis_graph::Graph, variant: usize, balance_ms: u64, tested: bool) -> Self {
        let mut plan = Self { balance_ms, tested, ..Self::default() };
        for platform in &graph.variants[variant].platforms {
            let build = &graph.dag[platform.build];
            plan.images.push((platform.platform.clone(), build.key.to_hex()));
            plan.nodes.push(build.id.clone());
            for &test in &platform.tests {
                let test = &graph.dag[test];
                plan.tests.insert(test.id.clone(), test.key.to_hex());
                plan.nodes.push(test.id.clone());
            }
        }
        plan
    }
}

/// A variant's weight when nothing was recorded: the run's default cost per node.
pub(crate) fn default_weight(graph: &trellis_graph::Graph, variant: usize) -> u64 {
    (graph.variants[variant].platforms.iter())
        .map(|platform| DEFAULT_BUILD_MS + DEFAULT_TEST_MS * platform.tests.len() as u64)
        .sum::<u64>()
        + DEFAULT_PUSH_MS
}

/// Default costs of nodes never measured (critical-path priority, shard weights).
pub(crate) const DEFAULT_BUILD_MS: u64 = 30_000;
pub(crate) const DEFAULT_TEST_MS: u64 = 5_000;
pub(crate) const DEFAULT_PUSH_MS: u64 = 2_000;

/// The shard weight of `variant` in `graph`, from what `remote` recorded.
pub(crate) fn variant_weight(graph: &trellis_graph::Graph, remote: &RemoteFacts, variant: usize) -> u64 {
    let push_key = graph.dag[graph.variants[variant].push].key.to_hex();
    weight(remote.records.get(&variant), &push_key, default_weight(graph, variant))
}
