//! Model → petgraph DAG of render → build → test → tag → push nodes, each with its content
//! key. Parents come from the rendered Dockerfiles; everything else a `FROM` names is an
//! external base whose image ID (supplied by the engine half, or "unresolved") enters the key.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use petgraph::graph::{DiGraph, NodeIndex};
use rayon::prelude::*;
use trellis_model::{Diagnostic, Diagnostics, Model, Variant, VariantTestBody, normalise_reference as normalise};

use crate::context::{ContextDigest, ContextError, ContextManifest, ContextWalk};
use crate::dockerfile::image_uses;
use crate::key::{Component, ComponentKey, Components, NodeKey};
use crate::own_files::OwnFiles;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    Render,
    Build,
    Test,
    Tag,
    Push,
}

impl NodeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Render => "render",
            NodeKind::Build => "build",
            NodeKind::Test => "test",
            NodeKind::Tag => "tag",
            NodeKind::Push => "push",
        }
    }
}

/// One unit of work.
#[derive(Debug, Clone)]
pub struct Node {
    /// `render:<variant>`, `build:<variant>`, `test:<variant>/<test>`, `tag:<variant>`, `push:<variant>`.
    pub id: String,
    pub kind: NodeKind,
    /// Index into the workspace's variants.
    pub variant: usize,
    /// Index into the variant's tests, for test nodes.
    pub test: Option<usize>,
    /// Build and test nodes of a variant with `platforms`: the platform (`linux/arm64`), also
    /// the id's `@` suffix. `None`: the engine's own platform, or a render, tag or push.
    pub platform: Option<String>,
    pub key: NodeKey,
    /// The key's named inputs with their hashes (hex), for saying which one changed.
    pub components: Components,
}

impl Node {
    /// The hash (hex) of one input of this node's key.
    pub fn component(&self, wanted: &Component) -> Option<&str> {
        self.components.iter().find(|(c, _)| c == wanted).map(|(_, hash)| hash.as_str())
    }
}

/// A key and its named components.
type Keyed = (NodeKey, Components);

/// The nodes of one variant.
#[derive(Debug, Clone)]
pub struct VariantNodes {
    pub render: NodeIndex,
    /// A build and its tests per platform, in the order the platforms are written; one,
    /// unnamed, for a variant without `platforms`.
    pub platforms: Vec<PlatformNodes>,
    pub tag: NodeIndex,
    pub push: NodeIndex,
}

/// One platform's build of a variant and the tests run on its image.
#[derive(Debug, Clone)]
pub struct PlatformNodes {
    /// `None`: the engine's own platform, named in no id or key.
    pub platform: Option<String>,
    pub build: NodeIndex,
    pub tests: Vec<NodeIndex>,
}

impl VariantNodes {
    /// Every platform's build node.
    pub fn builds(&self) -> impl Iterator<Item = NodeIndex> + '_ {
        self.platforms.iter().map(|p| p.build)
    }

    /// The nodes of the engine's own platform (`native`): the unnamed platform, or the named
    /// one equal to it. `None` when the variant is built for other platforms only.
    pub fn native(&self, native: &str) -> Option<&PlatformNodes> {
        self.platforms.iter().find(|p| p.platform.as_deref().is_none_or(|p| p == native))
    }
}

/// The platform of the machine trellis runs on, in Docker's words: the engine's own platform
/// when it runs here too. Attaching to an engine replaces it with the engine's answer.
pub fn host_platform() -> String {
    trellis_model::platform::host()
}

/// Image IDs of external base images, by reference as written in the Dockerfile. The engine
/// half fills this in before planning; offline, bases are keyed as unresolved.
#[derive(Debug, Clone, Default)]
pub struct BaseImageIds {
    /// The image the engine's tag names (builds for the engine's own platform, and tests).
    pub ids: HashMap<String, String>,
    /// By (reference, platform), for the builds of variants with `platforms`: the engine's
    /// tag names one platform's image only.
    pub per_platform: HashMap<(String, String), String>,
}

impl BaseImageIds {
    /// The image a build for `platform` (`None`: the engine's own) stands on.
    pub fn get(&self, base: &str, platform: Option<&str>) -> Option<&String> {
        match platform {
            None => self.ids.get(base),
            Some(platform) => self.per_platform.get(&(base.to_owned(), platform.to_owned())),
        }
    }
}

