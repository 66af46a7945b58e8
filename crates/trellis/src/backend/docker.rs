//! The Docker Engine worker: builds through the chosen builder, tests as layers on the exact
//! image, tags, pushes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use trellis_docker::labels;
use trellis_exec::{ErrorClass, JobContext, JobError};
use trellis_graph::{Component, ContextWalk, Node, NodeKind};
use trellis_model::{Variant, VariantTestBody};

use super::{NodeJob, NodeOutput};

/// The Docker Engine: builds, tests as layers, tags, pushes.
#[derive(Debug)]
pub(crate) struct DockerBackend {
    pub client: trellis_docker::DockerClient,
    /// The builder every build and test goes through.
    pub builder: Arc<dyn trellis_docker::Builder>,
    pub model: Arc<trellis_model::Model>,
    /// Image ID per (variant, platform slot): up-to-date builds from the listing, then this
    /// run's builds.
    pub images: Mutex<HashMap<(usize, usize), String>>,
    /// The engine's own platform (`linux/amd64`).
    pub native: String,
    /// Push target (`--registry` or the settings'), and its credentials from the docker
    /// config, looked up once per run.
    pub registry: Option<String>,
    pub credentials: Option<trellis_docker::DockerCredentials>,
    /// The run's client of that registry (the records were read with it; pushes go through
    /// it), so that each repository is authorised once per run.
    pub registry_client: Option<Arc<trellis_docker::registry::Registry>>,
    /// `org.opencontainers.image.*` labels of this run (created; revision and source when in
    /// git). Not part of any key: a new commit alone must not rebuild anything.
    pub run_labels: HashMap<String, String>,
    /// trellis's own files: left out of the tars as they were left out of the keys.
    pub own_files: Arc<trellis_graph::OwnFiles>,
    /// Per variant, the variants its Dockerfile builds on.
    pub parents: Vec<Vec<usize>>,
    /// Per variant, per test: the variants a Dockerfile test names besides the image under
    /// test.
    pub test_parents: Vec<Vec<Vec<usize>>>,
    /// Per variant, the external images its Dockerfile builds on, and their images (per
    /// platform for variants with `platforms`).
    pub external_bases: Vec<Vec<String>>,
    pub base_images: trellis_graph::BaseImageIds,
    /// What the engine and the registry held when attached.
    pub facts: Arc<super::EngineFacts>,
    /// Per (variant, platform slot): the image the registry's record names for the current
    /// key, pulled by digest when a node that runs needs it.
    pub recorded: HashMap<(usize, usize), Recorded>,
    /// One such pull at a time; and the images pulled (no local reference names them).
    pub pulls: tokio::sync::Mutex<()>,
    pub pulled: Mutex<HashSet<(usize, usize)>>,
    /// The last known duration of each node (ms): the store's or the registry's, then this
    /// run's. A push records its variant's.
    pub durations: Mutex<HashMap<String, u64>>,
    /// How layers are compressed on their way to the registry.
    pub compression: trellis_docker::Compression,
    /// Layers' compressed forms known to be published (by diff ID): the registry's records of
    /// this compressor, then this run's pushes.
    pub known_layers: Mutex<trellis_docker::publish::LayerMap>,
}

/// An image built elsewhere: where to pull it from (`registry/repository@sha256:…`), the
/// image ID it must be, and its platform when the variant names platforms.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub reference: String,
    pub image: crate::remote::RecordedImage,
    pub platform: Option<String>,
}

/// The OCI labels describing this run: when, and from which commit of which repository.
pub(crate) fn run_labels(root: &std::path::Path) -> HashMap<String, String> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let mut labels = HashMap::new();
    labels.insert(
        "org.opencontainers.image.created".to_owned(),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    );
    if let Some(revision) = git(&["rev-parse", "HEAD"]) {
        labels.insert("org.opencontainers.image.revision".to_owned(), revision);
    }
    if let Some(source) = git(&["config", "--get", "remote.origin.url"]) {
        labels.insert("org.opencontainers.image.source".to_owned(), source);
    }
    labels
}

