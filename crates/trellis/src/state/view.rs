//! The plan's view of the state store: a node is skipped when its current key already
//! succeeded; otherwise the reason names what changed, down to the context file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use trellis_graph::{Component, ContextManifest, Graph, Node, NodeKind, StateView};
use trellis_model::Model;

use super::{NodeRecord, Outcome, StateStore};
use crate::backend::EngineFacts;
use crate::remote::RemoteRecord;

/// The plan's judge: the state store, and what the engine and registry hold when attached.
pub(crate) struct StoreView<'a> {
    pub store: &'a StateStore,
    pub state_dir: &'a Path,
    pub workspace: &'a Model,
    pub graph: &'a Graph,
    pub dependencies: &'a trellis_graph::Dependencies,
    /// Variants whose builds run although their keys are unchanged (`--refresh`).
    pub refresh: HashSet<usize>,
    /// What the engine (and, for a pushing run, the registry) held when attached: builds and
    /// tags are then judged by what the engine really holds.
    pub facts: Option<&'a EngineFacts>,
    /// Per variant, an external base the engine does not hold (a plan pulls nothing).
    pub unresolved: HashMap<usize, &'a str>,
}

impl StateView for StoreView<'_> {
    fn judge(&self, node: &Node) -> Result<String, String> {
        if node.kind == NodeKind::Build && self.refresh.contains(&node.variant) {
            return Err("refresh requested: rebuilt without the layer cache".to_owned());
        }
        // What this machine knows first; what the registry recorded when it knows nothing
        // that says up to date.
        self.judge_here(node).or_else(|reason| match self.served_elsewhere(node) {
            Some(served) => Ok(served),
            // This machine knows nothing of the node: what the registry holds says why it runs.
            None if reason.starts_with("never ") => Err(self.not_as_recorded(node).unwrap_or(reason)),
            None => Err(reason),
        })
    }
}

impl StoreView<'_> {
    fn judge_here(&self, node: &Node) -> Result<String, String> {
        if let Some(images) = self.facts.map(|f| &f.by_key) {
            // A base the engine lacks (a plan does not pull): the build's key is not final yet.
            if let (NodeKind::Build, Some(base)) = (node.kind, self.unresolved.get(&node.variant)) {
                return Err(match self.workspace.settings.pull {
                    trellis_model::PullPolicy::Never => format!("base {base} is not in the engine (pull \"never\")"),
                    _ => format!("base {base} is not in the engine yet: pulled first"),
                });
            }
            match node.kind {
                NodeKind::Build => {
                    return match images.get(&node.key.to_hex()) {
                        Some(image) => match self.moved_parent(node, image, images) {
                            Some(parent) => Err(format!("parent {parent} was rebuilt: its tested image changed")),
                            None => Ok(format!("image {} has this key", short(&image.id))),
                        },
                        None => Err(match self.store.get(&node.id) {
                            Some(record) if record.key == node.key.to_hex() => {
                                "its image is gone from the engine".to_owned()
                            }
                            Some(record) => self.what_changed(record, node),
                            None => "never built".to_owned(),
                        }),
                    };
                }
                NodeKind::Tag => {
                    // Local references name the image of the engine's own platform, when the
                    // variant is built for it.
                    let nodes = &self.graph.variants[node.variant];
                    let native = nodes.native(&self.graph.native_platform);
                    let variant = &self.workspace.variants[node.variant];
                    let on_image = |build: petgraph::graph::NodeIndex| {
                        images.get(&self.graph.dag[build].key.to_hex()).is_some_and(|image| {
                            variant.references.iter().all(|r| image.repo_tags.contains(&r.to_string()))
                        })
                    };
                    if native.is_some_and(|native| !on_image(native.build)) {
                        return Err("not every reference points at the image".to_owned());
                    }
                    // Another checkout (or a run whose record is gone) tagged it: the references
                    // are what a tag node would make them (DESIGN §5), whoever made them.
                    if let (Some(native), None) = (native, self.store.get(&node.id)) {
                        let image = images.get(&self.graph.dag[native.build].key.to_hex()).map(|i| short(&i.id));
                        return Ok(format!("every reference points at image {}", image.unwrap_or_default()));
                    }
                }
                _ => {}
            }
        }
        let Some(record) = self.store.get(&node.id) else { return Err(trellis_graph::never(node.kind).to_owned()) };
        if let (NodeKind::Push, Some((served, registry)), Outcome::Succeeded) =
            (node.kind, self.facts.and_then(EngineFacts::served), &record.outcome)
            && record.key == node.key.to_hex()
        {
            let pushed = record.details.digest.as_deref();
            for reference in &self.workspace.variants[node.variant].references {
                let target = format!("{registry}/{reference}");
                match served.get(&target).and_then(Option::as_deref) {
                    Some(digest) if Some(digest) == pushed => {}
                    Some(_) => return Err(format!("{target} is served at another digest")),
                    None => return Err(format!("{target} is not served")),
                }
            }
        }
        let key = node.key.to_hex();
        if record.key == key && record.outcome == Outcome::Failed {
            return Err(format!("failed in run {}", record.run));
        }
        // A push's record holds the digest it pushed: only its current record judges it.
        let earlier_counts = node.kind != NodeKind::Push;
        match record.succeeded_with(&key) {
            Some(run) if record.key == key || earlier_counts => Ok(format!("up to date (run {run})")),
            _ => Err(self.what_changed(record, node)),
        }
    }
}

