//! Attaching a workspace to the Docker engine before anything runs: external bases resolved to
//! image IDs (pulled per the `pull` policy when building), and the listing of the workspace's
//! images by build key that judges every build and tag (by name first, by label when needed).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use trellis_docker::{BuilderKind, DockerClient, EngineError, ImageListing};
use trellis_exec::RetryPolicy;
use trellis_model::{BuilderChoice, PullPolicy};

use crate::backend::{Backend, DockerBackend, EngineFacts, Worker};
use crate::error::Error;
use crate::events::{Event, EventSink};
use crate::facade::Workspace;

/// What attaching is for.
#[derive(Debug, Clone, Default)]
pub struct Attach {
    /// Pull bases per the `pull` policy (a build). A plan never pulls: it reports what a build
    /// would pull.
    pub pull: bool,
    /// The run pushes: credentials for the push registry are looked up once, and what the
    /// registry serves is asked before planning.
    pub push: bool,
    /// The FILTERs of the run: only the external bases of the variants they select (with
    /// their parents) are resolved, pulled and required. Empty: every variant.
    pub filters: Vec<String>,
    /// The stage and shard of the run: with a shard, the registry's record of every selected
    /// variant is read (not only of those the engine lacks), to balance the shards.
    pub slice: crate::facade::Slice,
}

impl Workspace {
    /// Connects to the Docker engine (DOCKER_HOST or the default socket), resolves the
    /// external bases to image IDs (pulling per `how.pull`; pulls are told to `sink`), picks
    /// the builder, keys the workspace with all of it, and returns the backend `run` uses.
    /// Under `pull "never"` a missing base is an error here, before anything builds; a base
    /// left without an ID (a plan pulls nothing) is in [`Workspace::unresolved_bases`].
    /// On error the workspace is unchanged (still usable offline).
    pub async fn attach(&mut self, how: Attach, sink: &mut dyn EventSink) -> Result<Backend, Error> {
        let registry = self.graph_inputs().registry.clone();
        if how.push && registry.is_none() {
            return Err(Error::Unsupported(
                "--push needs a registry: set `registry` in settings or pass --registry".to_owned(),
            ));
        }
        let client = connect().await?;
        let builder = choose_builder(&client, self.model().settings.builder)?;
        let selection = self.select(&how.filters)?;
        let native = client.platform().to_owned();
        let ids = resolve_bases(&client, self, &selection, how.pull, sink).await?;
        let store = crate::state::StateStore::read(&self.state_dir()).ok();
        let listing = self.key_while_listing(&client, ids, builder, native, store.as_ref()).await?;
        // Read once: which image a key names, what was pushed, the last durations.
        let by_key = images_by_key(&client, listing, self, store.as_ref()).await?;
        // One client per run for what is served, the records and the pushes: one auth handshake
        // per repository.
        let registry_client = (registry.as_deref())
            .map(|r| Arc::new(trellis_docker::registry::Registry::new(r, trellis_docker::credentials_for(r))));
        let served = match (&registry_client, how.push) {
            (Some(client), true) => Some((client.host().to_owned(), served_digests(client, self, &selection).await?)),
            _ => None,
        };
        let remote = match &registry_client {
            Some(client) => read_remote(self, &selection, &by_key, store.as_ref(), client, &how, sink).await?,
            None => crate::remote::RemoteFacts::default(),
        };
        // What the registry serves for a key wins over an image this engine built under the
        // same key and never published (another checkout's build, a run without --push): the
        // family is then built on, tagged and pushed as published, and no reference moves.
        let by_key = prefer_published(self, by_key, &remote)?;
        let graph = self.graph()?;
        let mut up_to_date: HashMap<(usize, usize), String> = HashMap::new();
        for (v, nodes) in graph.variants.iter().enumerate() {
            for (slot, platform) in nodes.platforms.iter().enumerate() {
                if let Some(image) = by_key.get(&graph.dag[platform.build].key.to_hex()) {
                    up_to_date.insert((v, slot), image.id.clone());
                }
            }
        }
        let recorded = recorded_images(self, &remote)?;
        let compression = trellis_docker::Compression::from(self.model().settings.compression);
        let known_layers = published_layers(&remote, compression);
        let facts = Arc::new(EngineFacts { by_key, served, builder, remote });
        let docker = DockerBackend {
            builder: client.builder(builder),
            client,
            model: self.shared_model(),
            images: Mutex::new(up_to_date),
            run_labels: crate::backend::run_labels(&self.model().root),
            own_files: Arc::clone(&graph.own_files),
            parents: self.dependencies().parents.clone(),
            test_parents: self.dependencies().test_parents.clone(),
            external_bases: self.dependencies().external_bases.clone(),
            base_images: self.graph_inputs().base_images.clone(),
            native: graph.native_platform.clone(),
            credentials: registry.as_deref().filter(|_| how.push).and_then(trellis_docker::credentials_for),
            registry,
            registry_client,
            facts: Arc::clone(&facts),
            recorded,
            pulls: tokio::sync::Mutex::default(),
            pulled: Mutex::default(),
            durations: Mutex::new(known_durations(&facts, store.as_ref())),
            compression,
            known_layers: Mutex::new(known_layers),
        };
        Ok(Backend { worker: Worker::Docker(Arc::new(docker)), facts: Some(facts) })
    }