/// Retried: what can be transient (an engine or registry away, a failing RUN step). Not
/// retried: what the engine refuses as it stands, and refused credentials.
fn engine_error(error: trellis_docker::EngineError) -> JobError {
    use trellis_docker::EngineError as E;
    let class = match error {
        E::Unreachable(_) => ErrorClass::EngineUnreachable,
        E::Failed(_) => ErrorClass::NodeFailed,
        E::Refused(_) => ErrorClass::InvalidInput,
        E::Unauthorized(_) => ErrorClass::AccessDenied,
    };
    JobError::new(class, error.to_string())
}

fn invalid(message: impl Into<String>) -> JobError {
    JobError::new(ErrorClass::InvalidInput, message)
}

type Ctx = JobContext<NodeOutput>;

/// A build's stand-ins for its parents and bases: the Dockerfile naming them, and the
/// temporary tags to take off afterwards.
struct StandIns {
    dockerfile: Option<String>,
    tags: Vec<String>,
}

impl DockerBackend {
    pub async fn run(&self, job: &NodeJob, ctx: &Ctx) -> Result<NodeOutput, JobError> {
        let node = &job.node;
        let variant = &self.model.variants[node.variant];
        let started = Instant::now();
        let output = match node.kind {
            NodeKind::Build => self.build(node, variant, job.no_cache, ctx).await,
            NodeKind::Test => self.test(node, variant, ctx).await,
            NodeKind::Tag => self.tag(node, variant, ctx).await,
            NodeKind::Push => self.push(node, variant, job.record.as_deref(), ctx).await,
            NodeKind::Render => Err(invalid("render nodes are written by the runner, not the engine")),
        }?;
        if let Ok(mut durations) = self.durations.lock() {
            durations.insert(node.id.clone(), started.elapsed().as_millis() as u64);
        }
        Ok(output)
    }

    /// The image ID of a variant for one platform slot: built in this run, up to date in the
    /// engine, or pulled by the digest the registry's record names (once).
    async fn image_of(&self, variant: usize, slot: usize, ctx: &Ctx) -> Result<String, JobError> {
        if let Some(id) = self.known_here(variant, slot)? {
            return Ok(id);
        }
        let _one_at_a_time = self.pulls.lock().await;
        if let Some(id) = self.known_here(variant, slot)? {
            return Ok(id);
        }
        let Some(recorded) = self.recorded.get(&(variant, slot)) else {
            return Err(invalid(format!("the image of {} is not in the engine", self.model.variants[variant].id)));
        };
        ctx.line(format!("pulling {} (built elsewhere, by the digest its record names)", recorded.reference));
        let credentials = trellis_docker::credentials_for(&self.facts.remote.registry);
        let mut log = |line: &str| ctx.line(line);
        let pulled = match &recorded.platform {
            Some(platform) => self.client.pull_platform(&recorded.reference, platform, credentials, &mut log).await,
            None => self.client.pull(&recorded.reference, credentials, &mut log).await,
        };
        let id = pulled.map_err(engine_error)?;
        if !recorded.image.is(&id) {
            return Err(JobError::failed(format!(
                "{} is image {id}, not the image {} its record names",
                recorded.reference, recorded.image.image
            )));
        }
        self.images.lock().map_err(|_| JobError::failed("image table poisoned"))?.insert((variant, slot), id.clone());
        self.pulled.lock().map_err(|_| JobError::failed("pull table poisoned"))?.insert((variant, slot));
        Ok(id)
    }

    /// The image of a variant's slot in this engine (built in this run or up to date).
    fn known_here(&self, variant: usize, slot: usize) -> Result<Option<String>, JobError> {
        let images = self.images.lock().map_err(|_| JobError::failed("image table poisoned"))?;
        Ok(images.get(&(variant, slot)).cloned())
    }

    /// The image ID of a variant's slot without pulling anything: here, or as recorded.
    fn known_image(&self, variant: usize, slot: usize) -> Option<String> {
        let here = self.known_here(variant, slot).ok().flatten();
        here.or_else(|| Some(self.recorded.get(&(variant, slot))?.image.image.clone()))
    }