/// Inputs of the graph that are not in the workspace.
#[derive(Debug, Clone, Default)]
pub struct GraphInputs {
    pub base_images: BaseImageIds,
    /// Push target (settings' registry unless overridden on the command line).
    pub registry: Option<String>,
    /// Reports runs write inside the workspace (relative to the root): never build context.
    pub reports: Vec<PathBuf>,
    /// The builder that builds the images (`classic`, `buildkit`), part of every build key.
    pub builder: Option<String>,
    /// The engine's own platform (`linux/amd64`); `None`: [`host_platform`]. Variants without
    /// `platforms` are built for it; it decides which parent image such a variant stands on.
    pub native_platform: Option<String>,
}

impl GraphInputs {
    /// The engine's own platform.
    pub fn native(&self) -> String {
        self.native_platform.clone().unwrap_or_else(host_platform)
    }
}

/// What each variant builds on, from its rendered Dockerfile, and what its Dockerfile tests
/// use besides the image under test: no IO, no keys. Enough for FILTER selection and cycle
/// checks.
#[derive(Debug, Clone)]
pub struct Dependencies {
    /// Per variant: the variants its Dockerfile builds on, in Dockerfile order.
    pub parents: Vec<Vec<usize>>,
    /// Per variant: the external images its Dockerfile names, in Dockerfile order.
    pub external_bases: Vec<Vec<String>>,
    /// Per variant, per test: the variants a Dockerfile test names in a `FROM` or
    /// `COPY --from` (the decoupled-runtime pattern: a runtime tested with a code image). The
    /// test runs on their tested, tagged images and re-runs when they change.
    pub test_parents: Vec<Vec<Vec<usize>>>,
    /// Per variant, per test: the external images a Dockerfile test names.
    pub test_bases: Vec<Vec<Vec<String>>>,
    /// Variants before the variants that build on them or test with them.
    pub order: Vec<usize>,
}

impl Dependencies {
    pub fn new(workspace: &Model) -> Result<Self, Diagnostics> {
        let mut diags = Vec::new();
        let uses = dependencies(workspace, &mut diags);
        diags.extend(platform_mismatches(workspace, &uses.parents, &host_platform()));
        let order = variant_order(workspace, &uses, &mut diags);
        match order {
            Some(order) if diags.is_empty() => Ok(Self {
                parents: uses.parents,
                external_bases: uses.bases,
                test_parents: uses.test_parents,
                test_bases: uses.test_bases,
                order,
            }),
            _ => Err(Diagnostics(diags)),
        }
    }

    /// Every external image the workspace names, in builds and in tests, each once.
    pub fn all_external_bases(&self) -> std::collections::BTreeSet<&String> {
        self.external_bases_of(|_| true)
    }

    /// The external images the builds and tests of the variants `selected` names, each once.
    pub fn external_bases_of(&self, selected: impl Fn(usize) -> bool) -> std::collections::BTreeSet<&String> {
        (0..self.external_bases.len())
            .filter(|v| selected(*v))
            .flat_map(|v| self.external_bases[v].iter().chain(self.test_bases[v].iter().flatten()))
            .collect()
    }
}

#[derive(Debug)]
pub struct Graph {
    pub dag: DiGraph<Node, ()>,
    pub variants: Vec<VariantNodes>,
    /// Per context directory (relative to the root): its files' hashes.
    pub context_manifests: HashMap<PathBuf, Arc<ContextManifest>>,
    /// trellis's own files, left out of every context: the builds' tars leave out the same.
    pub own_files: Arc<OwnFiles>,
    /// The engine's own platform the graph was keyed for.
    pub native_platform: String,
    by_id: HashMap<String, NodeIndex>,
}

