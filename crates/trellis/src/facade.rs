//! The library facade: load a workspace once, then ask it for variants, tags, the graph, a
//! plan, or rendered files. This is what another repository's xtask calls.

use std::path::{Path, PathBuf};

use std::sync::{Arc, OnceLock};

use trellis_graph::{Dependencies, Graph, GraphInputs, PlannedNode, Selection, render};
use trellis_model::{Diagnostics, LoadError};

use crate::backend::Backend;
use crate::error::Error;
use crate::state::{StateStore, StoreView};

/// The part of the selected variants one CI job runs (DESIGN §9): `--stage K` keeps the
/// variants at depth K of the parent graph (bases are depth 0), `--shard I/N` the I-th of N
/// balanced shards of those. Parents outside the slice are not run: they must be served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slice {
    pub stage: Option<usize>,
    pub shard: Option<trellis_graph::Shard>,
}

impl Slice {
    pub fn is_whole(&self) -> bool {
        self.stage.is_none() && self.shard.is_none()
    }
}

/// A loaded, validated workspace. Its keyed graph (which reads every build context) is built
/// on first use, so `render` and `tags` work before the contexts exist.
#[derive(Debug)]
pub struct Workspace {
    manifest: PathBuf,
    model: Arc<trellis_model::Model>,
    dependencies: Dependencies,
    inputs: GraphInputs,
    graph: OnceLock<Graph>,
}

/// One variant and its resolved references (`trellis tags`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TagEntry {
    pub variant: String,
    pub image: String,
    pub values: indexmap::IndexMap<String, String>,
    pub references: Vec<String>,
    /// The platforms it is built for; empty: the engine's own.
    pub platforms: Vec<String>,
}