impl StoreView<'_> {
    /// Up to date by the registry's record of the variant (DESIGN §9): the record names this
    /// node's current key, its image stands on the parents' current images, and for a push,
    /// every reference serves the recorded digest.
    fn served_elsewhere(&self, node: &Node) -> Option<String> {
        let facts = self.facts?;
        let record = facts.remote.records.get(&node.variant)?;
        let key = node.key.to_hex();
        let current = match node.kind {
            NodeKind::Render => false,
            NodeKind::Build => self.recorded_build(node.variant, node.platform.as_deref(), &key, record),
            NodeKind::Test => record.tests.get(&node.id) == Some(&key),
            // Tags are this engine's: a machine that tagged the variant before tags it again
            // (pulling its image); a fresh one (a CI runner) leaves it in the registry.
            NodeKind::Tag if self.store.get(&node.id).is_some() => false,
            NodeKind::Tag => (self.graph.variants[node.variant].platforms.iter()).all(|platform| {
                let build = &self.graph.dag[platform.build];
                self.recorded_build(node.variant, platform.platform.as_deref(), &build.key.to_hex(), record)
            }),
            NodeKind::Push => {
                let registry = &facts.remote.registry;
                let references = &self.workspace.variants[node.variant].references;
                record.push_key == key
                    && facts.served().is_none_or(|(served, _)| {
                        references.iter().all(|reference| {
                            let target = format!("{registry}/{reference}");
                            served.get(&target).and_then(Option::as_deref) == Some(record.digest.as_str())
                        })
                    })
            }
        };
        current.then(|| crate::remote::served_elsewhere(&facts.remote.registry, &record.digest))
    }

    /// Why a node the registry has a record of its variant for runs, when this machine knows
    /// nothing of it (a fresh runner): what differs from the record.
    fn not_as_recorded(&self, node: &Node) -> Option<String> {
        let facts = self.facts?;
        let record = facts.remote.records.get(&node.variant)?;
        let registry = &facts.remote.registry;
        let at = format!("{registry} at {}", short(&record.digest));
        let builds = &self.graph.variants[node.variant].platforms;
        let build_recorded = |slot: &trellis_graph::PlatformNodes| {
            let key = self.graph.dag[slot.build].key.to_hex();
            self.recorded_build(node.variant, slot.platform.as_deref(), &key, record)
        };
        Some(match node.kind {
            NodeKind::Render => return None,
            NodeKind::Build => match record.image(node.platform.as_deref()) {
                Some(image)
                    if image.build_key == node.key.to_hex()
                        && !image.published_with(self.workspace.settings.compression) =>
                {
                    format!("{at} is published with another compression")
                }
                Some(image) if image.build_key == node.key.to_hex() => {
                    format!("a parent changed since {at} was built")
                }
                _ => format!("its inputs changed since {at} was built"),
            },
            NodeKind::Test if !builds.iter().all(build_recorded) => return None,
            NodeKind::Test if record.tests.contains_key(&node.id) => {
                format!("the test changed since it passed on {at}")
            }
            NodeKind::Test => format!("not yet run on {at}"),
            NodeKind::Tag => return None,
            NodeKind::Push if builds.iter().all(build_recorded) => {
                format!("a test changed: the record beside {at} is updated")
            }
            NodeKind::Push => format!("its images changed since {at} was pushed"),
        })
    }

    /// Whether `record` holds the variant's image for `platform` under `key`, built on the
    /// images its parents have now (in this engine, or as the registry recorded them).
    fn recorded_build(&self, variant: usize, platform: Option<&str>, key: &str, record: &RemoteRecord) -> bool {
        let compression = self.workspace.settings.compression;
        let Some(image) =
            record.image(platform).filter(|image| image.build_key == key && image.published_with(compression))
        else {
            return false;
        };
        let wanted = platform.unwrap_or(&self.graph.native_platform);
        self.dependencies.parents[variant].iter().all(|&parent| {
            let parent_id = &self.workspace.variants[parent].id;
            let current = self.current_image(parent, wanted);
            current.is_some() && image.parents.get(parent_id).map(String::as_str) == current
        })
    }

    /// Before anything runs: every parent of a selected variant, and every variant its
    /// Dockerfile tests use, that the selection leaves out (another stage or shard) is in this
    /// engine or served, for every platform the child needs, at its current key.
    pub(crate) fn check_parents(&self, selection: &trellis_graph::Selection) -> Result<(), crate::Error> {
        let depths = trellis_graph::depths(self.dependencies);
        for child in (0..self.workspace.variants.len()).filter(|&v| selection.contains(v)) {
            let built_on = self.dependencies.parents[child].iter().map(|&p| (p, "builds on"));
            let tested_with = self.dependencies.test_parents[child].iter().flatten().map(|&p| (p, "is tested with"));
            for (parent, uses) in built_on.chain(tested_with).filter(|(p, _)| !selection.contains(*p)) {
                let platforms = self.workspace.variants[child].platform_slots();
                let missing = platforms.iter().any(|platform| {
                    self.current_image(parent, platform.unwrap_or(&self.graph.native_platform)).is_none()
                });
                if missing {
                    return Err(crate::Error::ParentNotServed {
                        child: self.workspace.variants[child].id.clone(),
                        uses,
                        parent: self.workspace.variants[parent].id.clone(),
                        stage: depths[parent],
                        registry: self.facts.map(|f| f.remote.registry.clone()).filter(|r| !r.is_empty()),
                    });
                }
            }
        }
        Ok(())
    }

    /// The image a variant has for `platform` under its current key: in this engine, or as
    /// the registry recorded it.
    fn current_image(&self, variant: usize, platform: &str) -> Option<&str> {
        let slot =
            trellis_graph::platform_slot(&self.workspace.variants[variant], platform, &self.graph.native_platform)?;
        let nodes = &self.graph.variants[variant].platforms[slot];
        let key = self.graph.dag[nodes.build].key.to_hex();
        let facts = self.facts?;
        match facts.by_key.get(&key) {
            Some(listing) => Some(listing.id.as_str()),
            None => (facts.remote.records.get(&variant)?.image(nodes.platform.as_deref()))
                .filter(|recorded| recorded.build_key == key)
                .map(|recorded| recorded.image.as_str()),
        }
    }

    /// A parent whose current image (the one its key names in the engine) is not the one
    /// `image` was built on: a refresh, or a rebuild the key cannot see.
    fn moved_parent(
        &self,
        node: &Node,
        image: &trellis_docker::ImageListing,
        images: &HashMap<String, trellis_docker::ImageListing>,
    ) -> Option<&str> {
        let built_on: HashMap<&str, &str> = (image.labels.get(trellis_docker::labels::PARENTS))
            .map(|parents| parents.split(',').filter_map(|p| p.split_once('@')).collect())
            .unwrap_or_default();
        let index = self.graph.index(&node.id)?;
        let parents = (self.graph.dag.neighbors_directed(index, petgraph::Incoming))
            .map(|p| &self.graph.dag[p])
            .filter(|p| p.kind == NodeKind::Tag);
        let platform = node.platform.as_deref().unwrap_or(&self.graph.native_platform);
        for parent in parents {
            let parent_variant = &self.workspace.variants[parent.variant];
            let Some(slot) = trellis_graph::platform_slot(parent_variant, platform, &self.graph.native_platform) else {
                continue;
            };
            let parent_build = &self.graph.dag[self.graph.variants[parent.variant].platforms[slot].build];
            let Some(current) = images.get(&parent_build.key.to_hex()) else { continue };
            let id = self.workspace.variants[parent.variant].id.as_str();
            if built_on.get(id) != Some(&current.id.as_str()) {
                return Some(id);
            }
        }
        None
    }

    fn what_changed(&self, record: &NodeRecord, node: &Node) -> String {
        let now: BTreeMap<String, &str> = node.components.iter().map(|(c, v)| (c.to_string(), v.as_str())).collect();
        let mut reasons = Vec::new();
        // In the key's own order: Dockerfile, context, args, labels, builder, parents, bases.
        for (component, value) in &node.components {
            match record.components.get(&component.to_string()) {
                Some(old) if old == value => {}
                Some(old) => reasons.push(self.describe(component, old, node)),
                // Compression is in a push key only when it is not the default.
                None if *component == Component::Compression => reasons.push(component.changed()),
                None => reasons.push(format!("{component} added")),
            }
        }
        for name in record.components.keys() {
            if !now.contains_key(name) {
                match name.parse::<Component>() {
                    Ok(Component::Compression) => reasons.push(Component::Compression.changed()),
                    _ => reasons.push(format!("{name} removed")),
                }
            }
        }
        if reasons.is_empty() {
            // Same components, different key: the key schema changed.
            reasons.push("key schema changed".to_owned());
        }
        reasons.join("; ")
    }

    fn describe(&self, component: &Component, old: &str, node: &Node) -> String {
        match component {
            Component::Context => self.context_change(old, node),
            other => other.changed(),
        }
    }

    fn context_change(&self, old_digest: &str, node: &Node) -> String {
        let variant = &self.workspace.variants[node.variant];
        let current = self.graph.context_manifests.get(&variant.context);
        let before = load_manifest(self.state_dir, old_digest);
        match (current, before) {
            (Some(current), Some(before)) => {
                let changed = current.changed_files(&before);
                match changed.as_slice() {
                    [] => "build context changed".to_owned(),
                    [one] => format!("context file {one} changed"),
                    [a, b] => format!("context files {a}, {b} changed"),
                    [a, b, rest @ ..] => format!("context files {a}, {b} and {} more changed", rest.len()),
                }
            }
            _ => "build context changed".to_owned(),
        }
    }
}

fn manifest_path(state_dir: &Path, digest: &str) -> PathBuf {
    state_dir.join("contexts").join(format!("{digest}.json"))
}

fn load_manifest(state_dir: &Path, digest: &str) -> Option<ContextManifest> {
    let bytes = std::fs::read(manifest_path(state_dir, digest)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Keeps a context's file list, so a later plan can name the file that changed. Written once
/// per digest (content-addressed); a failure to write only costs detail in a later reason.
pub(crate) fn save_manifest(state_dir: &Path, manifest: &ContextManifest) {
    let path = manifest_path(state_dir, &manifest.digest.to_hex());
    if path.exists() {
        return;
    }
    if let Ok(bytes) = serde_json::to_vec(manifest) {
        let _ = trellis_graph::render::write_if_changed(&path, &bytes);
    }
}

fn short(id: &str) -> &str {
    let id = id.trim_start_matches("sha256:");
    &id[..id.len().min(12)]
}
