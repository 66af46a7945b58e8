//! Attaching a workspace to the Docker engine before anything runs: external bases resolved to
//! image IDs (pulled per the `pull` policy when building), and the one listing of the
//! workspace's images by build key that judges every build and tag.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use trellis_docker::{DockerClient, EngineError, ImageListing};
use trellis_exec::RetryPolicy;
use trellis_model::PullPolicy;

use crate::engine::{Backend, DockerBackend};
use crate::facade::{Error, Workspace};

/// What attaching is for.
#[derive(Debug, Clone, Default)]
pub struct Attach {
    /// Pull bases per the `pull` policy (a build). A plan never pulls: it reports what a build
    /// would pull.
    pub pull: bool,
    /// The run pushes: credentials for the push registry are looked up once.
    pub push: bool,
    /// The FILTERs of the run: only the external bases of the variants they select (with
    /// their parents) are resolved, pulled and required. Empty: every variant.
    pub filters: Vec<String>,
}

impl Workspace {
    /// Connects to the Docker engine (DOCKER_HOST or the default socket) and returns this
    /// workspace keyed with its external bases' image IDs, and the backend `run` uses.
    /// Under `pull "never"` a missing base is an error here, before anything builds; a base
    /// left without an ID (a plan pulls nothing) is in [`Workspace::unresolved_bases`].
    pub async fn attach(self, how: Attach) -> Result<(Workspace, Backend), Error> {
        let registry = self.graph_inputs().registry.clone();
        if how.push && registry.is_none() {
            return Err(Error::Unsupported(
                "--push needs a registry: set `registry` in settings or pass --registry".to_owned(),
            ));
        }
        let client = connect().await?;
        let selection = self.select(&how.filters)?;
        let ids = resolve_bases(&client, &self, &selection, how.pull).await?;
        let workspace = self.with_base_images(ids);
        // The daemon takes a while to list images (~0.1 s for 200): hash the build contexts on
        // a blocking thread meanwhile. A no-op run costs the longer of the two, not their sum.
        let name = workspace.model().settings.name.clone();
        let hashing = tokio::task::spawn_blocking(move || -> Result<Workspace, Error> {
            workspace.graph()?;
            Ok(workspace)
        });
        let listing = client.workspace_images(&name).await;
        let workspace = hashing.await.map_err(|e| Error::Report(std::io::Error::other(e)))??;
        let listing = listing.map_err(unreachable)?;
        let by_key = images_by_key(&client, listing, &workspace).await?;
        let graph = workspace.graph()?;
        let own_files = Arc::clone(&graph.own_files);
        let up_to_date: HashMap<usize, String> = graph
            .variants
            .iter()
            .enumerate()
            .filter_map(|(v, nodes)| by_key.get(&graph.dag[nodes.build].key.to_hex()).map(|i| (v, i.id.clone())))
            .collect();
        let served = match (&registry, how.push) {
            (Some(registry), true) => Some(served_digests(&client, &workspace, &selection, registry).await?),
            _ => None,
        };
        let docker = DockerBackend {
            served,
            client,
            model: workspace.shared_model(),
            by_key,
            images: Mutex::new(up_to_date),
            run_labels: crate::engine::run_labels(&workspace.model().root),
            own_files,
            parents: workspace.dependencies().parents.clone(),
            credentials: registry.as_deref().filter(|_| how.push).and_then(trellis_docker::credentials_for),
            registry,
        };
        Ok((workspace, Backend::Docker(Arc::new(docker))))
    }
}