    /// Keys the workspace with the bases' IDs and the builder, hashing the build contexts on
    /// a blocking thread while the daemon lists the workspace's images (~0.1 s for 200): a
    /// no-op run costs the longer of the two, not their sum.
    async fn key_while_listing(
        &mut self,
        client: &DockerClient,
        ids: trellis_graph::BaseImageIds,
        builder: BuilderKind,
        native: String,
        store: Option<&crate::state::StateStore>,
    ) -> Result<Vec<ImageListing>, Error> {
        let mut inputs = self.graph_inputs().clone();
        inputs.base_images = ids;
        inputs.builder = Some(builder.to_string());
        inputs.native_platform = Some(native);
        let (model, dependencies, keyed_inputs) = (self.shared_model(), self.dependencies().clone(), inputs.clone());
        let hashing = tokio::task::spawn_blocking(move || {
            trellis_graph::Graph::build(&model, &dependencies, &keyed_inputs).map_err(Error::Invalid)
        });
        // The images tagged in the workspace's repositories first: after a run that tagged every
        // build, that is every build (and on the containerd store a tenth of the label listing's
        // time). When a build key is not among them, an untagged image may still hold it (a
        // build whose tests failed, a non-native platform's): the whole label listing then.
        let name = self.model().settings.name.clone();
        let mut repositories: Vec<String> =
            self.model().variants.iter().flat_map(|v| v.references.iter().map(|r| r.repository.clone())).collect();
        repositories.sort();
        repositories.dedup();
        let tagged = match repositories.len() {
            1..=MAX_NAMED_REPOSITORIES => Some(client.tagged_images(&name, &repositories).await),
            _ => None,
        };
        let graph = hashing.await.map_err(|e| Error::Report(std::io::Error::other(e)))??;
        // Covered: every build key is there, and where this machine built the key last, that
        // very image (a `--refresh` whose tests failed left its image untagged).
        let covered = |listing: &[ImageListing]| {
            let keys: HashSet<&str> =
                listing.iter().filter_map(|i| i.labels.get(trellis_docker::labels::KEY)).map(String::as_str).collect();
            let ids: HashSet<&str> = listing.iter().map(|i| i.id.as_str()).collect();
            graph.variants.iter().flat_map(|v| v.builds()).all(|b| {
                let (id, key) = (&graph.dag[b].id, graph.dag[b].key.to_hex());
                let built = (store.and_then(|s| s.get(id)))
                    .filter(|record| record.key == key)
                    .and_then(|record| record.details.image.as_deref());
                keys.contains(key.as_str()) && built.is_none_or(|image| ids.contains(image))
            })
        };
        let listing = match tagged.transpose().map_err(unreachable)? {
            Some(listing) if covered(&listing) => listing,
            _ => client.workspace_images(&name).await.map_err(unreachable)?,
        };
        self.set_keyed(inputs, graph);
        Ok(listing)
    }
}

/// Up to this many repositories are asked for by name (the query names each one).
const MAX_NAMED_REPOSITORIES: usize = 256;