impl Graph {
    /// Builds the graph and computes every key. Reads the build contexts and the test
    /// Dockerfiles; reports every problem it finds as a diagnostic.
    pub fn build(workspace: &Model, dependencies: &Dependencies, inputs: &GraphInputs) -> Result<Self, Diagnostics> {
        let native = inputs.native();
        let mut diags = platform_mismatches(workspace, &dependencies.parents, &native);
        let own_files = OwnFiles::of(workspace, &inputs.reports);
        let contexts = context_digests(workspace, &own_files, &mut diags);
        if !diags.is_empty() {
            return Err(Diagnostics(diags));
        }
        let Dependencies { parents, external_bases, test_parents, test_bases, order } = dependencies;

        // Build keys need the parents' keys: compute in dependency order, per platform.
        let digest_of = |dir: &Path| contexts[&workspace.root.join(dir)].digest;
        let mut builds: Vec<Vec<Keyed>> = vec![Vec::new(); workspace.variants.len()];
        for &v in order {
            let variant = &workspace.variants[v];
            for platform in variant.platform_slots() {
                let wanted = platform.unwrap_or(&native);
                let parent_keys: Vec<(&str, NodeKey)> = (parents[v].iter())
                    .map(|&p| (workspace.variants[p].id.as_str(), slot_key(&builds, workspace, p, wanted, &native)))
                    .collect();
                let keyed = build_key(
                    variant,
                    platform,
                    &digest_of(&variant.context),
                    &parent_keys,
                    &external_bases[v],
                    inputs,
                );
                builds[v].push(keyed);
            }
        }

        let mut dag = DiGraph::new();
        let mut variants = Vec::with_capacity(workspace.variants.len());
        let mut by_id = HashMap::new();
        let mut add = |dag: &mut DiGraph<Node, ()>, node: Node| {
            let id = node.id.clone();
            let index = dag.add_node(node);
            by_id.insert(id, index);
            index
        };
        for (v, variant) in workspace.variants.iter().enumerate() {
            let node = |kind: NodeKind, id: String, (key, components): Keyed| Node {
                id,
                kind,
                variant: v,
                test: None,
                platform: None,
                key,
                components,
            };
            let render = add(&mut dag, node(NodeKind::Render, format!("render:{}", variant.id), render_key(variant)));
            let mut platforms = Vec::new();
            for (slot, platform) in variant.platform_slots().into_iter().enumerate() {
                let at = platform.map(|p| format!("@{p}")).unwrap_or_default();
                let (build_key, build_components) = builds[v][slot].clone();
                let mut n = node(NodeKind::Build, format!("build:{}{at}", variant.id), (build_key, build_components));
                n.platform = platform.map(str::to_owned);
                let build = add(&mut dag, n);
                dag.add_edge(render, build, ());
                let mut tests = Vec::new();
                for (t, test) in variant.tests.iter().enumerate() {
                    let wanted = platform.unwrap_or(&native);
                    let uses: Vec<(&str, NodeKey)> = (test_parents[v][t].iter())
                        .map(|&p| (workspace.variants[p].id.as_str(), used_key(&builds, workspace, p, wanted, &native)))
                        .collect();
                    let keyed = test_key(test, &build_key, &uses, &test_bases[v][t], &inputs.base_images, &digest_of);
                    let mut n = node(NodeKind::Test, format!("test:{}/{}{at}", variant.id, test.name), keyed);
                    n.test = Some(t);
                    n.platform = platform.map(str::to_owned);
                    let index = add(&mut dag, n);
                    dag.add_edge(build, index, ());
                    tests.push(index);
                }
                platforms.push(PlatformNodes { platform: platform.map(str::to_owned), build, tests });
            }
            let (tag_key, tag_components) = tag_key(variant, &builds[v]);
            let tag = add(&mut dag, node(NodeKind::Tag, format!("tag:{}", variant.id), (tag_key, tag_components)));
            for platform in &platforms {
                if platform.tests.is_empty() {
                    dag.add_edge(platform.build, tag, ());
                }
                for &t in &platform.tests {
                    dag.add_edge(t, tag, ());
                }
            }
            let mut push_key = ComponentKey::new("push");
            push_key.key(Component::Tag, &tag_key).text(Component::Registry, inputs.registry.as_deref().unwrap_or(""));
            // Another compression publishes other digests: the push runs again. gzip, the
            // default, adds nothing, so the keys of publications made before the setting existed
            // stay current.
            if workspace.settings.compression != trellis_model::CompressionChoice::Gzip {
                push_key.text(Component::Compression, "zstd");
            }
            // By name: the order the platforms are written in changes no key.
            let mut tested = Vec::new();
            for platform in &platforms {
                let at = platform.platform.as_deref().map(|p| format!("@{p}")).unwrap_or_default();
                for (t, &test) in platform.tests.iter().enumerate() {
                    tested.push((format!("{}{at}", variant.tests[t].name), dag[test].key));
                }
            }
            tested.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, key) in tested {
                push_key.key(Component::Tested(name), &key);
            }
            let push = add(&mut dag, node(NodeKind::Push, format!("push:{}", variant.id), push_key.finish()));
            dag.add_edge(tag, push, ());
            variants.push(VariantNodes { render, platforms, tag, push });
        }
        for (tested, per_test) in test_parents.iter().enumerate() {
            for (t, parents) in per_test.iter().enumerate() {
                for &parent in parents {
                    // A test runs with the other images it names as they were tagged after
                    // their own tests.
                    for platform in &variants[tested].platforms {
                        dag.add_edge(variants[parent].tag, platform.tests[t], ());
                    }
                }
            }
        }
        for (child, parents) in parents.iter().enumerate() {
            for &parent in parents {
                // A child builds on its parent's tested, tagged images (every platform's);
                // registries get the parent before the child.
                for build in variants[child].builds().collect::<Vec<_>>() {
                    dag.add_edge(variants[parent].tag, build, ());
                }
                dag.add_edge(variants[parent].push, variants[child].push, ());
            }
        }
        let context_manifests = contexts
            .into_iter()
            .map(|(dir, manifest)| (dir.strip_prefix(&workspace.root).map(Path::to_path_buf).unwrap_or(dir), manifest))
            .collect();
        Ok(Self { dag, variants, context_manifests, own_files: Arc::new(own_files), native_platform: native, by_id })
    }

    pub fn node(&self, id: &str) -> Option<&Node> {
        self.by_id.get(id).map(|i| &self.dag[*i])
    }

    pub fn index(&self, id: &str) -> Option<NodeIndex> {
        self.by_id.get(id).copied()
    }

    /// Every node in a deterministic topological order: among ready nodes, the one created
    /// first (variant order, then render → build → tests → tag → push) goes first.
    pub fn stable_order(&self) -> Vec<NodeIndex> {
        let mut indegree: Vec<usize> =
            self.dag.node_indices().map(|n| self.dag.neighbors_directed(n, petgraph::Incoming).count()).collect();
        let mut ready: BinaryHeap<std::cmp::Reverse<usize>> =
            indegree.iter().enumerate().filter(|(_, d)| **d == 0).map(|(i, _)| std::cmp::Reverse(i)).collect();
        let mut order = Vec::with_capacity(indegree.len());
        while let Some(std::cmp::Reverse(i)) = ready.pop() {
            let index = NodeIndex::new(i);
            order.push(index);
            for next in self.dag.neighbors_directed(index, petgraph::Outgoing) {
                indegree[next.index()] -= 1;
                if indegree[next.index()] == 0 {
                    ready.push(std::cmp::Reverse(next.index()));
                }
            }
        }
        order
    }
}

