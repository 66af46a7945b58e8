//! The validated, expanded workspace: every variant with its rendered strings and resolved
//! references. Nothing here can be wrong any more; the graph crate builds on it.

use std::fmt;
use std::path::PathBuf;

use indexmap::IndexMap;

use crate::diagnostic::SourceFile;
use crate::manifest::{AttributeValue, BuilderChoice, CompressionChoice, Jobs, NetworkMode, PullPolicy, Spanned};

/// A compiled `matrix.kdl`.
#[derive(Debug)]
pub struct Model {
    /// Directory holding matrix.kdl; every path of the workspace is relative to it.
    pub root: PathBuf,
    pub manifest: SourceFile,
    pub settings: WorkspaceSettings,
    pub axes: Vec<Axis>,
    pub images: Vec<Image>,
    /// In variant order: images as declared, then the first axis slowest.
    pub variants: Vec<Variant>,
    /// Every template file read (Dockerfile templates and what they include), relative to the
    /// root.
    pub template_files: Vec<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct WorkspaceSettings {
    pub name: String,
    /// Relative to the root.
    pub dockerfiles: PathBuf,
    /// Relative to the root.
    pub state: PathBuf,
    pub registry: Option<String>,
    pub jobs: Jobs,
    pub retries: u32,
    pub backoff: std::time::Duration,
    pub pull: PullPolicy,
    /// `None` when not set: BuildKit where the engine offers it, the classic builder otherwise.
    /// The engine decides, not the model.
    pub builder: Option<BuilderChoice>,
    /// How layers are compressed on their way to the registry.
    pub compression: CompressionChoice,
}

impl Variant {
    /// The platforms its builds and tests run for: the named ones, or `[None]` (the engine's
    /// own platform, not named in ids or keys).
    pub fn platform_slots(&self) -> Vec<Option<&str>> {
        match self.platforms.is_empty() {
            true => vec![None],
            false => self.platforms.iter().map(|p| Some(p.as_str())).collect(),
        }
    }
}

/// An axis with its values in axis order (highest version first with `sort="version"`).
#[derive(Clone, Debug)]
pub struct Axis {
    pub name: String,
    pub values: Vec<AxisValue>,
}

#[derive(Clone, Debug)]
pub struct AxisValue {
    pub value: String,
    pub attributes: IndexMap<String, AttributeValue>,
    /// major, minor, patch when the value reads as a loose version.
    pub version: Vec<u32>,
}

#[derive(Clone, Debug)]
pub struct Image {
    pub name: String,
    pub matrix: Vec<String>,
    /// The `dockerfile` declaration, for diagnostics that concern the whole image.
    pub dockerfile_decl: Spanned<String>,
    /// The `context` declaration, or the image name when the context is the default.
    pub context_span: miette::SourceSpan,
    /// The `platforms` its variants are built for (the image's own, or the settings').
    pub platforms_span: Option<miette::SourceSpan>,
}

/// One combination of an image's axes: one build, one image ID, many references.
#[derive(Clone, Debug)]
pub struct Variant {
    /// `<image>/<value>/<value>…`
    pub id: String,
    /// Index into [`Model::images`].
    pub image: usize,
    /// Axis → value, in matrix order.
    pub values: IndexMap<String, String>,
    pub repository: String,
    /// The template, relative to the root.
    pub template: PathBuf,
    /// The rendered Dockerfile, generated-by header included.
    pub dockerfile: String,
    /// Where the rendered Dockerfile is written, relative to the root.
    pub render_path: PathBuf,
    /// Build context directory, relative to the root.
    pub context: PathBuf,
    pub target: Option<String>,
    pub args: Vec<(String, String)>,
    pub labels: Vec<(String, String)>,
    pub network: NetworkMode,
    /// Every reference this variant is tagged with: its own tags and the floating tags it won.
    pub references: Vec<Reference>,
    pub tests: Vec<VariantTest>,
    /// The platforms it is built for (`linux/arm64`), in the order written; empty: the
    /// engine's own platform, with node ids and keys as before platforms existed.
    pub platforms: Vec<String>,
}

/// `repository:tag`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    pub repository: String,
    pub tag: String,
    pub floating: bool,
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.repository, self.tag)
    }
}

#[derive(Clone, Debug)]
pub struct VariantTest {
    pub name: String,
    /// Where the test was declared in matrix.kdl.
    pub span: miette::SourceSpan,
    pub body: VariantTestBody,
    pub network: NetworkMode,
}

#[derive(Clone, Debug)]
pub enum VariantTestBody {
    /// One `RUN` layer per line on top of the variant's image.
    Run(Vec<String>),
    /// A user Dockerfile taking `ARG IMAGE`; paths relative to the root. `text` is the
    /// Dockerfile as read when the workspace was loaded.
    Dockerfile { dockerfile: PathBuf, context: PathBuf, text: std::sync::Arc<str> },
}

impl Model {
    pub fn image_of(&self, variant: &Variant) -> &Image {
        &self.images[variant.image]
    }
}