/// The registry's records of the selected variants the engine lacks an image of (of all
/// selected variants with `how.all_records`). A registry that cannot be asked leaves the run
/// to judge by what this machine knows (with a warning: what others built is then rebuilt);
/// one refusing a pushing run's credentials stops it.
async fn read_remote(
    workspace: &Workspace,
    selection: &trellis_graph::Selection,
    by_key: &HashMap<String, ImageListing>,
    store: Option<&crate::state::StateStore>,
    client: &trellis_docker::registry::Registry,
    how: &Attach,
    sink: &mut dyn EventSink,
) -> Result<crate::remote::RemoteFacts, Error> {
    let registry = client.host();
    let graph = workspace.graph()?;
    let model = workspace.model();
    let lacking = |v: usize| graph.variants[v].builds().any(|b| !by_key.contains_key(&graph.dag[b].key.to_hex()));
    // A pushing run also asks about the variants this machine has not pushed at their current
    // key: the registry may serve them already (built elsewhere, or here by another checkout).
    let unpushed = |v: usize| {
        let push = &graph.dag[graph.variants[v].push];
        how.push && store.and_then(|s| s.get(&push.id)).and_then(|r| r.succeeded_with(&push.key.to_hex())).is_none()
    };
    let wanted: Vec<_> = (0..model.variants.len())
        .filter(|&v| selection.contains(v) && (how.slice.shard.is_some() || lacking(v) || unpushed(v)))
        .filter_map(|v| {
            let variant = &model.variants[v];
            let first = variant.references.first()?;
            let names = (model.settings.name.clone(), variant.id.clone());
            Some((v, names.0, names.1, first.repository.clone(), first.tag.clone()))
        })
        .collect();
    let mut remote = crate::remote::RemoteFacts { registry: registry.to_owned(), records: HashMap::new() };
    if wanted.is_empty() {
        return Ok(remote);
    }
    let user = trellis_docker::credentials_for(registry).and_then(|c| c.username);
    match crate::remote::read_records(client, wanted).await {
        Ok(records) => remote.records = records,
        Err(EngineError::Unauthorized(detail)) if how.push => {
            return Err(Error::Unauthorized { registry: registry.to_owned(), user, detail });
        }
        Err(EngineError::Unreachable(detail)) if how.push => {
            let detail = detail.strip_prefix(&format!("registry {registry}: ")).unwrap_or(&detail).to_owned();
            return Err(Error::RegistryUnreachable { registry: registry.to_owned(), detail });
        }
        Err(error) => {
            let why = match error {
                EngineError::Unreachable(detail) => detail,
                other => other.to_string(),
            };
            let why = why.strip_prefix(&format!("registry {registry}: ")).unwrap_or(&why);
            let message = format!(
                "cannot read what {registry} records ({why}): judged by this machine alone, so what was built elsewhere runs here"
            );
            sink.event(&Event::Warning { message: &message });
        }
    }
    Ok(remote)
}

/// `by_key` without the images the registry's records name another image for, under the
/// same build key.
fn prefer_published(
    workspace: &Workspace,
    mut by_key: HashMap<String, ImageListing>,
    remote: &crate::remote::RemoteFacts,
) -> Result<HashMap<String, ImageListing>, Error> {
    let graph = workspace.graph()?;
    for (&v, record) in &remote.records {
        for slot in &graph.variants[v].platforms {
            let key = graph.dag[slot.build].key.to_hex();
            let published = record.image(slot.platform.as_deref()).filter(|image| image.build_key == key);
            if let (Some(published), Some(here)) = (published, by_key.get(&key))
                && here.id != published.image
            {
                by_key.remove(&key);
            }
        }
    }
    Ok(by_key)
}

/// Per (variant, platform slot), the image the registry's record names for the slot's current
/// build key, and where to pull it by digest.
fn recorded_images(
    workspace: &Workspace,
    remote: &crate::remote::RemoteFacts,
) -> Result<HashMap<(usize, usize), crate::backend::Recorded>, Error> {
    let graph = workspace.graph()?;
    let mut recorded = HashMap::new();
    for (&v, record) in &remote.records {
        let Some(first) = workspace.variants()[v].references.first() else { continue };
        for (slot, nodes) in graph.variants[v].platforms.iter().enumerate() {
            let key = graph.dag[nodes.build].key.to_hex();
            let Some(image) = record.image(nodes.platform.as_deref()).filter(|i| i.build_key == key) else { continue };
            recorded.insert(
                (v, slot),
                crate::backend::Recorded {
                    reference: format!("{}/{}@{}", remote.registry, first.repository, image.manifest),
                    image: image.clone(),
                    platform: nodes.platform.clone(),
                },
            );
        }
    }
    Ok(recorded)
}