/// The index of `variant`'s platform `platform` (its unnamed one stands for `native`).
pub fn platform_slot(variant: &Variant, platform: &str, native: &str) -> Option<usize> {
    variant.platform_slots().iter().position(|p| p.unwrap_or(native) == platform)
}

/// The build key of parent `p` for `platform` (checked to exist by [`platform_mismatches`]).
fn slot_key(builds: &[Vec<Keyed>], workspace: &Model, p: usize, platform: &str, native: &str) -> NodeKey {
    let slot = platform_slot(&workspace.variants[p], platform, native).expect("parents have the platform");
    builds[p][slot].0
}

/// The build key of a variant a Dockerfile test uses: its image for the platform under test
/// when it has one, else its first (tests with other images see the engine's tags of them).
fn used_key(builds: &[Vec<Keyed>], workspace: &Model, p: usize, platform: &str, native: &str) -> NodeKey {
    let slot = platform_slot(&workspace.variants[p], platform, native).unwrap_or(0);
    builds[p][slot].0
}

/// A child built for a platform its parent is not built for: a diagnostic per pair, before
/// anything runs. A variant without `platforms` is built for the engine's own (`native`).
fn platform_mismatches(workspace: &Model, parents: &[Vec<usize>], native: &str) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    // One diagnostic per image pair and platform, not per variant of the child.
    let mut seen = HashSet::new();
    for (child, parents) in parents.iter().enumerate() {
        let variant = &workspace.variants[child];
        for &p in parents {
            let parent = &workspace.variants[p];
            for platform in variant.platform_slots() {
                let wanted = platform.unwrap_or(native);
                if platform_slot(parent, wanted, native).is_some() || !seen.insert((variant.image, p, wanted)) {
                    continue;
                }
                diags.push(parent_lacks(workspace, variant, parent, platform, wanted));
            }
        }
    }
    diags
}