impl Workspace {
    /// Loads `matrix.kdl` at `path` with no engine information (external bases unresolved).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::load_with(path, GraphInputs::default())
    }

    /// Loads with external base image IDs and the push registry filled in.
    pub fn load_with(path: impl AsRef<Path>, mut inputs: GraphInputs) -> Result<Self, Error> {
        let path = path.as_ref();
        let (model, mut diagnostics) = trellis_model::load_all(path).map_err(|e| match e {
            LoadError::Read { path, source } => Error::Read { path, source },
            LoadError::Invalid(d) => Error::Invalid(d),
        })?;
        let model = match model {
            Some(model) if diagnostics.is_empty() => model,
            partial => {
                // Every mistake in one run: what compiled is checked further (dependencies,
                // build contexts) before reporting.
                if let Some(partial) = partial {
                    if let Err(Diagnostics(more)) = Dependencies::new(&partial) {
                        diagnostics.extend(more);
                    }
                    diagnostics.extend(trellis_graph::check_contexts(&partial));
                }
                return Err(Error::Invalid(Diagnostics(diagnostics)));
            }
        };
        if inputs.registry.is_none() {
            inputs.registry = model.settings.registry.clone();
        }
        if inputs.builder.is_none() {
            // Offline, the settings' builder or the default an engine with BuildKit takes;
            // attaching to an engine decides for real.
            let choice = model.settings.builder.unwrap_or(trellis_model::BuilderChoice::BuildKit);
            inputs.builder = Some(choice.as_str().to_owned());
        }
        // Reports earlier runs wrote inside the workspace stay out of every context.
        for report in crate::state::recorded_reports(&model.root.join(&model.settings.state)) {
            if !inputs.reports.contains(&report) {
                inputs.reports.push(report);
            }
        }
        let dependencies = Dependencies::new(&model).map_err(Error::Invalid)?;
        Ok(Self { manifest: path.to_path_buf(), model: Arc::new(model), dependencies, inputs, graph: OnceLock::new() })
    }

    pub fn manifest_path(&self) -> &Path {
        &self.manifest
    }

    pub fn model(&self) -> &trellis_model::Model {
        &self.model
    }

    /// The model, shared (engines keep it for the whole run).
    pub fn shared_model(&self) -> Arc<trellis_model::Model> {
        Arc::clone(&self.model)
    }

    /// Replaces the graph's inputs and the graph keyed with them.
    pub(crate) fn set_keyed(&mut self, inputs: GraphInputs, graph: Graph) {
        self.inputs = inputs;
        self.graph = OnceLock::from(graph);
    }

    /// The graph's inputs (registry, external base IDs).
    pub fn graph_inputs(&self) -> &GraphInputs {
        &self.inputs
    }

    /// What each variant builds on.
    pub fn dependencies(&self) -> &Dependencies {
        &self.dependencies
    }

    /// The keyed graph; hashes every build context the first time.
    pub fn graph(&self) -> Result<&Graph, Error> {
        if let Some(graph) = self.graph.get() {
            return Ok(graph);
        }
        let graph = Graph::build(&self.model, &self.dependencies, &self.inputs).map_err(Error::Invalid)?;
        Ok(self.graph.get_or_init(|| graph))
    }

    pub fn variants(&self) -> &[trellis_model::Variant] {
        &self.model.variants
    }

    /// The variants FILTERs select, with their parents.
    pub fn select(&self, filters: &[String]) -> Result<Selection, Error> {
        Ok(Selection::new(&self.model, &self.dependencies, filters)?)
    }

    pub fn tags(&self, filters: &[String]) -> Result<Vec<TagEntry>, Error> {
        let selection = self.select(filters)?;
        Ok(self
            .model
            .variants
            .iter()
            .enumerate()
            .filter(|(v, _)| selection.contains(*v))
            .map(|(_, variant)| TagEntry {
                variant: variant.id.clone(),
                image: self.model.image_of(variant).name.clone(),
                values: variant.values.clone(),
                references: variant.references.iter().map(ToString::to_string).collect(),
                platforms: variant.platforms.clone(),
            })
            .collect())
    }

    /// Run or skip for every selected node, with the reason, from the state store alone (no
    /// engine: a build whose image was removed still shows as up to date). Without a state
    /// store every build, test, tag and push runs ("never built", "never run", …).
    pub fn plan(&self, filters: &[String]) -> Result<Vec<PlannedNode>, Error> {
        self.plan_on(filters, None)
    }

    /// The plan `build` would follow with `backend` (from [`Workspace::attach`]): builds and
    /// tags judged by what the engine holds, pushes by what the registry serves, tests by the
    /// state store.
    pub fn plan_on(&self, filters: &[String], backend: Option<&Backend>) -> Result<Vec<PlannedNode>, Error> {
        self.plan_slice(filters, Slice::default(), backend)
    }

    /// The plan of one CI job's `slice` of the selected variants (see [`Slice`]); a parent
    /// outside the slice that is neither in the engine nor served is an error.
    pub fn plan_slice(
        &self,
        filters: &[String],
        slice: Slice,
        backend: Option<&Backend>,
    ) -> Result<Vec<PlannedNode>, Error> {
        let state_dir = self.state_dir();
        // A missing store reads as empty.
        let store = StateStore::read(&state_dir)?;
        let selection = self.select_slice(filters, slice, &store, backend.and_then(Backend::facts))?;
        let view = self.store_view(&store, &state_dir, backend, Default::default())?;
        view.check_parents(&selection)?;
        Ok(trellis_graph::plan(&self.model, view.graph, &selection, &view))
    }

    /// The variants FILTERs select, cut to `slice`: the stage's variants, split into shards by
    /// weight — the registry's records when there is a registry (the same on every runner),
    /// else this machine's last durations.
    pub(crate) fn select_slice(
        &self,
        filters: &[String],
        slice: Slice,
        store: &StateStore,
        facts: Option<&crate::EngineFacts>,
    ) -> Result<Selection, Error> {
        let selection = self.select(filters)?;
        if slice.is_whole() {
            return Ok(selection);
        }
        let depths = trellis_graph::depths(&self.dependencies);
        let deepest = depths.iter().copied().max().unwrap_or(0);
        if let Some(stage) = slice.stage.filter(|&stage| stage > deepest) {
            // A typo in a CI job must not pass as a job with nothing to do.
            return Err(Error::Unsupported(format!(
                "--stage {stage}: the workspace's stages are 0 to {deepest} (a stage is a depth of the parent graph)"
            )));
        }
        let count = self.model.variants.len();
        let in_stage: Vec<usize> = (0..count)
            .filter(|&v| selection.contains(v) && slice.stage.is_none_or(|stage| depths[v] == stage))
            .collect();
        let chosen = match slice.shard {
            None => in_stage,
            Some(shard) => {
                let graph = self.graph()?;
                let remote = facts.map(|f| &f.remote).filter(|remote| !remote.registry.is_empty());
                let weight = |v: usize| match remote {
                    Some(remote) => crate::remote::variant_weight(graph, remote, v),
                    None => local_weight(graph, store, v),
                };
                let mut shards = trellis_graph::shards(&in_stage, weight, shard.count);
                std::mem::take(&mut shards[shard.index - 1])
            }
        };
        let mut selected = vec![false; count];
        for v in chosen {
            selected[v] = true;
        }
        Ok(Selection { matched: selected.clone(), selected })
    }

    /// The plan's judge: `store`, and what `backend` found in the engine and registry.
    pub(crate) fn store_view<'a>(
        &'a self,
        store: &'a StateStore,
        state_dir: &'a Path,
        backend: Option<&'a Backend>,
        refresh: std::collections::HashSet<usize>,
    ) -> Result<StoreView<'a>, Error> {
        Ok(StoreView {
            store,
            state_dir,
            workspace: &self.model,
            graph: self.graph()?,
            dependencies: &self.dependencies,
            refresh,
            facts: backend.and_then(Backend::facts),
            unresolved: self.first_unresolved_base(),
        })
    }

    /// The state directory (`settings { state }`, relative to matrix.kdl).
    pub fn state_dir(&self) -> PathBuf {
        self.model.root.join(&self.model.settings.state)
    }

    /// External bases (of the builds and Dockerfile tests FILTERs select) without an image ID:
    /// all of them offline; after [`Workspace::attach`] without pulling, those the engine lacks
    /// (for a variant with `platforms`, for one of its platforms).
    pub fn unresolved_bases(&self, filters: &[String]) -> Result<std::collections::BTreeSet<&str>, Error> {
        let selection = self.select(filters)?;
        let known = &self.inputs.base_images;
        let mut unresolved = std::collections::BTreeSet::new();
        for v in (0..self.model.variants.len()).filter(|v| selection.contains(*v)) {
            unresolved.extend(self.unresolved_builds_bases(v));
            let tests = self.dependencies.test_bases[v].iter().flatten();
            unresolved.extend(tests.filter(|b| known.get(b, None).is_none()).map(String::as_str));
        }
        Ok(unresolved)
    }

    /// Per variant, the first external base of its build without an image ID.
    pub(crate) fn first_unresolved_base(&self) -> std::collections::HashMap<usize, &str> {
        (0..self.model.variants.len()).filter_map(|v| Some((v, self.unresolved_builds_bases(v).next()?))).collect()
    }

    /// The external bases of a variant's build lacking an image ID for one of its platforms.
    fn unresolved_builds_bases(&self, v: usize) -> impl Iterator<Item = &str> {
        let slots = self.model.variants[v].platform_slots();
        let known = &self.inputs.base_images;
        (self.dependencies.external_bases[v].iter())
            .filter(move |base| slots.iter().any(|platform| known.get(base, *platform).is_none()))
            .map(String::as_str)
    }

    /// Writes the rendered Dockerfiles that changed; removes orphaned ones.
    pub fn render(&self) -> Result<render::RenderReport, Error> {
        render::write(&self.model).map_err(Error::Render)
    }

    /// Stale, missing and orphaned rendered Dockerfiles.
    pub fn check_rendered(&self) -> Result<render::RenderCheck, Error> {
        render::check(&self.model).map_err(Error::Render)
    }
}