/// The compressed layers the registry's records name, for pushes with `compression`: those
/// its pinned compressor made, and, for gzip, those pushed as an engine stored them (the
/// containerd store keeps gzip layers).
fn published_layers(
    remote: &crate::remote::RemoteFacts,
    compression: trellis_docker::Compression,
) -> trellis_docker::publish::LayerMap {
    let ours = |compressor: &Option<String>| match compressor {
        Some(name) => name == compression.compressor(),
        None => compression == trellis_docker::Compression::Gzip,
    };
    let images = remote.records.values().flat_map(|record| &record.images).filter(|image| ours(&image.compressor));
    images
        .flat_map(|image| &image.layers)
        .map(|layer| {
            let compressed =
                trellis_docker::publish::CompressedLayer { digest: layer.digest.clone(), size: layer.size };
            (layer.diff_id.clone(), compressed)
        })
        .collect()
}

/// The last known duration of every node: the state store's, else the registry's records'.
fn known_durations(facts: &EngineFacts, store: Option<&crate::state::StateStore>) -> HashMap<String, u64> {
    let mut durations: HashMap<String, u64> = HashMap::new();
    for record in facts.remote.records.values() {
        durations.extend(record.durations_ms.iter().map(|(id, ms)| (id.clone(), *ms)));
    }
    if let Some(store) = store {
        durations.extend(store.durations());
    }
    durations
}

/// The builder: the settings' choice, else BuildKit where the engine offers it.
fn choose_builder(client: &DockerClient, choice: Option<BuilderChoice>) -> Result<BuilderKind, Error> {
    let offered = client.offers_buildkit();
    match choice {
        Some(BuilderChoice::Classic) => Ok(BuilderKind::Classic),
        Some(BuilderChoice::BuildKit) if offered => Ok(BuilderKind::BuildKit),
        Some(BuilderChoice::BuildKit) => Err(Error::Unsupported(
            "settings ask for builder \"buildkit\", and this engine does not offer BuildKit: update the engine, or set builder \"classic\"".to_owned(),
        )),
        None if offered => Ok(BuilderKind::BuildKit),
        None => Ok(BuilderKind::Classic),
    }
}

