//! Attaching a workspace to the Docker engine before anything runs: external bases resolved to
//! image IDs (pulled per the `pull` policy when building), and the one listing of the
//! workspace's images by build key that judges every build and tag.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use trellis_docker::{DockerClient, EngineError, ImageListing};
use trellis_exec::RetryPolicy;
use trellis_model::PullPolicy;

use crate::engine::{Backend, DockerBackend};
use crate::facade::{Error, Workspace};

/// What attaching is for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attach {
    /// Pull bases per the `pull` policy (a build). A plan never pulls: it reports what a build
    /// would pull.
    pub pull: bool,
    /// The run pushes: credentials for the push registry are looked up once.
    pub push: bool,
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
        let client = DockerClient::connect().await.map_err(|e| {
            Error::NoEngine(format!(
                "{e}\nstart one (`cargo xtask engine` in this repository, or `sudo dockerd &`), or point DOCKER_HOST at one"
            ))
        })?;
        let ids = resolve_bases(&client, &self, how.pull).await?;
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
        let by_key: HashMap<String, ImageListing> = listing
            .into_iter()
            .filter_map(|image| image.labels.get("dev.trellis.key").cloned().map(|key| (key, image)))
            .collect();
        let graph = workspace.graph()?;
        let own_files = Arc::clone(&graph.own_files);
        let up_to_date: HashMap<usize, String> = graph
            .variants
            .iter()
            .enumerate()
            .filter_map(|(v, nodes)| by_key.get(&graph.dag[nodes.build].key.to_hex()).map(|i| (v, i.id.clone())))
            .collect();
        let served = match (&registry, how.push) {
            (Some(registry), true) => Some(served_digests(&client, &workspace, registry).await),
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
            credentials: registry.as_deref().filter(|_| how.push).and_then(trellis_docker::credentials_for),
            registry,
        };
        Ok((workspace, Backend::Docker(Arc::new(docker))))
    }
}

/// The digest the registry serves for every reference of the workspace, asked through the
/// engine a few at a time. A reference it cannot tell about counts as not served: its push
/// node then runs, and reports the registry's error itself.
async fn served_digests(
    client: &DockerClient,
    workspace: &Workspace,
    registry: &str,
) -> HashMap<String, Option<String>> {
    use futures_util::StreamExt;
    let credentials = trellis_docker::credentials_for(registry);
    let targets: Vec<String> =
        workspace.variants().iter().flat_map(|v| v.references.iter().map(|r| format!("{registry}/{r}"))).collect();
    futures_util::stream::iter(targets)
        .map(|target| {
            let credentials = credentials.clone();
            async move {
                let digest = client.registry_digest(&target, credentials).await.ok().flatten();
                (target, digest)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await
}

fn unreachable(error: EngineError) -> Error {
    Error::NoEngine(error.to_string())
}

/// Every external base's image ID. `pull "always"` pulls each one (a base that moved in its
/// registry then changes its dependents' keys); `"missing"` pulls those the engine lacks;
/// `"never"` never pulls, and a missing base is an error before anything builds.
async fn resolve_bases(
    client: &DockerClient,
    workspace: &Workspace,
    pull: bool,
) -> Result<trellis_graph::BaseImageIds, Error> {
    let settings = &workspace.model().settings;
    let policy = settings.pull;
    let retry = RetryPolicy { retries: settings.retries, delay: settings.backoff, ..RetryPolicy::default() };
    let mut ids = trellis_graph::BaseImageIds::default();
    let mut missing = Vec::new();
    for base in workspace.dependencies().all_external_bases() {
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
