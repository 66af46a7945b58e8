//! The typed, unvalidated contents of `matrix.kdl`: what the user wrote, every value with the
//! span it came from. `decode` fills it from a KDL document; `compile` checks and expands it.

use std::time::Duration;

use indexmap::IndexMap;
use miette::SourceSpan;

/// A value and where it was written in `matrix.kdl`.
#[derive(Clone, Debug, PartialEq)]
pub struct Spanned<T> {
    pub value: T,
    pub span: SourceSpan,
    /// Byte offset in `matrix.kdl` of the first character of a string's contents, when the
    /// literal holds them verbatim (no escapes): lets template errors point inside the string.
    pub verbatim_at: Option<usize>,
}

impl<T> Spanned<T> {
    pub fn new(value: T, span: SourceSpan) -> Self {
        Self { value, span, verbatim_at: None }
    }
}

/// The whole file.
#[derive(Clone, Debug, Default)]
pub struct Manifest {
    pub settings: Settings,
    pub axes: Vec<AxisDecl>,
    pub images: Vec<ImageDecl>,
}

/// `settings { … }`.
#[derive(Clone, Debug)]
pub struct Settings {
    pub name: Spanned<String>,
    pub dockerfiles: Spanned<String>,
    pub state: Spanned<String>,
    pub registry: Option<Spanned<String>>,
    pub jobs: Jobs,
    pub retries: u32,
    pub backoff: Duration,
    pub pull: PullPolicy,
    /// `None` when not set: the engine picks (see [`crate::WorkspaceSettings::builder`]).
    pub builder: Option<Spanned<BuilderChoice>>,
    /// `platforms "linux/amd64" "linux/arm64"`: every image's, unless it says its own.
    pub platforms: Option<PlatformsDecl>,
    /// How layers are compressed on their way to the registry.
    pub compression: CompressionChoice,
}

impl Default for Settings {
    fn default() -> Self {
        let nowhere = SourceSpan::from(0..0);
        Self {
            name: Spanned::new(String::new(), nowhere),
            dockerfiles: Spanned::new("dockerfiles".into(), nowhere),
            state: Spanned::new(".trellis".into(), nowhere),
            registry: None,
            jobs: Jobs::default(),
            retries: 2,
            backoff: Duration::from_secs(1),
            pull: PullPolicy::Missing,
            builder: None,
            platforms: None,
            compression: CompressionChoice::Gzip,
        }
    }
}

/// Concurrency per node kind; `None` means the default (cores, cores, 4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Jobs {
    pub build: Option<u32>,
    pub test: Option<u32>,
    pub push: Option<u32>,
}

/// When the engine fetches an external base image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    Missing,
    Always,
    Never,
}

/// How layers go to the registry: `settings { compression "gzip" }` (the default, what
/// `docker push` sends) or `"zstd"` (smaller and faster to unpack; clients need containerd 1.5+
/// or Docker 23+ to pull it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionChoice {
    #[default]
    Gzip,
    Zstd,
}

/// The image builder the engine runs: `settings { builder "buildkit" }` or `"classic"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BuilderChoice {
    /// The engine's embedded BuildKit (`RUN --mount=type=cache`, `--platform` on `FROM`, …).
    BuildKit,
    /// The classic (legacy) builder.
    Classic,
}

impl BuilderChoice {
    /// The word of the setting: `"buildkit"` or `"classic"`.
    pub fn as_str(self) -> &'static str {
        match self {
            BuilderChoice::BuildKit => "buildkit",
            BuilderChoice::Classic => "classic",
        }
    }
}

/// `platforms "os/arch[/variant]" …`, in settings or in an image.
#[derive(Clone, Debug)]
pub struct PlatformsDecl {
    /// The whole node.
    pub span: SourceSpan,
    /// Valid and distinct, in the order written.
    pub values: Vec<Spanned<String>>,
}

/// `axis "name" [values…] [sort="version"] { value "v" attr=… }`.
#[derive(Clone, Debug)]
pub struct AxisDecl {
    pub name: Spanned<String>,
    pub sort_by_version: bool,
    pub values: Vec<AxisValueDecl>,
}

#[derive(Clone, Debug)]
pub struct AxisValueDecl {
    pub value: Spanned<String>,
    pub attributes: IndexMap<String, Spanned<AttributeValue>>,
}

/// A value attribute (`codename="jod"`, `lts=#true`).
#[derive(Clone, Debug, PartialEq)]
pub enum AttributeValue {
    String(String),
    Bool(bool),
    Integer(i64),
    Float(f64),
}

/// Build network mode of an image's or a test's build containers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    #[default]
    Default,
    Host,
    None,
}

impl NetworkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Default => "default",
            NetworkMode::Host => "host",
            NetworkMode::None => "none",
        }
    }
}

/// `image "name" { … }`.
#[derive(Clone, Debug)]
pub struct ImageDecl {
    pub name: Spanned<String>,
    pub matrix: Vec<Spanned<String>>,
    pub excludes: Vec<ExcludeDecl>,
    pub repository: Option<Spanned<String>>,
    pub dockerfile: Option<Spanned<String>>,
    pub context: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub target: Option<Spanned<String>>,
    pub args: Vec<(Spanned<String>, Spanned<String>)>,
    pub labels: Vec<(Spanned<String>, Spanned<String>)>,
    pub network: Option<Spanned<NetworkMode>>,
    pub platforms: Option<PlatformsDecl>,
    pub tags: Vec<TagDecl>,
    pub tests: Vec<TestDecl>,
}

/// `exclude axis="glob" … [when="expr"]`.
#[derive(Clone, Debug)]
pub struct ExcludeDecl {
    pub span: SourceSpan,
    pub globs: Vec<(Spanned<String>, Spanned<String>)>,
    pub when: Option<Spanned<String>>,
}

/// `tag "template" [float=#true] [when="expr"]`.
#[derive(Clone, Debug)]
pub struct TagDecl {
    pub template: Spanned<String>,
    pub float: bool,
    pub when: Option<Spanned<String>>,
}

/// `test "name" { run "cmd" … }` or `test "name" dockerfile=… context=…`.
#[derive(Clone, Debug)]
pub struct TestDecl {
    pub name: Spanned<String>,
    pub body: TestBody,
    pub when: Option<Spanned<String>>,
    pub network: Option<Spanned<NetworkMode>>,
}

#[derive(Clone, Debug)]
pub enum TestBody {
    Run(Vec<Spanned<String>>),
    Dockerfile { dockerfile: Spanned<String>, context: Option<Spanned<String>> },
}