    /// Whether the variant's local references may not name this image: it was pulled by
    /// digest, or it is another platform's.
    fn needs_stand_in(&self, variant: usize, slot: usize, platform: &str) -> bool {
        platform != self.native || self.pulled.lock().is_ok_and(|pulled| pulled.contains(&(variant, slot)))
    }

    /// The platform a build or test node runs for (the engine's own when unnamed), and its
    /// slot among the variant's platforms.
    fn platform_of<'a>(&'a self, node: &'a Node) -> (&'a str, usize) {
        let platform = node.platform.as_deref().unwrap_or(&self.native);
        let variant = &self.model.variants[node.variant];
        (platform, trellis_graph::platform_slot(variant, platform, &self.native).unwrap_or(0))
    }

    /// The parent's slot for `platform` (the compiler checked that it has one).
    fn parent_slot(&self, parent: usize, platform: &str) -> Result<usize, JobError> {
        trellis_graph::platform_slot(&self.model.variants[parent], platform, &self.native)
            .ok_or_else(|| invalid(format!("{} is not built for {platform}", self.model.variants[parent].id)))
    }

    async fn build(&self, node: &Node, variant: &Variant, no_cache: bool, ctx: &Ctx) -> Result<NodeOutput, JobError> {
        let walk = self.walk_planned_context(node, variant).await?;
        let (platform, slot) = self.platform_of(node);
        let mut args = variant.args.clone();
        if node.platform.is_some() {
            args.extend(trellis_model::platform::build_args(platform, &self.native));
        }
        // The parents' tested images for this platform (pulled when built elsewhere).
        let mut parents = Vec::new();
        for &parent in &self.parents[node.variant] {
            let slot = self.parent_slot(parent, platform)?;
            parents.push((parent, slot, self.image_of(parent, slot, ctx).await?));
        }
        let stand_ins = self.stand_ins(node, variant, platform, &parents).await?;
        let request = trellis_docker::BuildRequest {
            dockerfile: stand_ins.dockerfile.as_deref().unwrap_or(&variant.dockerfile),
            context: Some(&walk),
            args: &args,
            labels: self.build_labels(node, variant, &parents),
            network: variant.network.as_str(),
            target: variant.target.as_deref(),
            no_cache,
            platform: node.platform.as_deref(),
        };
        let mut trace = trellis_docker::BuildTrace::default();
        let mut log = |line: &str| ctx.line(line);
        let id = tokio::select! {
            result = self.builder.build(request, &mut trace, &mut log) => result.map_err(engine_error),
            () = ctx.cancel.cancelled() => Err(JobError::cancelled()),
        };
        for tag in &stand_ins.tags {
            self.client.untag(tag).await;
        }
        // Dropping the stream does not stop a running step: remove what it left.
        if id.is_err() {
            self.builder.clean_up(&trace).await;
        }
        let id = id?;
        if let Ok(mut images) = self.images.lock() {
            images.insert((node.variant, slot), id.clone());
        }
        Ok(NodeOutput::image(id))
    }

    /// The engine's tags name the images of one platform. A build for another platform
    /// stands on its parents' tested images for that platform instead, and a build for a
    /// named platform on its external bases' images for it: each gets a temporary local tag,
    /// and the Dockerfile sent (not the one rendered) names it.
    async fn stand_ins(
        &self,
        node: &Node,
        variant: &Variant,
        platform: &str,
        parents: &[(usize, usize, String)],
    ) -> Result<StandIns, JobError> {
        let canonical = |reference: &str| trellis_model::normalise_reference(reference).unwrap_or_default();
        // The references FROM lines name, and the image to stand for them on this platform.
        let mut wanted: Vec<(Vec<String>, String)> = Vec::new();
        for (parent, slot, image) in parents {
            if self.needs_stand_in(*parent, *slot, platform) {
                wanted.push((self.canonical_references(*parent), image.clone()));
            }
        }
        if let Some(named) = node.platform.as_deref() {
            for base in &self.external_bases[node.variant] {
                let image = (self.base_images.get(base, Some(named)))
                    .ok_or_else(|| invalid(format!("no {named} image of the base {base} was resolved")))?;
                wanted.push((vec![canonical(base)], image.clone()));
            }
        }
        Self::tag_stand_ins(&self.client, wanted, &variant.dockerfile, &variant.args).await
    }

    /// Gives each image of `wanted` a temporary tag and writes it into `dockerfile` in place of
    /// the references it stands for. A tag that cannot be made takes the ones made before it
    /// off again.
    async fn tag_stand_ins(
        client: &trellis_docker::DockerClient,
        wanted: Vec<(Vec<String>, String)>,
        dockerfile: &str,
        args: &[(String, String)],
    ) -> Result<StandIns, JobError> {
        let mut stand_in: HashMap<String, String> = HashMap::new();
        let mut tags = Vec::new();
        for (references, image) in wanted {
            match client.temporary_tag(&image).await {
                Ok(tag) => {
                    stand_in.extend(references.into_iter().map(|reference| (reference, tag.clone())));
                    tags.push(tag);
                }
                Err(error) => {
                    for tag in &tags {
                        client.untag(tag).await;
                    }
                    return Err(engine_error(error));
                }
            }
        }
        let dockerfile = (!stand_in.is_empty()).then(|| {
            trellis_graph::dockerfile::replace_images(dockerfile, args, |reference| {
                stand_in.get(&trellis_model::normalise_reference(reference)?).cloned()
            })
        });
        Ok(StandIns { dockerfile, tags })
    }

    /// The references a variant's Dockerfile users may name it by, canonical.
    fn canonical_references(&self, variant: usize) -> Vec<String> {
        let references = self.model.variants[variant].references.iter();
        references.map(|r| trellis_model::normalise_reference(&r.to_string()).unwrap_or_default()).collect()
    }

    /// The build context, walked again for the tar: the same walk as the key, and refused
    /// when its content is no longer what was planned.
    async fn walk_planned_context(&self, node: &Node, variant: &Variant) -> Result<ContextWalk, JobError> {
        let dir = self.model.root.join(&variant.context);
        let own = self.own_files.in_context(&variant.context);
        let planned = node.component(&Component::Context).map(str::to_owned);
        let (walk, digest) = tokio::task::spawn_blocking(move || {
            let walk = ContextWalk::new(&dir, &own)?;
            let digest = walk.digest()?;
            Ok::<_, trellis_graph::ContextError>((walk, digest))
        })
        .await
        .map_err(|e| JobError::failed(e.to_string()))?
        .map_err(|e| invalid(e.to_string()))?;
        if planned.as_deref() != Some(digest.to_hex().as_str()) {
            return Err(invalid("the build context changed after planning: run trellis build again"));
        }
        Ok(walk)
    }

    /// The run's OCI labels, the matrix's own, and trellis's (which the skip listing reads).
    fn build_labels(
        &self,
        node: &Node,
        variant: &Variant,
        parents: &[(usize, usize, String)],
    ) -> HashMap<String, String> {
        let mut labels = self.run_labels.clone();
        // The version is the variant's first tag unless the matrix says otherwise (like the
        // run's labels it is not part of the key: renaming a tag rebuilds nothing).
        if let Some(first) = variant.references.first() {
            labels.insert("org.opencontainers.image.version".to_owned(), first.tag.clone());
        }
        labels.extend(variant.labels.iter().cloned());
        labels.insert(labels::WORKSPACE.to_owned(), self.model.settings.name.clone());
        labels.insert(labels::VARIANT.to_owned(), variant.id.clone());
        labels.insert(labels::KEY.to_owned(), node.key.to_hex());
        if let Some(platform) = &node.platform {
            labels.insert(labels::PLATFORM.to_owned(), platform.clone());
        }
        // The tested images of the parents the FROM lines resolve to now: a parent rebuilt
        // later under the same key then makes this image stale.
        let parents: Vec<String> =
            parents.iter().map(|(parent, _, image)| format!("{}@{image}", self.model.variants[*parent].id)).collect();
        labels.insert(labels::PARENTS.to_owned(), parents.join(","));
        labels
    }

    async fn test(&self, node: &Node, variant: &Variant, ctx: &Ctx) -> Result<NodeOutput, JobError> {
        let (platform, slot) = self.platform_of(node);
        let image = self.image_of(node.variant, slot, ctx).await?;
        let index = node.test.unwrap_or_default();
        let test = &variant.tests[index];
        // A Dockerfile test's context, walked before the request borrows it, and the other
        // workspace images it names: their tested images for this platform (pulled when
        // built elsewhere), never what a local tag happens to name.
        let mut stand_ins = StandIns { dockerfile: None, tags: Vec::new() };
        let user_test = match &test.body {
            VariantTestBody::Run(_) => None,
            VariantTestBody::Dockerfile { context, text, .. } => {
                let own = self.own_files.in_context(context);
                let walk =
                    ContextWalk::new(&self.model.root.join(context), &own).map_err(|e| invalid(e.to_string()))?;
                let mut wanted = Vec::new();
                for &parent in &self.test_parents[node.variant][index] {
                    let slot = self.parent_slot(parent, platform)?;
                    wanted.push((self.canonical_references(parent), self.image_of(parent, slot, ctx).await?));
                }
                stand_ins = Self::tag_stand_ins(&self.client, wanted, text, &[]).await?;
                Some((stand_ins.dockerfile.as_deref().unwrap_or(text), walk))
            }
        };
        let request = trellis_docker::TestRequest {
            image_id: &image,
            run: match &test.body {
                VariantTestBody::Run(lines) => Some(lines),
                VariantTestBody::Dockerfile { .. } => None,
            },
            dockerfile: user_test.as_ref().map(|(text, walk)| (*text, walk)),
            network: test.network.as_str(),
            platform: node.platform.as_deref(),
        };
        let mut trace = trellis_docker::BuildTrace::default();
        let mut log = |line: &str| ctx.line(line);
        let result = tokio::select! {
            result = self.builder.test(request, &mut trace, &mut log) => result.map_err(engine_error),
            () = ctx.cancel.cancelled() => Err(JobError::cancelled()),
        };
        // After success, failure and cancellation alike: no test container or image stays.
        self.builder.clean_up(&trace).await;
        for tag in &stand_ins.tags {
            self.client.untag(tag).await;
        }
        result?;
        Ok(NodeOutput::image(image))
    }

    /// Points every reference at the image of the engine's own platform; a variant built for
    /// other platforms only has no local references (they live in the registry), and those an
    /// earlier build left are taken off.
    async fn tag(&self, node: &Node, variant: &Variant, ctx: &Ctx) -> Result<NodeOutput, JobError> {
        let Some(slot) = trellis_graph::platform_slot(variant, &self.native, &self.native) else {
            // References left from when it was built for this platform would name a stale image.
            for reference in variant.references.iter().map(ToString::to_string) {
                if self.client.image_id(&reference).await.map_err(engine_error)?.is_some() {
                    self.client.untag(&reference).await;
                    ctx.line(format!(
                        "took {reference} off its image: the variant is no longer built for {}",
                        self.native
                    ));
                }
            }
            ctx.line(format!("not built for the engine's platform {}: no local references", self.native));
            return Ok(NodeOutput::default());
        };
        let image = self.image_of(node.variant, slot, ctx).await?;
        for reference in &variant.references {
            let reference = reference.to_string();
            self.client.tag(&image, &reference).await.map_err(engine_error)?;
            ctx.line(format!("tagged {reference}"));
        }
        Ok(NodeOutput::image(image))
    }

    /// Pushes the variant's tested images under every reference, then records in the
    /// registry what was pushed (see [`crate::remote`]). When the registry already serves the
    /// recorded images under every reference (a push re-run because a test changed), only the
    /// record is written, and nothing is pulled.
    async fn push(
        &self,
        node: &Node,
        variant: &Variant,
        plan: Option<&crate::remote::RecordPlan>,
        ctx: &Ctx,
    ) -> Result<NodeOutput, JobError> {
        let registry = self
            .registry
            .as_deref()
            .ok_or_else(|| invalid("no registry: set `registry` in settings or pass --registry"))?;
        // Made at attach whenever there is a registry.
        let client = self.registry_client.as_deref().ok_or_else(|| invalid("no registry client"))?;
        let (output, published) = match self.served_as_recorded(node, variant, plan, client, ctx).await? {
            Some(served) => served,
            None => self.publish(node, variant, registry, client, ctx).await?,
        };
        if let (Some(plan), Some(digest)) = (plan, &output.digest) {
            let record = self.record(node, variant, plan, digest, published)?;
            let repository = &variant.references.first().ok_or_else(|| invalid("no references"))?.repository;
            let json = serde_json::to_string(&record).map_err(|e| JobError::failed(e.to_string()))?;
            let tag = crate::remote::record_tag(digest);
            (client.put_record(repository, &tag, &json).await).map_err(|e| self.registry_error(registry, e))?;
            ctx.line(format!("recorded {registry}/{repository}:{tag}"));
        }
        Ok(output)
    }

    /// When the registry's record names the images this push would push and every reference
    /// serves its digest: the output, without pulling or pushing anything.
    async fn served_as_recorded(
        &self,
        node: &Node,
        variant: &Variant,
        plan: Option<&crate::remote::RecordPlan>,
        client: &trellis_docker::registry::Registry,
        ctx: &Ctx,
    ) -> Result<Option<(NodeOutput, Vec<Published>)>, JobError> {
        let (Some(plan), Some(record)) = (plan, self.facts.remote.records.get(&node.variant)) else { return Ok(None) };
        // The record serves this push when it names, for every platform, the image at this
        // build key, in this compression — and the very image this engine holds, when it holds
        // one: a rebuild under the same key (a fresh runner that could not use the record, a
        // parent rebuilt) is another image, which must be published.
        let compression = self.model.settings.compression;
        let mut published = Vec::new();
        for (slot, (platform, key)) in plan.images.iter().enumerate() {
            let here = self.known_here(node.variant, slot)?;
            match record.image(platform.as_deref()) {
                Some(image)
                    if &image.build_key == key
                        && image.published_with(compression)
                        && here.as_deref().is_none_or(|id| image.is(id)) =>
                {
                    published.push(Published::as_recorded(image))
                }
                _ => return Ok(None),
            }
        }
        for reference in &variant.references {
            let served = client.served(&reference.repository, &reference.tag).await;
            let registry = &self.facts.remote.registry;
            if served.map_err(|e| self.registry_error(registry, e))?.as_deref() != Some(record.digest.as_str()) {
                return Ok(None);
            }
        }
        ctx.line(format!("every reference already serves {}, as recorded", record.digest));
        let slot = trellis_graph::platform_slot(variant, &self.native, &self.native);
        let image = slot.and_then(|slot| self.known_image(node.variant, slot));
        // The image here: the pushed references name it locally too, as after a publish.
        let here = slot.map(|slot| self.known_here(node.variant, slot)).transpose()?.flatten();
        if let (Some(here), Some(registry)) = (here, self.registry.as_deref()) {
            self.tag_pushed(&here, variant, registry).await?;
        }
        Ok(Some((NodeOutput { image, digest: Some(record.digest.clone()) }, published)))
    }

    /// The record of what this push published: per platform slot, the image, the manifest
    /// digest it has in the first reference's repository, and its layers as published.
    fn record(
        &self,
        node: &Node,
        variant: &Variant,
        plan: &crate::remote::RecordPlan,
        digest: &str,
        published: Vec<Published>,
    ) -> Result<crate::remote::RemoteRecord, JobError> {
        let mut images = Vec::new();
        for (slot, ((platform, build_key), published)) in plan.images.iter().zip(published).enumerate() {
            let image = (self.known_image(node.variant, slot)).ok_or_else(|| invalid("the pushed image is unknown"))?;
            let wanted = platform.as_deref().unwrap_or(&self.native);
            let mut parents = std::collections::BTreeMap::new();
            for &parent in &self.parents[node.variant] {
                let parent_image = self.known_image(parent, self.parent_slot(parent, wanted)?);
                let parent_image = parent_image.ok_or_else(|| invalid("a parent's image is unknown"))?;
                parents.insert(self.model.variants[parent].id.clone(), parent_image);
            }
            images.push(crate::remote::RecordedImage {
                platform: platform.clone(),
                build_key: build_key.clone(),
                image,
                manifest: published.manifest,
                config: published.config,
                parents,
                compressor: published.compressor,
                layers: published.layers,
            });
        }
        let durations = self.durations.lock().map_err(|_| JobError::failed("duration table poisoned"))?;
        let durations_ms = (plan.nodes.iter()).filter_map(|id| Some((id.clone(), *durations.get(id)?))).collect();
        Ok(crate::remote::RemoteRecord {
            trellis: crate::remote::RECORD_VERSION,
            workspace: self.model.settings.name.clone(),
            variant: variant.id.clone(),
            digest: digest.to_owned(),
            // Without its tests' results the record must not make a push look done.
            push_key: if plan.tested { node.key.to_hex() } else { String::new() },
            images,
            tests: if plan.tested { plan.tests.clone() } else { Default::default() },
            durations_ms,
            balance_ms: plan.balance_ms,
        })
    }

    /// A push or registry error; a refusal names the registry and the user.
    fn registry_error(&self, registry: &str, error: trellis_docker::EngineError) -> JobError {
        match error {
            // Spoken to directly (an index push), not through the engine.
            trellis_docker::EngineError::Unreachable(detail) if detail.starts_with("registry ") => {
                JobError::new(ErrorClass::EngineUnreachable, format!("cannot reach the {detail}"))
            }
            // The engine answered; the registry it pushes to did not.
            trellis_docker::EngineError::Unreachable(detail) if detail.contains(registry) => {
                JobError::new(ErrorClass::EngineUnreachable, format!("cannot reach the registry {registry}: {detail}"))
            }
            trellis_docker::EngineError::Unauthorized(detail) => {
                let user = self.credentials.as_ref().and_then(|c| c.username.as_deref());
                JobError::new(ErrorClass::AccessDenied, crate::error::refused(registry, user, &detail))
            }
            other => engine_error(other),
        }
    }
}