fn parent_lacks(
    workspace: &Model,
    child: &Variant,
    parent: &Variant,
    platform: Option<&str>,
    wanted: &str,
) -> Diagnostic {
    let (child_image, parent_image) = (workspace.image_of(child), workspace.image_of(parent));
    let message = match platform {
        Some(_) => format!("{} is built for {wanted}, and its parent {} is not", child.id, parent.id),
        None => {
            format!("{} is built for the engine's platform {wanted}, and its parent {} is not", child.id, parent.id)
        }
    };
    let mut d = Diagnostic::new("trellis::platform::parent_lacks", message);
    d = match child_image.platforms_span {
        Some(span) => d.at(&workspace.manifest, span, format!("{} is built for these platforms", child.id)),
        None => d.at(
            &workspace.manifest,
            child_image.dockerfile_decl.span,
            format!("{} builds FROM {}", child.id, parent.id),
        ),
    };
    if let Some(span) = parent_image.platforms_span.filter(|s| Some(*s) != child_image.platforms_span) {
        d = d.at(&workspace.manifest, span, format!("{} is built for these", parent.id));
    }
    d.help(format!(
        "a child stands on its parent's image for the same platform: add \"{wanted}\" to the platforms image `{}` is built for (its own `platforms`, or the settings')",
        parent_image.name
    ))
}

/// What every variant's Dockerfile and Dockerfile tests use.
struct Uses {
    parents: Vec<Vec<usize>>,
    bases: Vec<Vec<String>>,
    test_parents: Vec<Vec<Vec<usize>>>,
    test_bases: Vec<Vec<Vec<String>>>,
}

/// What a Dockerfile test's `IMAGE` build arg stands for while its image uses are read: the
/// variant under test, which is neither a parent nor an external base of its own test.
const IMAGE_UNDER_TEST: &str = "trellis.invalid/image-under-test";

/// Parents and external bases of every variant, from its rendered Dockerfile, and of every
/// Dockerfile test, from the test's Dockerfile.
fn dependencies(workspace: &Model, diags: &mut Vec<Diagnostic>) -> Uses {
    let mut producers: HashMap<String, usize> = HashMap::new();
    for (v, variant) in workspace.variants.iter().enumerate() {
        for reference in &variant.references {
            producers.insert(normalise(&reference.to_string()).unwrap_or_default(), v);
        }
    }
    let n = workspace.variants.len();
    let mut uses = Uses {
        parents: Vec::with_capacity(n),
        bases: Vec::with_capacity(n),
        test_parents: Vec::with_capacity(n),
        test_bases: Vec::with_capacity(n),
    };
    let under_test = [("IMAGE".to_owned(), IMAGE_UNDER_TEST.to_owned())];
    for variant in &workspace.variants {
        let image = workspace.image_of(variant);
        let mut bad = |reference: &str, span, label: String, help: &str| {
            diags.push(
                Diagnostic::new(
                    "trellis::reference::bad_from",
                    format!("{} uses `{reference}`, which is not a valid image reference", variant.id),
                )
                .at(&workspace.manifest, span, label)
                .help(help),
            );
        };
        let (parents, bases) = classify(&image_uses(&variant.dockerfile, &variant.args), &producers, |u| {
            bad(
                &u.reference,
                image.dockerfile_decl.span,
                format!("line {} of the rendered Dockerfile", u.line),
                "check the FROM / COPY --from line of the template and the build args it substitutes",
            )
        });
        uses.parents.push(parents);
        uses.bases.push(bases);
        let (mut test_parents, mut test_bases) = (Vec::new(), Vec::new());
        for test in &variant.tests {
            let (parents, bases) = match &test.body {
                VariantTestBody::Run(_) => Default::default(),
                VariantTestBody::Dockerfile { dockerfile, text, .. } => {
                    let found = image_uses(text, &under_test);
                    let found: Vec<_> = found.into_iter().filter(|u| u.reference != IMAGE_UNDER_TEST).collect();
                    classify(&found, &producers, |u| {
                        bad(
                            &u.reference,
                            test.span,
                            format!("line {} of {}", u.line, dockerfile.display()),
                            "a test Dockerfile starts FROM ${IMAGE}; other FROM / COPY --from lines must name images",
                        )
                    })
                }
            };
            test_parents.push(parents);
            test_bases.push(bases);
        }
        uses.test_parents.push(test_parents);
        uses.test_bases.push(test_bases);
    }
    uses
}