/// A variant's weight from this machine's last durations of its nodes (defaults for those
/// never run).
fn local_weight(graph: &Graph, store: &StateStore, v: usize) -> u64 {
    use crate::remote::{DEFAULT_BUILD_MS, DEFAULT_PUSH_MS, DEFAULT_TEST_MS};
    let last = |id: &str, default: u64| store.get(id).and_then(|r| r.duration_ms).unwrap_or(default);
    let nodes = &graph.variants[v];
    let mut weight = last(&graph.dag[nodes.push].id, DEFAULT_PUSH_MS);
    for platform in &nodes.platforms {
        weight += last(&graph.dag[platform.build].id, DEFAULT_BUILD_MS);
        weight += platform.tests.iter().map(|&t| last(&graph.dag[t].id, DEFAULT_TEST_MS)).sum::<u64>();
    }
    weight
}

/// `path` relative to the workspace `root`, when it lies inside it (it need not exist yet).
pub fn inside(root: &Path, path: &Path) -> Option<PathBuf> {
    let real = |p: &Path| -> Option<PathBuf> {
        match p.canonicalize() {
            Ok(real) => Some(real),
            Err(_) => Some(real_parent(p)?.join(p.file_name()?)),
        }
    };
    fn real_parent(p: &Path) -> Option<PathBuf> {
        let parent = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        parent.canonicalize().ok()
    }
    let root = root.canonicalize().ok()?;
    real(path)?.strip_prefix(&root).ok().map(Path::to_path_buf)
}

/// The nearest `matrix.kdl` in `start` or its ancestors, the way cargo finds Cargo.toml.
pub fn find_manifest(start: &Path) -> Result<PathBuf, Error> {
    start
        .ancestors()
        .map(|dir| dir.join("matrix.kdl"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| Error::NoManifest { start: start.to_path_buf() })
}