/// One platform's image as published: what its record says of it.
pub(crate) struct Published {
    manifest: String,
    config: String,
    compressor: Option<String>,
    layers: Vec<crate::remote::RecordedLayer>,
}

impl Published {
    fn as_recorded(image: &crate::remote::RecordedImage) -> Self {
        Self {
            manifest: image.manifest.clone(),
            config: image.config.clone(),
            compressor: image.compressor.clone(),
            layers: image.layers.clone(),
        }
    }

    fn pushed(image: &trellis_docker::publish::PushedImage) -> Self {
        let layers = (image.layers.iter())
            .map(|(diff_id, layer)| crate::remote::RecordedLayer {
                diff_id: diff_id.clone(),
                digest: layer.digest.clone(),
                size: layer.size,
            })
            .collect();
        Self {
            manifest: image.digest.clone(),
            config: image.config.clone(),
            compressor: image.compressor.map(str::to_owned),
            layers,
        }
    }
}

impl DockerBackend {
    /// Each platform's tested image goes to every repository of the variant's references by
    /// digest (no tag), compressed (DESIGN §12); then what every reference serves is put under
    /// each: the image's manifest for a variant without platforms, else one index naming every
    /// platform's. No reference moves before every image is in the registry; a reference
    /// already serving it costs one request.
    async fn publish(
        &self,
        node: &Node,
        variant: &Variant,
        registry: &str,
        client: &trellis_docker::registry::Registry,
        ctx: &Ctx,
    ) -> Result<(NodeOutput, Vec<Published>), JobError> {
        let mut repositories: Vec<&str> = Vec::new();
        for reference in &variant.references {
            if !repositories.contains(&reference.repository.as_str()) {
                repositories.push(&reference.repository);
            }
        }
        // Layers shared with a parent are mounted from the parent's repository.
        let parents = self.parents[node.variant].iter().map(|&p| self.model.variants[p].repository.clone());
        let mut mount_from: Vec<String> = parents.collect();
        let slots: Vec<Option<&str>> = variant.platform_slots();
        let mut served = None;
        let mut published = Vec::new();
        for repository in repositories.iter().copied() {
            let mut images = Vec::new();
            for (slot, platform) in slots.iter().enumerate() {
                let image = self.image_of(node.variant, slot, ctx).await?;
                let known = self.known_layers.lock().map_err(|_| JobError::failed("layer table poisoned"))?.clone();
                let options = trellis_docker::publish::PushOptions {
                    mount_from: &mount_from,
                    compression: self.compression,
                    known: &known,
                };
                let mut log = |line: &str| ctx.line(line);
                let pushed = tokio::select! {
                    result = client.push_image(&self.client, &image, repository, options, &mut log) => {
                        result.map_err(|e| self.registry_error(registry, e))?
                    }
                    () = ctx.cancel.cancelled() => return Err(JobError::cancelled()),
                };
                if let Some(platform) = platform
                    && !trellis_model::platform::matches(&pushed.platform.to_string(), platform)
                {
                    return Err(invalid(format!(
                        "the {platform} image {image} is a {} image: the build did not honour its platform",
                        pushed.platform
                    )));
                }
                self.remember_layers(&pushed);
                images.push(pushed);
            }
            // Per platform slot, in the first reference's repository: what the record names.
            if published.is_empty() {
                published = images.iter().map(Published::pushed).collect();
            }
            served = Some(match variant.platforms.is_empty() {
                true => trellis_docker::registry::ImageIndex::manifest_of(&images[0]),
                // In platform order: the same images give the same index whatever order the
                // platforms are written in.
                false => {
                    images.sort_by_key(|image| image.platform.to_string());
                    trellis_docker::registry::ImageIndex::of(&images)
                }
            });
            mount_from.push(repository.to_owned());
        }
        let Some(served) = served else { return Err(invalid("the variant has no references to push")) };
        let what = if variant.platforms.is_empty() { "manifest" } else { "index" };
        for reference in &variant.references {
            let put = tokio::select! {
                result = client.put_index(&reference.repository, &reference.tag, &served) => {
                    result.map_err(|e| self.registry_error(registry, e))?
                }
                () = ctx.cancel.cancelled() => return Err(JobError::cancelled()),
            };
            let verb = if put { "put" } else { "already serves" };
            ctx.line(format!("{registry}/{reference} {verb} {what} {}", served.digest));
        }
        let native = trellis_graph::platform_slot(variant, &self.native, &self.native);
        let image = match native {
            Some(slot) => Some(self.image_of(node.variant, slot, ctx).await?),
            None => None,
        };
        // As `docker push` leaves it: the pushed references name the engine's platform's image
        // locally too (a workspace building FROM them then finds them without pulling).
        if let Some(image) = &image {
            self.tag_pushed(image, variant, registry).await?;
        }
        Ok((NodeOutput { image, digest: Some(served.digest) }, published))
    }

    /// The variant's pushed references, `registry/reference`, put on `image` locally.
    async fn tag_pushed(&self, image: &str, variant: &Variant, registry: &str) -> Result<(), JobError> {
        for reference in &variant.references {
            self.client.tag(image, &format!("{registry}/{reference}")).await.map_err(engine_error)?;
        }
        Ok(())
    }

    /// What this push learnt of layers' compressed forms, for the pushes after it.
    fn remember_layers(&self, pushed: &trellis_docker::publish::PushedImage) {
        if let Ok(mut known) = self.known_layers.lock() {
            known.extend(pushed.layers.iter().cloned());
        }
    }
}
