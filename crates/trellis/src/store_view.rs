//! The plan's view of the state store: a node is skipped when its current key already
//! succeeded; otherwise the reason names what changed, down to the context file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use trellis_exec::{NodeRecord, Outcome, StateStore};
use trellis_graph::{ContextManifest, Graph, Node, NodeKind, StateView};
use trellis_model::Workspace;

pub struct StoreView<'a> {
    pub store: &'a StateStore,
    pub state_dir: &'a Path,
    pub workspace: &'a Workspace,
    pub graph: &'a Graph,
    /// Variants whose builds run although their keys are unchanged (`--refresh`).
    pub refresh: HashSet<usize>,
    /// The engine's images of the workspace by build key (one listing per run), when an
    /// engine is at hand: builds and tags are judged by what the engine really holds.
    pub engine: Option<&'a HashMap<String, trellis_docker::ImageListing>>,
    /// Per variant, an external base the engine does not hold (a plan pulls nothing).
    pub unresolved: HashMap<usize, &'a str>,
    /// When pushing: what the registry serves (`registry/repository:tag` → digest), and the
    /// registry. A push is up to date only when it serves every reference at the digest
    /// recorded for the push.
    pub served: Option<(&'a HashMap<String, Option<String>>, &'a str)>,
}

impl StateView for StoreView<'_> {
    fn judge(&self, node: &Node) -> Result<String, String> {
        if node.kind == NodeKind::Build && self.refresh.contains(&node.variant) {
            return Err("refresh requested: rebuilt without the layer cache".to_owned());
        }
        if let Some(images) = self.engine {
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
                    let build_key = node.components.iter().find(|(n, _)| n == "image").map(|(_, k)| k.as_str());
                    let variant = &self.workspace.variants[node.variant];
                    let on_image = build_key.and_then(|k| images.get(k)).is_some_and(|image| {
                        variant.references.iter().all(|r| image.repo_tags.contains(&r.to_string()))
                    });
                    if !on_image {
                        return Err("not every reference points at the image".to_owned());
                    }
                }
                _ => {}
            }
        }
        let Some(record) = self.store.get(&node.id) else { return Err(trellis_graph::never(node.kind).to_owned()) };
        if let (NodeKind::Push, Some((served, registry)), Outcome::Succeeded) =
            (node.kind, self.served, &record.outcome)
            && record.key == node.key.to_hex()
        {
            let pushed = record.details.get("digest").map(String::as_str);
            for reference in &self.workspace.variants[node.variant].references {
                let target = format!("{registry}/{reference}");
                match served.get(&target).and_then(Option::as_deref) {
                    Some(digest) if Some(digest) == pushed => {}
                    Some(_) => return Err(format!("{target} is served at another digest")),
                    None => return Err(format!("{target} is not served")),
                }
            }
        }
        if record.key == node.key.to_hex() {
            return match record.outcome {
                Outcome::Succeeded => Ok(format!("up to date (run {})", record.run)),
                Outcome::Failed => Err(format!("failed in run {}", record.run)),
            };
        }
        Err(self.what_changed(record, node))
    }
}

impl StoreView<'_> {
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
        for parent in parents {
            let parent_build = &self.graph.dag[self.graph.variants[parent.variant].build];
            let Some(current) = images.get(&parent_build.key.to_hex()) else { continue };
            let id = self.workspace.variants[parent.variant].id.as_str();
            if built_on.get(id) != Some(&current.id.as_str()) {
                return Some(id);
            }
        }
        None
    }

    fn what_changed(&self, record: &NodeRecord, node: &Node) -> String {
        let now: BTreeMap<&str, &str> = node.components.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut reasons = Vec::new();
        // In the key's own order: Dockerfile, context, args, labels, parents, bases.
        for (name, value) in &node.components {
            match record.components.get(name) {
                Some(old) if old == value => {}
                Some(old) => reasons.push(self.describe(name, old, node)),
                None => reasons.push(format!("{name} added")),
            }
        }
        for name in record.components.keys() {
            if !now.contains_key(name.as_str()) {
                reasons.push(format!("{name} removed"));
            }
        }
        if reasons.is_empty() {
            // Same components, different key: the key schema changed.
            reasons.push("key schema changed".to_owned());
        }
        reasons.join("; ")
    }

    fn describe(&self, name: &str, old: &str, node: &Node) -> String {
        match name {
            "dockerfile" => "rendered Dockerfile changed (template or its values)".to_owned(),
            "context" => self.context_change(old, node),
            "image" => "its image was rebuilt".to_owned(),
            "run" => "test commands changed".to_owned(),
            "test dockerfile" => "test Dockerfile changed".to_owned(),
            "references" => "tag references changed".to_owned(),
            // A push's key covers its tag node's: the image and the references it pushes.
            "tag" => "the image or references it pushes changed".to_owned(),
            other => match other.split_once(' ') {
                Some(("arg", arg)) => format!("build arg {arg} changed"),
                Some(("label", label)) => format!("label {label} changed"),
                Some(("parent", parent)) => format!("parent {parent} changed"),
                Some(("uses", used)) => format!("{used}, which the test uses, changed"),
                Some(("base", base)) => format!("base image {base} moved"),
                _ => format!("{other} changed"),
            },
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
pub fn save_manifest(state_dir: &Path, manifest: &ContextManifest) {
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