/// Splits image uses into variants of the workspace and external images, each once, in order
/// of appearance.
fn classify(
    found: &[crate::dockerfile::ImageUse],
    producers: &HashMap<String, usize>,
    mut invalid: impl FnMut(&crate::dockerfile::ImageUse),
) -> (Vec<usize>, Vec<String>) {
    let (mut parents, mut bases) = (Vec::new(), Vec::new());
    for image_use in found {
        match normalise(&image_use.reference) {
            Some(canonical) => match producers.get(&canonical) {
                // A Dockerfile naming its own variant is kept: the cycle check reports it.
                Some(&parent) if !parents.contains(&parent) => parents.push(parent),
                Some(_) => {}
                None if !bases.contains(&image_use.reference) => bases.push(image_use.reference.clone()),
                None => {}
            },
            None => invalid(image_use),
        }
    }
    (parents, bases)
}

/// Variants before the variants that build on them or test with them, or a diagnostic per
/// dependency cycle.
fn variant_order(workspace: &Model, uses: &Uses, diags: &mut Vec<Diagnostic>) -> Option<Vec<usize>> {
    let parents = &uses.parents;
    let mut graph: DiGraph<usize, ()> = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..parents.len()).map(|v| graph.add_node(v)).collect();
    for (child, ps) in parents.iter().enumerate() {
        for &p in ps {
            graph.add_edge(nodes[p], nodes[child], ());
        }
    }
    for (tested, per_test) in uses.test_parents.iter().enumerate() {
        for &p in per_test.iter().flatten() {
            if !graph.contains_edge(nodes[p], nodes[tested]) {
                graph.add_edge(nodes[p], nodes[tested], ());
            }
        }
    }
    match petgraph::algo::toposort(&graph, None) {
        Ok(order) => Some(order.into_iter().map(|n| graph[n]).collect()),
        Err(_) => {
            for component in petgraph::algo::tarjan_scc(&graph) {
                let cyclic = component.len() > 1 || graph.contains_edge(component[0], component[0]);
                if !cyclic {
                    continue;
                }
                let mut members: Vec<usize> = component.iter().map(|n| graph[*n]).collect();
                members.sort_unstable();
                let ids: Vec<&str> = members.iter().map(|v| workspace.variants[*v].id.as_str()).collect();
                let message = match ids.as_slice() {
                    [only] if uses.parents[members[0]].contains(&members[0]) => {
                        format!("{only} is built FROM one of its own references")
                    }
                    [only] => format!("a test of {only} uses one of its own references"),
                    _ => format!("dependency cycle between {}", ids.join(" → ")),
                };
                let mut d = Diagnostic::new("trellis::graph::cycle", message);
                let mut labelled = HashSet::new();
                let mut tests_involved = false;
                let in_cycle = |p: &usize| members.contains(p);
                for &v in &members {
                    let variant = &workspace.variants[v];
                    let image = workspace.image_of(variant);
                    if uses.parents[v].iter().any(in_cycle) && labelled.insert(image.dockerfile_decl.span) {
                        let label = if members.len() == 1 {
                            "its Dockerfile's FROM names this variant's own reference".to_owned()
                        } else {
                            format!("{} is built FROM another variant of the cycle", variant.id)
                        };
                        d = d.at(&workspace.manifest, image.dockerfile_decl.span, label);
                    }
                    for (test, parents) in variant.tests.iter().zip(&uses.test_parents[v]) {
                        if parents.iter().any(in_cycle) && labelled.insert(test.span) {
                            let label = if parents.contains(&v) {
                                "its Dockerfile names this variant's own reference (the image under test is ${IMAGE})"
                                    .to_owned()
                            } else {
                                format!("{} is tested with another variant of the cycle", variant.id)
                            };
                            d = d.at(&workspace.manifest, test.span, label);
                            tests_involved = true;
                        }
                    }
                }
                diags.push(d.help(if tests_involved {
                    "an image cannot be tested with an image built on it: change a FROM line of one of these Dockerfiles"
                } else {
                    "an image cannot be built on itself: change the FROM line of one of these templates"
                }));
            }
            None
        }
    }
}