/// The digest the registry serves for every selected reference, asked a few at a time (one
/// HEAD each). A reference it cannot tell about counts as not served: its push node then runs,
/// and reports the registry's error itself. Credentials the registry refuses stop the run
/// here, before anything builds.
async fn served_digests(
    client: &trellis_docker::registry::Registry,
    workspace: &Workspace,
    selection: &trellis_graph::Selection,
) -> Result<HashMap<String, Option<String>>, Error> {
    use futures_util::StreamExt;
    let registry = client.host();
    let user = trellis_docker::credentials_for(registry).and_then(|c| c.username);
    let references: Vec<(String, String)> = (workspace.variants().iter().enumerate())
        .filter(|(v, _)| selection.contains(*v))
        .flat_map(|(_, v)| v.references.iter().map(|r| (r.repository.clone(), r.tag.clone())))
        .collect();
    futures_util::stream::iter(references)
        .map(|(repository, tag)| async move {
            let digest = client.served(&repository, &tag).await;
            (format!("{registry}/{repository}:{tag}"), digest)
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(|(target, digest)| match digest {
            Err(EngineError::Unauthorized(detail)) => {
                Err(Error::Unauthorized { registry: registry.to_owned(), user: user.clone(), detail })
            }
            other => Ok((target, other.ok().flatten())),
        })
        .collect()
}

/// Whether an image with trellis's labels is trellis's own build or test image, not one built
/// on top of one (which inherits the labels): `clean` removes only those.
pub(crate) async fn self_made(client: &DockerClient, image: &ImageListing) -> Result<bool, Error> {
    use trellis_docker::labels::{KEY, TEST};
    let (label, value) = match (image.labels.get(TEST), image.labels.get(KEY)) {
        (Some(test), _) => (TEST, test),
        (None, Some(key)) => (KEY, key),
        (None, None) => return Ok(false),
    };
    client.labelled_last(&image.id, label, value).await.map_err(unreachable)
}

/// `registry/repository` of `registry/repository:tag`.
pub(crate) fn repository_of(reference: &str) -> &str {
    match reference.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => repository,
        _ => reference,
    }
}

pub(crate) fn unreachable(error: EngineError) -> Error {
    Error::NoEngine(error.to_string())
}

pub(crate) async fn connect() -> Result<DockerClient, Error> {
    DockerClient::connect().await.map_err(|e| match e {
        // Nothing answers where the engine should be: say how to get one.
        EngineError::Unreachable(_) => Error::NoEngine(format!(
            "{e}\nstart one (`sudo dockerd &`; in trellis's own repository, `cargo xtask engine`), or point DOCKER_HOST at one"
        )),
        // An address or context trellis cannot use: the message names it.
        other => Error::NoEngine(other.to_string()),
    })
}

/// The image of each current build key. Docker copies a parent's labels into every image
/// built on it (by a user, or a child's build that failed halfway), so several images can
/// carry one key: the image the state store recorded for that build wins without asking the
/// engine anything more; otherwise, of the images that are that build's own (its label steps
/// are their newest history, `labelled_last`), the one the variant's references point at,
/// then the newest.
pub(crate) async fn images_by_key(
    client: &DockerClient,
    listing: Vec<ImageListing>,
    workspace: &Workspace,
    store: Option<&crate::state::StateStore>,
) -> Result<HashMap<String, ImageListing>, Error> {
    use trellis_docker::labels::KEY;
    let graph = workspace.graph()?;
    let mut candidates: HashMap<String, Vec<ImageListing>> = HashMap::new();
    for image in listing {
        if let Some(key) = image.labels.get(KEY).cloned() {
            candidates.entry(key).or_default().push(image);
        }
    }
    let mut chosen = HashMap::new();
    let builds = graph.variants.iter().enumerate().flat_map(|(v, nodes)| nodes.builds().map(move |b| (v, b)));
    for (v, build) in builds {
        let build = &graph.dag[build];
        let key = build.key.to_hex();
        let Some(mut images) = candidates.remove(&key) else { continue };
        let recorded = (store.and_then(|s| s.get(&build.id)))
            .filter(|record| record.key == key)
            .and_then(|record| record.details.image.as_ref());
        if let Some(at) = recorded.and_then(|id| images.iter().position(|i| &i.id == id)) {
            chosen.insert(key, images.swap_remove(at));
            continue;
        }
        let first_reference = workspace.model().variants[v].references.first().map(ToString::to_string);
        let tested = |image: &ImageListing| first_reference.as_ref().is_some_and(|r| image.repo_tags.contains(r));
        images.sort_by_key(|image| std::cmp::Reverse((tested(image), image.created)));
        for image in images {
            if client.labelled_last(&image.id, KEY, &key).await.map_err(unreachable)? {
                chosen.insert(key, image);
                break;
            }
        }
    }
    Ok(chosen)
}

/// Every external base's image ID. `pull "always"` pulls each one (a base that moved in its
/// registry then changes its dependents' keys); `"missing"` pulls those the engine lacks;
/// `"never"` never pulls, and a missing base is an error before anything builds.
pub(crate) async fn resolve_bases(
    client: &DockerClient,
    workspace: &Workspace,
    selection: &trellis_graph::Selection,
    pull: bool,
    sink: &mut dyn EventSink,
) -> Result<trellis_graph::BaseImageIds, Error> {
    let settings = &workspace.model().settings;
    let policy = settings.pull;
    let retry = RetryPolicy { retries: settings.retries, delay: settings.backoff, ..RetryPolicy::default() };
    let mut ids = trellis_graph::BaseImageIds::default();
    let mut missing = Vec::new();
    for base in workspace.dependencies().external_bases_of(|v| selection.contains(v)) {
        let present = client.image_id(base).await.map_err(unreachable)?;
        let id = match (present, policy) {
            (_, PullPolicy::Always) | (None, PullPolicy::Missing) if pull => {
                Some(pull_base(client, base, &retry, sink).await?)
            }
            (present, _) => present,
        };
        match id {
            Some(id) => {
                ids.ids.insert(base.clone(), id);
            }
            None if policy == PullPolicy::Never && pull => missing.push(base.clone()),
            None => {}
        }
    }
    resolve_platform_bases(client, workspace, selection, pull, sink, &mut ids, &mut missing).await?;
    if !missing.is_empty() {
        return Err(Error::MissingBases { bases: missing, policy: "never".to_owned() });
    }
    Ok(ids)
}

/// The external bases of variants with `platforms`, per platform: the engine's tag names one
/// platform's image, which serves that platform only. Another platform's image is pulled by
/// the digest the registry serves for the tag (so that no tag moves) when the `pull` policy
/// allows, and found again by that digest on later runs; under `"never"` a missing one is an
/// error before anything builds. A plan (`pull` false) pulls nothing and leaves it
/// unresolved.
async fn resolve_platform_bases(
    client: &DockerClient,
    workspace: &Workspace,
    selection: &trellis_graph::Selection,
    pull: bool,
    sink: &mut dyn EventSink,
    ids: &mut trellis_graph::BaseImageIds,
    missing: &mut Vec<String>,
) -> Result<(), Error> {
    let policy = workspace.model().settings.pull;
    let mut wanted = std::collections::BTreeSet::new();
    for (v, variant) in workspace.variants().iter().enumerate().filter(|(v, _)| selection.contains(*v)) {
        for base in &workspace.dependencies().external_bases[v] {
            wanted.extend(variant.platforms.iter().map(|platform| (base.clone(), platform.clone())));
        }
    }
    for (base, platform) in wanted {
        let local = client.image_platform(&base).await.map_err(unreachable)?;
        let id = match local {
            Some((id, recorded)) if trellis_model::platform::matches(&recorded, &platform) => Some(id),
            _ => base_for_platform(client, &base, &platform, pull && policy != PullPolicy::Never, sink).await?,
        };
        match id {
            Some(id) => {
                ids.per_platform.insert((base, platform), id);
            }
            None if pull && policy == PullPolicy::Never => missing.push(format!("{base} for {platform}")),
            None => {}
        }
    }
    Ok(())
}

/// `base`'s image for `platform`, by the digest of that platform's manifest in what its
/// registry serves for the tag: the one the engine holds already, or pulled when `pull`.
async fn base_for_platform(
    client: &DockerClient,
    base: &str,
    platform: &str,
    pull: bool,
    sink: &mut dyn EventSink,
) -> Result<Option<String>, Error> {
    let shown = format!("{base} ({platform})");
    let failed = |message: String| Error::Pull { base: shown.clone(), message };
    let canonical =
        trellis_model::normalise_reference(base).ok_or_else(|| failed("not a tagged reference".to_owned()))?;
    let (host, named) = canonical.split_once('/').unwrap_or(("docker.io", canonical.as_str()));
    let (repository, tag) = named.rsplit_once(':').unwrap_or((named, "latest"));
    let credentials = trellis_docker::credentials_for(host);
    let registry = trellis_docker::registry::Registry::new(host, credentials.clone());
    let digest = match registry.platform_manifest(repository, tag, platform).await {
        Ok(Some(digest)) => digest,
        // A plan shows it unresolved; a build that may not pull fails on it.
        _ if !pull => return Ok(None),
        Ok(None) => return Err(failed(format!("its registry serves no {platform} image of it"))),
        Err(error) => return Err(failed(error.to_string())),
    };
    let by_digest = format!("{}@{digest}", base_repository(base));
    if let Some((id, _)) = client.image_platform(&by_digest).await.map_err(unreachable)? {
        return Ok(Some(id));
    }
    if !pull {
        return Ok(None);
    }
    sink.event(&Event::Pulling { base: &shown, attempt: 1 });
    let id = (client.pull_platform(&by_digest, platform, credentials, &mut |_: &str| {}).await)
        .map_err(|e| failed(e.to_string()))?;
    sink.event(&Event::Pulled { base: &shown, image: &id });
    Ok(Some(id))
}

/// `repository` of `repository:tag` or `repository@digest`.
fn base_repository(reference: &str) -> &str {
    let reference = reference.split_once('@').map_or(reference, |(repository, _)| repository);
    repository_of(reference)
}

/// Pulls one base with the run's retry policy; the last error says why it could not be had.
async fn pull_base(
    client: &DockerClient,
    base: &str,
    retry: &RetryPolicy,
    sink: &mut dyn EventSink,
) -> Result<String, Error> {
    let credentials = trellis_docker::credentials_for_image(base);
    let mut delays = retry.delays(RetryPolicy::seed_for(base));
    let mut attempt = 0;
    loop {
        attempt += 1;
        sink.event(&Event::Pulling { base, attempt });
        match client.pull(base, credentials.clone(), &mut |_: &str| {}).await {
            Ok(image) => {
                sink.event(&Event::Pulled { base, image: &image });
                return Ok(image);
            }
            Err(error) => match delays.next() {
                Some(retry_in) => {
                    sink.event(&Event::PullFailed { base, error: &error.to_string(), retry_in });
                    tokio::time::sleep(retry_in).await;
                }
                None => return Err(Error::Pull { base: base.to_owned(), message: error.to_string() }),
            },
        }
    }
}