/// The digest the registry serves for every selected reference, asked through the engine a
/// few at a time. A reference it cannot tell about counts as not served: its push node then
/// runs, and reports the registry's error itself. Credentials the registry refuses stop the
/// run here, before anything builds.
async fn served_digests(
    client: &DockerClient,
    workspace: &Workspace,
    selection: &trellis_graph::Selection,
    registry: &str,
) -> Result<HashMap<String, Option<String>>, Error> {
    use futures_util::StreamExt;
    let credentials = trellis_docker::credentials_for(registry);
    let user = credentials.as_ref().and_then(|c| c.username.clone());
    let targets: Vec<String> = (workspace.variants().iter().enumerate())
        .filter(|(v, _)| selection.contains(*v))
        .flat_map(|(_, v)| v.references.iter().map(|r| format!("{registry}/{r}")))
        .collect();
    futures_util::stream::iter(targets)
        .map(|target| {
            let credentials = credentials.clone();
            async move {
                let digest = client.registry_digest(&target, credentials).await;
                (target, digest)
            }
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
async fn self_made(client: &DockerClient, image: &ImageListing) -> Result<bool, Error> {
    use trellis_docker::labels::{KEY, TEST};
    let (label, value) = match (image.labels.get(TEST), image.labels.get(KEY)) {
        (Some(test), _) => (TEST, test),
        (None, Some(key)) => (KEY, key),
        (None, None) => return Ok(false),
    };
    client.labelled_last(&image.id, label, value).await.map_err(unreachable)
}

/// `registry/repository` of `registry/repository:tag`.
fn repository_of(reference: &str) -> &str {
    match reference.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => repository,
        _ => reference,
    }
}

fn unreachable(error: EngineError) -> Error {
    Error::NoEngine(error.to_string())
}

async fn connect() -> Result<DockerClient, Error> {
    DockerClient::connect().await.map_err(|e| {
        Error::NoEngine(format!(
            "{e}\nstart one (`cargo xtask engine` in this repository, or `sudo dockerd &`), or point DOCKER_HOST at one"
        ))
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
) -> Result<HashMap<String, ImageListing>, Error> {
    use trellis_docker::labels::KEY;
    let model = workspace.model();
    let graph = workspace.graph()?;
    let store = trellis_exec::StateStore::read(&model.root.join(&model.settings.state)).ok();
    let mut candidates: HashMap<String, Vec<ImageListing>> = HashMap::new();
    for image in listing {
        if let Some(key) = image.labels.get(KEY).cloned() {
            candidates.entry(key).or_default().push(image);
        }
    }
    let mut chosen = HashMap::new();
    for (v, nodes) in graph.variants.iter().enumerate() {
        let build = &graph.dag[nodes.build];
        let key = build.key.to_hex();
        let Some(mut images) = candidates.remove(&key) else { continue };
        let recorded = (store.as_ref().and_then(|s| s.get(&build.id)))
            .filter(|record| record.key == key)
            .and_then(|record| record.details.get("image"));
        if let Some(at) = recorded.and_then(|id| images.iter().position(|i| &i.id == id)) {
            chosen.insert(key, images.swap_remove(at));
            continue;
        }
        let first_reference = model.variants[v].references.first().map(ToString::to_string);
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

/// What `trellis clean` did.
#[derive(Debug, Default)]
pub struct CleanReport {
    /// (image ID, variant, whether it was a test image).
    pub removed: Vec<(String, String, bool)>,
    /// Images kept because a current variant names them.
    pub kept: usize,
    /// (image ID, variant, why the engine refused).
    pub refused: Vec<(String, String, String)>,
}

impl Workspace {
    /// Removes the workspace's images that no current variant produces: images under keys no
    /// variant has any more, images a `--refresh` superseded under a current key, and test
    /// images a crash left behind. Never the image a current build key names, one a current
    /// reference points at, or one of a variant whose key cannot be known yet (an external
    /// base missing from the engine). Pulls nothing.
    pub async fn clean(self) -> Result<CleanReport, Error> {
        let client = connect().await?;
        let everything = self.select(&[])?;
        let ids = resolve_bases(&client, &self, &everything, false).await?;
        let workspace = self.with_base_images(ids);
        let model = workspace.model();
        let graph = workspace.graph()?;
        let references: HashSet<String> =
            model.variants.iter().flat_map(|v| v.references.iter().map(ToString::to_string)).collect();
        let repositories: HashSet<&str> = model.variants.iter().map(|v| v.repository.as_str()).collect();
        let unknown: HashSet<&str> =
            workspace.first_unresolved_base().keys().map(|v| model.variants[*v].id.as_str()).collect();
        let mut report = CleanReport::default();
        // An image others were built on is listed only once they are gone (the engine hides
        // untagged parents): list again after each pass that removed something.
        loop {
            let images = client.workspace_images(&model.settings.name).await.map_err(unreachable)?;
            let chosen = images_by_key(&client, images.clone(), &workspace).await?;
            let current: HashSet<&str> = (graph.variants.iter())
                .filter_map(|v| chosen.get(&graph.dag[v.build].key.to_hex()))
                .map(|image| image.id.as_str())
                .collect();
            let (mut kept, mut removed) = (0, 0);
            for image in &images {
                let label = |name: &str| image.labels.get(name).cloned().unwrap_or_default();
                let is_test = image.labels.contains_key(trellis_docker::labels::TEST);
                let variant = label(trellis_docker::labels::VARIANT);
                let named = current.contains(image.id.as_str())
                    || image.repo_tags.iter().any(|t| references.contains(t))
                    || unknown.contains(variant.as_str());
                if named && !is_test {
                    kept += 1;
                    continue;
                }
                if report.refused.iter().any(|(id, _, _)| *id == image.id) || !self_made(&client, image).await? {
                    continue;
                }
                // Tagged into a repository this workspace does not produce: someone else's (a
                // checkout with the same workspace name), kept.
                let ours = |repository: &str| {
                    repositories.contains(repository)
                        || repositories
                            .iter()
                            .any(|r| repository.strip_suffix(r).is_some_and(|host| host.ends_with('/')))
                };
                if image.repo_tags.iter().filter(|t| *t != "<none>:<none>").any(|t| !ours(repository_of(t))) {
                    continue;
                }
                match client.remove_image(&image.id, true).await {
                    Ok(()) => {
                        removed += 1;
                        report.removed.push((image.id.clone(), variant, is_test));
                    }
                    Err(e) => report.refused.push((image.id.clone(), variant, e.to_string())),
                }
            }
            report.kept = kept;
            if removed == 0 {
                break;
            }
            // What was refused for its children may go now.
            report.refused.clear();
        }
        Ok(report)
    }
}

/// Every external base's image ID. `pull "always"` pulls each one (a base that moved in its
/// registry then changes its dependents' keys); `"missing"` pulls those the engine lacks;
/// `"never"` never pulls, and a missing base is an error before anything builds.
async fn resolve_bases(
    client: &DockerClient,
    workspace: &Workspace,
    selection: &trellis_graph::Selection,
    pull: bool,
) -> Result<trellis_graph::BaseImageIds, Error> {
    let settings = &workspace.model().settings;
    let policy = settings.pull;
    let retry = RetryPolicy { retries: settings.retries, delay: settings.backoff, ..RetryPolicy::default() };
    let mut ids = trellis_graph::BaseImageIds::default();
    let mut missing = Vec::new();
    for base in workspace.dependencies().external_bases_of(|v| selection.contains(v)) {
        let present = client.image_id(base).await.map_err(unreachable)?;
        let id = match (present, policy) {
            (present, PullPolicy::Always) if pull => Some(pull_base(client, base, &retry, present.is_some()).await?),
            (None, PullPolicy::Missing) if pull => Some(pull_base(client, base, &retry, false).await?),
            (present, _) => present,
        };
        match id {
            Some(id) => {
                ids.0.insert(base.clone(), id);
            }
            None if policy == PullPolicy::Never && pull => missing.push(base.clone()),
            None => {}
        }
    }
    if !missing.is_empty() {
        return Err(Error::MissingBases { bases: missing, policy: "never".to_owned() });
    }
    Ok(ids)
}

/// Pulls one base with the run's retry policy; the last error says why it could not be had.
async fn pull_base(client: &DockerClient, base: &str, retry: &RetryPolicy, present: bool) -> Result<String, Error> {
    let credentials = trellis_docker::credentials_for_image(base);
    let mut delays = retry.delays(RetryPolicy::seed_for(base));
    loop {
        eprintln!("pulling {base}{}", if present { " (pull \"always\")" } else { "" });
        let mut last = String::new();
        let result = client.pull(base, credentials.clone(), &mut |line: &str| last = line.to_owned()).await;
        match result {
            Ok(id) => {
                eprintln!("pulled {base}: {last}");
                return Ok(id);
            }
            Err(error) => match delays.next() {
                Some(delay) => {
                    eprintln!(
                        "pulling {base} failed, retrying in {}: {error}",
                        humantime::format_duration(std::time::Duration::from_millis(delay.as_millis() as u64))
                    );
                    tokio::time::sleep(delay).await;
                }
                None => return Err(Error::Pull { base: base.to_owned(), message: error.to_string() }),
            },
        }
    }
}