/// The digest of every distinct context directory (variants' and Dockerfile tests'), in
/// parallel, once each.
fn context_digests(
    workspace: &Model,
    own: &OwnFiles,
    diags: &mut Vec<Diagnostic>,
) -> HashMap<PathBuf, Arc<ContextManifest>> {
    let mut dirs: Vec<(PathBuf, PathBuf, miette::SourceSpan, String)> = Vec::new();
    let mut seen = HashSet::new();
    for variant in &workspace.variants {
        if seen.insert(variant.context.clone()) {
            dirs.push((
                workspace.root.join(&variant.context),
                variant.context.clone(),
                workspace.image_of(variant).context_span,
                variant.id.clone(),
            ));
        }
        for test in &variant.tests {
            if let VariantTestBody::Dockerfile { context, .. } = &test.body
                && seen.insert(context.clone())
            {
                dirs.push((workspace.root.join(context), context.clone(), test.span, variant.id.clone()));
            }
        }
    }
    let root = workspace.root.canonicalize().unwrap_or_else(|_| workspace.root.clone());
    let results: Vec<_> = dirs
        .par_iter()
        .map(|(dir, relative, _, _)| {
            inside_workspace(&root, dir)?;
            ContextWalk::new(dir, &own.in_context(relative)).and_then(|w| w.manifest())
        })
        .collect();
    let mut out = HashMap::new();
    for ((dir, _, span, variant), result) in dirs.into_iter().zip(results) {
        match result {
            Ok(manifest) => {
                out.insert(dir, Arc::new(manifest));
            }
            Err(error) => diags.push(context_diagnostic(workspace, &dir, span, &variant, &error)),
        }
    }
    out
}

/// The mistakes in the build contexts of `workspace` (missing, outside the workspace, a bad
/// `.dockerignore`, unreadable), found without hashing: for a workspace that has other
/// mistakes, so that one run reports them all.
pub fn check_contexts(workspace: &Model) -> Vec<Diagnostic> {
    let own = OwnFiles::of(workspace, &[]);
    let root = workspace.root.canonicalize().unwrap_or_else(|_| workspace.root.clone());
    let mut seen = HashSet::new();
    let mut diags = Vec::new();
    for variant in &workspace.variants {
        if !seen.insert(&variant.context) {
            continue;
        }
        let dir = workspace.root.join(&variant.context);
        let walked =
            inside_workspace(&root, &dir).and_then(|()| ContextWalk::new(&dir, &own.in_context(&variant.context)));
        if let Err(error) = walked {
            diags.push(context_diagnostic(
                workspace,
                &dir,
                workspace.image_of(variant).context_span,
                &variant.id,
                &error,
            ));
        }
    }
    diags
}

/// A context reached through a symlink must still be inside the workspace, like any path.
fn inside_workspace(root: &Path, dir: &Path) -> Result<(), ContextError> {
    match dir.canonicalize() {
        Ok(real) if !real.starts_with(root) => Err(ContextError::OutsideWorkspace { path: dir.to_path_buf(), real }),
        // A missing directory is reported by the walk.
        _ => Ok(()),
    }
}

/// Paths in messages are relative to the root, so diagnostics read the same in every checkout.
fn relative_display(root: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(root).unwrap_or(path).display().to_string();
    if relative.is_empty() { ".".to_owned() } else { relative }
}

fn context_diagnostic(
    workspace: &Model,
    dir: &Path,
    span: miette::SourceSpan,
    variant: &str,
    error: &ContextError,
) -> Diagnostic {
    let shown = relative_display(&workspace.root, dir);
    let (code, message, help) = match error {
        ContextError::Ignore { source, .. } => (
            "trellis::context::bad_dockerignore",
            format!("`{}` {source}", Path::new(&shown).join(".dockerignore").display()),
            "Docker refuses this pattern too: fix or remove the line".to_owned(),
        ),
        ContextError::OutsideWorkspace { real, .. } => (
            "trellis::path::outside_workspace",
            format!("build context `{shown}` of {variant} leads outside the workspace, to `{}`", real.display()),
            "paths may not leave the directory of matrix.kdl, through `..` or a symlink: copy or move the files inside it"
                .to_owned(),
        ),
        ContextError::NotADirectory { .. } => (
            "trellis::context::not_a_directory",
            format!("build context `{shown}` of {variant} is not a directory"),
            "point `context` at a directory".to_owned(),
        ),
        ContextError::Io { path, source } if source.kind() == std::io::ErrorKind::NotFound && path == dir => (
            "trellis::context::missing",
            format!("build context `{shown}` of {variant} does not exist"),
            "create the directory, or point `context` at an existing one (paths are relative to matrix.kdl)".to_owned(),
        ),
        ContextError::Io { path, source } => (
            "trellis::context::unreadable",
            format!(
                "cannot read `{}` in the build context of {variant}: {source}",
                relative_display(&workspace.root, path)
            ),
            "every file of a build context must be readable".to_owned(),
        ),
    };
    Diagnostic::new(code, message).at(&workspace.manifest, span, "context declared here").help(help)
}

fn render_key(variant: &Variant) -> Keyed {
    let mut key = ComponentKey::new("render");
    key.text(Component::Path, &variant.render_path.to_string_lossy()).text(Component::Dockerfile, &variant.dockerfile);
    key.finish()
}

fn build_key(
    variant: &Variant,
    platform: Option<&str>,
    context: &ContextDigest,
    parents: &[(&str, NodeKey)],
    bases: &[String],
    inputs: &GraphInputs,
) -> Keyed {
    let mut key = ComponentKey::new("build");
    key.text(Component::Dockerfile, &variant.dockerfile).key(Component::Context, context);
    for (name, value) in &variant.args {
        key.text(Component::Arg(name.clone()), value);
    }
    for (name, value) in &variant.labels {
        key.text(Component::Label(name.clone()), value);
    }
    if let Some(target) = &variant.target {
        key.text(Component::Target, target);
    }
    if let Some(builder) = &inputs.builder {
        key.text(Component::Builder, builder);
    }
    if let Some(platform) = platform {
        key.text(Component::Platform, platform);
    }
    for (id, parent) in parents {
        key.key(Component::Parent((*id).to_owned()), parent);
    }
    key_bases(&mut key, bases, &inputs.base_images, platform);
    key.finish()
}

fn test_key(
    test: &trellis_model::VariantTest,
    build: &NodeKey,
    uses: &[(&str, NodeKey)],
    bases: &[String],
    ids: &BaseImageIds,
    digest_of: &dyn Fn(&Path) -> ContextDigest,
) -> Keyed {
    let mut key = ComponentKey::new("test");
    key.key(Component::Image, build).text(Component::Network, test.network.as_str());
    match &test.body {
        VariantTestBody::Run(lines) => {
            key.text(Component::Run, &lines.join("\n"));
        }
        VariantTestBody::Dockerfile { text, context, .. } => {
            key.text(Component::TestDockerfile, text).key(Component::TestContext, &digest_of(context));
        }
    }
    for (id, used) in uses {
        key.key(Component::Uses((*id).to_owned()), used);
    }
    key_bases(&mut key, bases, ids, None);
    key.finish()
}

/// External images by the ID they had in the engine: a base that moved changes the key.
fn key_bases(key: &mut ComponentKey, bases: &[String], ids: &BaseImageIds, platform: Option<&str>) {
    for base in bases {
        key.text(Component::Base(base.clone()), ids.get(base, platform).map_or("unresolved", String::as_str));
    }
}

/// The images it tags (one per platform, in platform order: writing the platforms in another
/// order changes nothing) and the references.
fn tag_key(variant: &Variant, builds: &[Keyed]) -> Keyed {
    let mut references: Vec<String> = variant.references.iter().map(ToString::to_string).collect();
    references.sort();
    let mut key = ComponentKey::new("tag");
    let mut images: Vec<_> = variant.platform_slots().into_iter().zip(builds).collect();
    images.sort_by_key(|(platform, _)| *platform);
    for (platform, (build, _)) in images {
        match platform {
            None => key.key(Component::Image, build),
            Some(platform) => key.key(Component::PlatformImage(platform.to_owned()), build),
        };
    }
    key.text(Component::References, &references.join("\n"));
    key.finish()
}
