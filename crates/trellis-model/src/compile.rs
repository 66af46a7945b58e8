//! [`Manifest`] → [`Model`]: checks names and values, expands variants, renders every
//! template of every variant, resolves floating tags. All mistakes are collected; the workspace
//! is returned only when there are none.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, LazyLock};

use indexmap::IndexMap;
use miette::SourceSpan;
use minijinja::Environment;
use minijinja::value::Value;
use regex::Regex;

use crate::axis_vars::{self, AxisFacts, Prepared};
use crate::diagnostic::{Diagnostic, SourceFile};
use crate::files::Files;
use crate::manifest::*;
use crate::model::*;
use crate::template::{self, AxisValueObject, Origin};

static AXIS_VALUE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$").unwrap());
static IDENTIFIER: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^[A-Za-z_][A-Za-z0-9_]*$").unwrap());
static NAME: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^[A-Za-z0-9][A-Za-z0-9._-]*$").unwrap());
static LABEL_KEY: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$").unwrap());

/// Names an axis may not take: template variables of their own, or Jinja keywords.
const RESERVED_AXIS_NAMES: &[&str] =
    &["image", "axes", "true", "false", "none", "True", "False", "None", "loop", "self", "super", "namespace"];
/// Fields of an axis value that attributes may not shadow.
const RESERVED_ATTRIBUTES: &[&str] = &["value", "major", "minor", "patch"];

pub(crate) fn compile(
    root: &Path,
    source: &SourceFile,
    manifest: Manifest,
    files: &dyn Files,
    diags: &mut Vec<Diagnostic>,
) -> Option<Model> {
    let before = diags.len();
    let settings = settings(&manifest.settings, source, diags);
    let axes = axes(&manifest.axes, source, diags);
    let mut compiler = Compiler::new(source, files, diags, &axes, settings.dockerfiles.clone());
    let variants = compiler.variants(&manifest, &axes);
    check_render_paths(&variants, source, compiler.diags);
    check_classic_builder(&variants, &manifest, source, compiler.diags);
    compiler.tidy_diagnostics(before);
    // With diagnostics this is a partial workspace (the variants that compiled), which the
    // caller may only use to look for more mistakes.
    Some(Model {
        root: root.to_path_buf(),
        manifest: source.clone(),
        settings,
        axes: axes.into_iter().map(|a| a.axis).collect(),
        images: manifest.images.iter().map(|decl| image(decl, &manifest.settings)).collect(),
        variants: (variants.into_iter().filter(|v| v.complete || v.context_known))
            .map(|v| with_platforms(v.variant, &manifest))
            .collect(),
        template_files: compiler.template_sources.iter().map(|(f, _)| PathBuf::from(f.name())).collect(),
    })
}

/// The platforms a variant is built for: its image's `platforms`, else the settings'.
fn with_platforms(mut variant: Variant, manifest: &Manifest) -> Variant {
    let decl = manifest.images[variant.image].platforms.as_ref().or(manifest.settings.platforms.as_ref());
    variant.platforms = decl.map(|d| d.values.iter().map(|p| p.value.clone()).collect()).unwrap_or_default();
    variant
}

/// The workspace's record of an image declaration.
fn image(decl: &ImageDecl, settings: &Settings) -> Image {
    Image {
        platforms_span: decl.platforms.as_ref().or(settings.platforms.as_ref()).map(|p| p.span),
        name: decl.name.value.clone(),
        matrix: decl.matrix.iter().map(|m| m.value.clone()).collect(),
        dockerfile_decl: decl.dockerfile.clone().unwrap_or_else(|| Spanned {
            value: String::new(),
            span: decl.name.span,
            verbatim_at: None,
        }),
        context_span: decl.context.as_ref().map_or(decl.name.span, |c| c.span),
    }
}

fn settings(decl: &Settings, source: &SourceFile, diags: &mut Vec<Diagnostic>) -> WorkspaceSettings {
    if !decl.name.value.is_empty() && !NAME.is_match(&decl.name.value) {
        diags.push(
            Diagnostic::new(
                "trellis::schema::bad_name",
                format!("`{}` is not a valid workspace name", decl.name.value),
            )
            .at(source, decl.name.span, "used in image labels")
            .help("use letters, digits, `.`, `_` and `-`, starting with a letter or digit"),
        );
    }
    let dockerfiles = relative_path(&decl.dockerfiles, "the dockerfiles directory", source, diags);
    let state = relative_path(&decl.state, "the state directory", source, diags);
    if let Some(registry) = &decl.registry {
        let probe = format!("{}/probe:latest", registry.value);
        if registry.value.contains("://") || crate::reference::check(&probe).is_err() {
            diags.push(
                Diagnostic::new(
                    "trellis::reference::bad_registry",
                    format!("`{}` is not a registry host", registry.value),
                )
                .at(source, registry.span, "not host[:port]")
                .help("write the registry as host[:port], e.g. \"localhost:5000\""),
            );
        }
    }
    WorkspaceSettings {
        name: decl.name.value.clone(),
        dockerfiles: dockerfiles.unwrap_or_else(|| PathBuf::from("dockerfiles")),
        state: state.unwrap_or_else(|| PathBuf::from(".trellis")),
        registry: decl.registry.as_ref().map(|r| r.value.clone()),
        jobs: decl.jobs,
        retries: decl.retries,
        backoff: decl.backoff,
        pull: decl.pull,
        builder: decl.builder.as_ref().map(|b| b.value),
        compression: decl.compression,
    }
}

/// An axis together with the template value of each of its values.
struct CompiledAxis {
    axis: Axis,
    objects: Vec<Value>,
}

fn axes(decls: &[AxisDecl], source: &SourceFile, diags: &mut Vec<Diagnostic>) -> Vec<CompiledAxis> {
    decls.iter().map(|decl| axis(decl, source, diags)).collect()
}

/// One axis: its name and values checked, its values in axis order, each with its template
/// value.
fn axis(decl: &AxisDecl, source: &SourceFile, diags: &mut Vec<Diagnostic>) -> CompiledAxis {
    check_axis_name(&decl.name, source, diags);
    let values = axis_values(decl, source, diags);
    let values = if decl.sort_by_version {
        sorted_by_version(values, source, diags)
    } else {
        values.into_iter().map(|(value, _)| value).collect()
    };
    // An attribute declared on some values is `none` on the others.
    let mut attributes: Vec<&str> = Vec::new();
    for name in values.iter().flat_map(|v| v.attributes.keys()) {
        if !attributes.contains(&name.as_str()) {
            attributes.push(name);
        }
    }
    let objects =
        values.iter().map(|v| AxisValueObject::value(&v.value, &v.version, &v.attributes, &attributes)).collect();
    CompiledAxis { axis: Axis { name: decl.name.value.clone(), values }, objects }
}

fn check_axis_name(name: &Spanned<String>, source: &SourceFile, diags: &mut Vec<Diagnostic>) {
    if RESERVED_AXIS_NAMES.contains(&name.value.as_str()) || name.value.starts_with("__") {
        diags.push(
            Diagnostic::new("trellis::axis::reserved_name", format!("`{}` cannot name an axis", name.value))
                .at(source, name.span, "reserved")
                .help("`image` and `axes` are template variables of their own, names starting with `__` are trellis's; pick another name"),
        );
    } else if !IDENTIFIER.is_match(&name.value) {
        diags.push(
            Diagnostic::new("trellis::axis::bad_name", format!("`{}` is not a valid axis name", name.value))
                .at(source, name.span, "axis names are template variables")
                .help("use letters, digits and `_`, not starting with a digit (e.g. `node_version`)"),
        );
    }
}

/// The axis's valid values in written order, each with the span of its text; a repeated or
/// invalid value, or one with an invalid attribute, is reported and left out.
fn axis_values(decl: &AxisDecl, source: &SourceFile, diags: &mut Vec<Diagnostic>) -> Vec<(AxisValue, SourceSpan)> {
    let mut seen: HashMap<&str, SourceSpan> = HashMap::new();
    let mut values = Vec::new();
    for value in &decl.values {
        let text = &value.value;
        if let Some(first) = seen.get(text.value.as_str()) {
            diags.push(
                Diagnostic::new(
                    "trellis::axis::duplicate_value",
                    format!("axis `{}` lists `{}` twice", decl.name.value, text.value),
                )
                .at(source, text.span, "listed again")
                .at(source, *first, "first listed here")
                .help("remove one of them"),
            );
            continue;
        }
        seen.insert(&text.value, text.span);
        if !AXIS_VALUE.is_match(&text.value) {
            diags.push(
                Diagnostic::new(
                    "trellis::axis::bad_value",
                    format!("`{}` is not a valid axis value", text.value.escape_debug()),
                )
                .at(source, text.span, "axis values end up in tags, paths and Dockerfiles")
                .help("use letters, digits, `.`, `_`, `+` and `-`, starting with a letter or digit"),
            );
            continue;
        }
        if !attributes_are_valid(value, source, diags) {
            continue;
        }
        let axis_value = AxisValue {
            value: text.value.clone(),
            attributes: value.attributes.iter().map(|(k, v)| (k.clone(), v.value.clone())).collect(),
            version: loose_version(&text.value),
        };
        values.push((axis_value, text.span));
    }
    values
}

/// Reports every reserved, misnamed or unsafe attribute of a value; true when there is none.
fn attributes_are_valid(value: &AxisValueDecl, source: &SourceFile, diags: &mut Vec<Diagnostic>) -> bool {
    let mut ok = true;
    for (attr, attr_value) in &value.attributes {
        if RESERVED_ATTRIBUTES.contains(&attr.as_str()) {
            diags.push(
                Diagnostic::new("trellis::axis::reserved_attribute", format!("attribute `{attr}` is reserved"))
                    .at(source, attr_value.span, "shadows a built-in field")
                    .help("`value`, `major`, `minor` and `patch` are computed from the value; rename the attribute"),
            );
            ok = false;
        } else if !IDENTIFIER.is_match(attr) {
            diags.push(
                Diagnostic::new("trellis::axis::bad_attribute", format!("`{attr}` is not a valid attribute name"))
                    .at(source, attr_value.span, "attributes are template fields")
                    .help("use letters, digits and `_`, not starting with a digit"),
            );
            ok = false;
        } else if let AttributeValue::String(s) = &attr_value.value
            && let Some(bad) = s.chars().find(|c| c.is_control() || *c == '\\')
        {
            diags.push(
                Diagnostic::new(
                    "trellis::axis::unsafe_attribute",
                    format!("attribute `{attr}` contains {}", bad.escape_debug()),
                )
                .at(source, attr_value.span, "could add a line or an instruction to a Dockerfile")
                .help("attribute strings may not contain control characters, line breaks or backslashes"),
            );
            ok = false;
        }
    }
    ok
}

/// Highest version first (`sort="version"`); a value that is not a version is reported and
/// left out.
fn sorted_by_version(
    values: Vec<(AxisValue, SourceSpan)>,
    source: &SourceFile,
    diags: &mut Vec<Diagnostic>,
) -> Vec<AxisValue> {
    let mut sortable = Vec::new();
    for (value, span) in values {
        match versions::Versioning::new(&value.value) {
            Some(v) if !value.version.is_empty() => sortable.push((v, value)),
            _ => diags.push(
                Diagnostic::new("trellis::axis::not_a_version", format!("`{}` is not a version", value.value))
                    .at(source, span, "axis is sorted by version")
                    .help("remove sort=\"version\" from the axis, or write the value as a version (e.g. 22.20.0)"),
            ),
        }
    }
    // Highest first; `sort_by` is stable, so equal versions keep the written order.
    sortable.sort_by(|a, b| b.0.cmp(&a.0));
    sortable.into_iter().map(|(_, value)| value).collect()
}

/// What comparisons can be checked against: the values, and each attribute whose declared
/// values are all strings.
fn facts(axis: &Axis) -> AxisFacts {
    let mut string_attributes: HashMap<String, Vec<String>> = HashMap::new();
    let mut not_strings = Vec::new();
    for value in &axis.values {
        for (name, attribute) in &value.attributes {
            match attribute {
                AttributeValue::String(s) => string_attributes.entry(name.clone()).or_default().push(s.clone()),
                _ => not_strings.push(name.clone()),
            }
        }
    }
    for name in not_strings {
        string_attributes.remove(&name);
    }
    let mut fields: Vec<String> = vec!["value".to_owned()];
    let longest = axis.values.iter().map(|v| v.version.len()).max().unwrap_or(0);
    fields.extend(["major", "minor", "patch"].iter().take(longest).map(|f| (*f).to_owned()));
    for name in axis.values.iter().flat_map(|v| v.attributes.keys()) {
        if !fields.contains(name) {
            fields.push(name.clone());
        }
    }
    AxisFacts { values: axis.values.iter().map(|v| v.value.clone()).collect(), string_attributes, fields }
}

/// `[major, minor, patch]` (as many as present) when `value` reads as a loose version.
fn loose_version(value: &str) -> Vec<u32> {
    let Some(version) = versions::Versioning::new(value) else { return Vec::new() };
    if !value.starts_with(|c: char| c.is_ascii_digit()) {
        return Vec::new();
    }
    (0..3).map_while(|n| version.nth(n)).collect()
}

/// A checked, rooted path relative to the workspace root, or a diagnostic.
fn relative_path(
    path: &Spanned<String>,
    what: &str,
    source: &SourceFile,
    diags: &mut Vec<Diagnostic>,
) -> Option<PathBuf> {
    relative(&path.value)
        .map_err(|why| {
            diags.push(
                Diagnostic::new("trellis::path::outside_workspace", format!("{what} `{}` {why}", path.value))
                    .at(source, path.span, "must stay inside the workspace")
                    .help("paths are relative to the directory of matrix.kdl and may not leave it"),
            );
        })
        .ok()
}

/// Normalises a relative path: no root, no `..` that climbs out, no empty result.
pub(crate) fn relative(path: &str) -> Result<PathBuf, &'static str> {
    if path.is_empty() {
        return Err("is empty");
    }
    if path.contains(['\n', '\r', '\0']) {
        return Err("contains a line break or NUL");
    }
    let mut out = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return Err("climbs out of the workspace");
                }
            }
            Component::RootDir | Component::Prefix(_) => return Err("is absolute"),
        }
    }
    Ok(out)
}

/// An inline template registered in the environment, and the string it came from.
struct Tmpl<'m> {
    name: String,
    decl: &'m Spanned<String>,
    /// Characters the template source has before the user's text (`when` is wrapped).
    prefix: usize,
    /// Text without template syntax renders to itself: not compiled, not rendered (most
    /// repositories, paths and tags of a large workspace are plain strings).
    literal: bool,
    /// The text as compiled (attribute reads on axis variables rewritten).
    prepared: Prepared,
    /// It reads a field no value has, already reported: its undefined errors say no more.
    unknown: bool,
}

/// Per-image templates, registered once and rendered for each variant.
struct ImageTemplates<'m> {
    repository: Option<Tmpl<'m>>,
    dockerfile: Option<Tmpl<'m>>,
    context: Option<Tmpl<'m>>,
    path: Option<Tmpl<'m>>,
    target: Option<Tmpl<'m>>,
    args: Vec<(String, Option<Tmpl<'m>>)>,
    labels: Vec<(String, Option<Tmpl<'m>>)>,
    tags: Vec<(Option<Tmpl<'m>>, Option<Tmpl<'m>>)>,
    tests: Vec<TestTemplates<'m>>,
    excludes: Vec<Option<Tmpl<'m>>>,
    /// False when any template failed to compile: the image is not expanded.
    complete: bool,
}

struct TestTemplates<'m> {
    name: String,
    span: SourceSpan,
    when: Option<Tmpl<'m>>,
    runs: Vec<Option<Tmpl<'m>>>,
    dockerfile: Option<Tmpl<'m>>,
    context: Option<Tmpl<'m>>,
    network: NetworkMode,
}

struct Compiler<'a> {
    source: &'a SourceFile,
    files: &'a dyn Files,
    diags: &'a mut Vec<Diagnostic>,
    /// Every axis's values and string attributes, by axis name.
    facts: HashMap<String, AxisFacts>,
    syntax: minijinja::syntax::SyntaxConfig,
    /// Inline templates of matrix.kdl, `when` expressions included.
    env: Environment<'static>,
    /// Template files, loaded on first use (a `dockerfile` path may itself be a template).
    file_env: Environment<'static>,
    /// Template path → index into `template_sources`, or `None` when it failed to load.
    file_templates: HashMap<PathBuf, Option<usize>>,
    /// Test Dockerfiles, read once per path; `None` when unreadable (diagnosed once).
    test_dockerfiles: HashMap<PathBuf, Option<Arc<str>>>,
    /// Template files (included ones too) and the text they were compiled as.
    template_sources: Vec<(SourceFile, Prepared)>,
    /// Template files that read a field no value has (reported once, not per variant).
    templates_with_unknown: std::collections::HashSet<String>,
    /// Undefined errors not reported again because the field was reported up front.
    suppressed: usize,
    dockerfiles_dir: PathBuf,
}

/// A variant under construction, with the declarations its references came from.
struct Draft {
    variant: Variant,
    /// (reference, index of the tag rule) for every tag the variant rendered.
    produced: Vec<(Reference, usize)>,
    /// Where the render path was declared (`path`, or the image name by default).
    render_decl: SourceSpan,
    /// Every template of the variant rendered (else its mistakes were reported).
    complete: bool,
    /// Its build context rendered: worth checking in a workspace with mistakes.
    context_known: bool,
}

/// An image whose variants are being expanded: its declaration and its compiled templates.
struct ExpandingImage<'a, 't> {
    /// Index into the manifest's images (and the workspace's).
    index: usize,
    decl: &'a ImageDecl,
    templates: &'t ImageTemplates<'a>,
}

/// One combination of an image's axes, as its templates see it.
struct Combination<'v> {
    /// The variant id, `<image>/<value>/<value>…`.
    id: String,
    /// Axis → value, in matrix order.
    values: IndexMap<String, String>,
    /// The template context: each axis variable (and its object), `image` and `axes`.
    context: Value,
    /// The variables of the context, as a diagnostic lists them when a template fails.
    variables: &'v str,
}

impl<'v> Combination<'v> {
    /// The combination that picks value `odometer[n]` of the `n`th axis of `matrix`.
    fn new(image: &ImageDecl, matrix: &[&CompiledAxis], odometer: &[usize], variables: &'v str) -> Self {
        let mut values = IndexMap::new();
        let mut id = image.name.value.clone();
        let mut context: IndexMap<String, Value> = IndexMap::new();
        for (axis, &i) in matrix.iter().zip(odometer) {
            let value = &axis.axis.values[i].value;
            values.insert(axis.axis.name.clone(), value.clone());
            // The variable is the value string; its attributes are read from the object.
            context.insert(axis.axis.name.clone(), Value::from(value.as_str()));
            context.insert(axis_vars::object_name(&axis.axis.name), axis.objects[i].clone());
            id.push('/');
            id.push_str(value);
        }
        context.insert("image".into(), Value::from(image.name.value.as_str()));
        context.insert("axes".into(), Value::from_pairs(values.iter().map(|(k, v)| (k.clone(), v.clone()))));
        Self { id, values, context: Value::from_pairs(context), variables }
    }
}

/// Moves `odometer` to the next combination, the last axis turning fastest; false once every
/// combination was visited.
fn advance(odometer: &mut [usize], matrix: &[&CompiledAxis]) -> bool {
    for position in (0..odometer.len()).rev() {
        odometer[position] += 1;
        if odometer[position] < matrix[position].axis.values.len() {
            return true;
        }
        odometer[position] = 0;
    }
    false
}

/// What rendered of one variant; `None` where a template failed (and was reported).
struct RenderedVariant {
    repository: Option<String>,
    /// The Dockerfile template's path.
    template: Option<PathBuf>,
    context: Option<PathBuf>,
    /// The render directory under the image's, and where it was declared.
    render_at: Option<(PathBuf, SourceSpan)>,
    target: Option<Option<String>>,
    args: Option<Vec<(String, String)>>,
    labels: Option<Vec<(String, String)>>,
    /// (reference, index of the tag rule) for every tag rendered; false when a rule failed.
    produced: (Vec<(Reference, usize)>, bool),
    tests: Option<Vec<VariantTest>>,
    dockerfile: Option<String>,
}

impl RenderedVariant {
    /// Every template rendered (the repository aside: without it there is no variant at all).
    fn complete(&self) -> bool {
        [
            self.template.is_some(),
            self.context.is_some(),
            self.render_at.is_some(),
            self.target.is_some(),
            self.args.is_some(),
            self.labels.is_some(),
            self.produced.1,
            self.tests.is_some(),
            self.dockerfile.is_some(),
        ]
        .iter()
        .all(|ok| *ok)
    }
}

/// The prefix wrapped around a `when` expression to evaluate it as a template.
const WHEN_PREFIX: &str = "{% if ";

impl<'a> Compiler<'a> {
    fn new(
        source: &'a SourceFile,
        files: &'a dyn Files,
        diags: &'a mut Vec<Diagnostic>,
        axes: &[CompiledAxis],
        dockerfiles_dir: PathBuf,
    ) -> Self {
        Compiler {
            source,
            files,
            diags,
            facts: axes.iter().map(|a| (a.axis.name.clone(), facts(&a.axis))).collect(),
            syntax: template::syntax(),
            env: template::environment(),
            file_env: template::environment(),
            file_templates: HashMap::new(),
            test_dockerfiles: HashMap::new(),
            template_sources: Vec::new(),
            templates_with_unknown: Default::default(),
            suppressed: 0,
            dockerfiles_dir,
        }
    }

    /// Every variant of every valid image, with its floating tags resolved.
    fn variants(&mut self, manifest: &'a Manifest, axes: &[CompiledAxis]) -> Vec<Draft> {
        let valid = self.check_images(manifest, axes);
        let templates: Vec<Option<ImageTemplates<'a>>> =
            manifest.images.iter().zip(&valid).map(|(image, ok)| ok.then(|| self.register(image))).collect();
        let mut drafts = Vec::new();
        for (index, (decl, templates)) in manifest.images.iter().zip(&templates).enumerate() {
            if let Some(templates) = templates {
                self.expand(&ExpandingImage { index, decl, templates }, axes, &mut drafts);
            }
        }
        self.resolve_tags(drafts, manifest)
    }

    /// Puts the diagnostics pushed since `before` in reading order (matrix.kdl, then the
    /// templates as loaded), without repeats.
    fn tidy_diagnostics(&mut self, before: usize) {
        let mut names: Vec<&str> = vec![self.source.name()];
        names.extend(self.template_sources.iter().map(|(f, _)| f.name()));
        let tidy = crate::diagnostic::tidy(self.diags.split_off(before), &names);
        self.diags.extend(tidy);
    }

    /// Checks each image's name, matrix and excludes; whether each can be expanded.
    fn check_images(&mut self, manifest: &Manifest, axes: &[CompiledAxis]) -> Vec<bool> {
        let axis_names: Vec<&str> = axes.iter().map(|a| a.axis.name.as_str()).collect();
        let mut valid = Vec::new();
        for image in &manifest.images {
            let mut ok = image.repository.is_some() && image.dockerfile.is_some() && !image.tags.is_empty();
            if !NAME.is_match(&image.name.value) {
                self.diags.push(
                    Diagnostic::new(
                        "trellis::image::bad_name",
                        format!("`{}` is not a valid image name", image.name.value),
                    )
                    .at(self.source, image.name.span, "used in node ids and paths")
                    .help("use letters, digits, `.`, `_` and `-`, starting with a letter or digit"),
                );
            }
            ok &= self.check_matrix(image, &axis_names);
            self.check_excludes(image, axes);
            valid.push(ok);
        }
        valid
    }

    /// Each axis of the matrix is declared and listed once; true when so.
    fn check_matrix(&mut self, image: &ImageDecl, axis_names: &[&str]) -> bool {
        let mut ok = true;
        let mut seen: HashMap<&str, SourceSpan> = HashMap::new();
        for axis in &image.matrix {
            if let Some(first) = seen.get(axis.value.as_str()) {
                self.diags.push(
                    Diagnostic::new(
                        "trellis::image::duplicate_axis",
                        format!("axis `{}` appears twice in the matrix", axis.value),
                    )
                    .at(self.source, axis.span, "again")
                    .at(self.source, *first, "first here")
                    .help("list each axis once"),
                );
                ok = false;
            }
            seen.insert(&axis.value, axis.span);
            if !axis_names.contains(&axis.value.as_str()) {
                let help = match crate::decode::did_you_mean(&axis.value, axis_names) {
                    Some(close) => format!("did you mean `{close}`? declared axes: {}", axis_names.join(", ")),
                    None if axis_names.is_empty() => "declare it with `axis \"name\" \"value\" …`".to_owned(),
                    None => format!("declared axes: {}", axis_names.join(", ")),
                };
                self.diags.push(
                    Diagnostic::new("trellis::image::unknown_axis", format!("no axis named `{}`", axis.value))
                        .at(self.source, axis.span, "not declared")
                        .help(help),
                );
                ok = false;
            }
        }
        ok
    }

    /// Each glob of an `exclude` names an axis of the image and matches one of its values.
    fn check_excludes(&mut self, image: &ImageDecl, axes: &[CompiledAxis]) {
        for (axis, glob) in image.excludes.iter().flat_map(|exclude| &exclude.globs) {
            let Some(compiled) = axes
                .iter()
                .find(|a| a.axis.name == axis.value)
                .filter(|_| image.matrix.iter().any(|m| m.value == axis.value))
            else {
                let matrix: Vec<&str> = image.matrix.iter().map(|m| m.value.as_str()).collect();
                self.diags.push(
                    Diagnostic::new(
                        "trellis::image::exclude_axis",
                        format!("`exclude` names `{}`, which is not in this image's matrix", axis.value),
                    )
                    .at(self.source, axis.span, "not an axis of this image")
                    .help(format!("this image varies over: {}", matrix.join(", "))),
                );
                continue;
            };
            let pattern = wildmatch::WildMatch::new(&glob.value);
            if !compiled.axis.values.iter().any(|v| pattern.matches(&v.value)) {
                let values: Vec<&str> = compiled.axis.values.iter().map(|v| v.value.as_str()).collect();
                self.diags.push(
                    Diagnostic::new(
                        "trellis::image::exclude_matches_nothing",
                        format!("`{}` matches no value of axis `{}`", glob.value, axis.value),
                    )
                    .at(self.source, glob.span, "matches nothing")
                    .help(format!("values: {} (globs use * and ?)", values.join(", "))),
                );
            }
        }
    }

    fn add(&mut self, decl: &'a Spanned<String>, what: &str) -> Option<Tmpl<'a>> {
        self.add_wrapped(decl, what, "", "")
    }

    fn add_when(&mut self, decl: &'a Spanned<String>, what: &str) -> Option<Tmpl<'a>> {
        self.add_wrapped(decl, what, WHEN_PREFIX, " %}1{% endif %}")
    }

    fn add_wrapped(&mut self, decl: &'a Spanned<String>, what: &str, before: &str, after: &str) -> Option<Tmpl<'a>> {
        let name = format!("{}@{}", self.source.name(), decl.span.offset());
        // Without `{` there is no template syntax (the environment keeps trailing newlines and
        // escapes nothing): the text renders to itself.
        if before.is_empty() && !decl.value.contains('{') {
            return Some(Tmpl { name, decl, prefix: 0, literal: true, prepared: Prepared::default(), unknown: false });
        }
        let text = format!("{before}{}{after}", decl.value);
        let prepared = axis_vars::prepare(&text, &self.facts, &self.syntax);
        let impossible = axis_vars::impossible_comparisons(&text, &self.facts, &self.syntax);
        let origin = Origin::Inline(self.source, decl, before.len(), &prepared);
        // Reported, but the template still renders: what it renders may hold more mistakes.
        self.report_impossible(impossible, origin);
        let unknown = self.report_unknown_fields(&text, origin);
        match self.env.add_template_owned(name.clone(), prepared.text.clone()) {
            Ok(()) => Some(Tmpl { name, decl, prefix: before.len(), literal: false, prepared, unknown }),
            Err(error) => {
                self.diags.push(template::diagnostic(&error, origin, &format!("in {what}"), ""));
                None
            }
        }
    }

    /// One diagnostic per read of a field no value of the axis has; true when there was one.
    fn report_unknown_fields(&mut self, text: &str, origin: Origin<'_>) -> bool {
        let found = axis_vars::unknown_fields(text, &self.facts, &self.syntax);
        let any = !found.is_empty();
        for unknown in found {
            let (file, span, _) = origin.locate(Some(unknown.range.clone()));
            // `.value` still reads (older workspaces) but is not taught: the variable is the value.
            let names: Vec<&str> = unknown.fields.iter().map(String::as_str).filter(|f| *f != "value").collect();
            let fields = names.iter().map(|f| format!(".{f}")).collect::<Vec<_>>().join(" ");
            let help = match crate::decode::did_you_mean(&unknown.field, &names) {
                Some(close) => format!("did you mean `{}.{close}`? `{}` has: {fields}", unknown.axis, unknown.axis),
                None => format!("`{}` has: {fields}", unknown.axis),
            };
            self.diags.push(
                Diagnostic::new(
                    "trellis::template::undefined",
                    format!("`{}.{}` is undefined", unknown.axis, unknown.field),
                )
                .at(file, span, format!("no value of `{}` has `{}`", unknown.axis, unknown.field))
                .help(help),
            );
        }
        any
    }

    /// One diagnostic per comparison that can never hold.
    fn report_impossible(&mut self, found: Vec<axis_vars::Impossible>, origin: Origin<'_>) {
        for impossible in found {
            let (file, span, _) = origin.locate(Some(impossible.range.clone()));
            let names: Vec<&str> = impossible.takes.iter().map(String::as_str).collect();
            let help = match crate::decode::did_you_mean(&impossible.value, &names) {
                Some(close) => format!("did you mean `{close}`? `{}` takes: {}", impossible.subject, names.join(", ")),
                None => format!("`{}` takes: {}", impossible.subject, names.join(", ")),
            };
            let always = if impossible.negated { "always true" } else { "never true" };
            self.diags.push(
                Diagnostic::new(
                    "trellis::template::impossible_comparison",
                    format!("`{}` is never `{}`", impossible.subject, impossible.value),
                )
                .at(file, span, format!("so this comparison is {always}"))
                .help(help),
            );
        }
    }

    fn check_identifier(
        &mut self,
        name: &Spanned<String>,
        pattern: &Regex,
        code: &'static str,
        what: &str,
        help: &str,
    ) -> bool {
        if pattern.is_match(&name.value) {
            return true;
        }
        self.diags.push(
            Diagnostic::new(code, format!("`{}` is not a valid {what}", name.value.escape_debug()))
                .at(self.source, name.span, format!("invalid {what}"))
                .help(help.to_owned()),
        );
        false
    }

    /// Compiles every template of an image once, for all its variants.
    fn register(&mut self, image: &'a ImageDecl) -> ImageTemplates<'a> {
        let mut complete = true;
        let repository = self.add_optional(&image.repository, "the repository", &mut complete);
        let dockerfile = self.add_optional(&image.dockerfile, "the dockerfile path", &mut complete);
        let context = self.add_optional(&image.context, "the context path", &mut complete);
        let path = self.add_optional(&image.path, "the render path", &mut complete);
        let target = self.add_optional(&image.target, "the target", &mut complete);
        let args = self.register_args(&image.args, &mut complete);
        let labels = self.register_labels(&image.labels, &mut complete);
        let tags = image.tags.iter().map(|tag| self.register_tag(tag, &mut complete)).collect();
        let tests = image.tests.iter().map(|test| self.register_test(image, test, &mut complete)).collect();
        let excludes =
            image.excludes.iter().map(|exclude| self.add_optional_when(&exclude.when, &mut complete)).collect();
        ImageTemplates { repository, dockerfile, context, path, target, args, labels, tags, tests, excludes, complete }
    }

    /// [`Self::add`] for a template that may be left out; `complete` turns false when it fails.
    fn add_optional(&mut self, decl: &'a Option<Spanned<String>>, what: &str, complete: &mut bool) -> Option<Tmpl<'a>> {
        let template = self.add(decl.as_ref()?, what);
        *complete &= template.is_some();
        template
    }

    /// [`Self::add_when`] for an optional `when`; `complete` turns false when it fails.
    fn add_optional_when(&mut self, when: &'a Option<Spanned<String>>, complete: &mut bool) -> Option<Tmpl<'a>> {
        let template = self.add_when(when.as_ref()?, "a when expression");
        *complete &= template.is_some();
        template
    }

    /// Build args: a bad name is reported; the image still renders, for the mistakes further on.
    fn register_args(
        &mut self,
        args: &'a [(Spanned<String>, Spanned<String>)],
        complete: &mut bool,
    ) -> Vec<(String, Option<Tmpl<'a>>)> {
        let mut registered = Vec::new();
        for (name, value) in args {
            self.check_identifier(
                name,
                &IDENTIFIER,
                "trellis::image::bad_arg_name",
                "build arg name",
                "build arg names are letters, digits and `_`, not starting with a digit",
            );
            let template = self.add(value, "a build arg");
            *complete &= template.is_some();
            registered.push((name.value.clone(), template));
        }
        registered
    }

    /// Labels: a bad or reserved key is reported; the image still renders.
    fn register_labels(
        &mut self,
        labels: &'a [(Spanned<String>, Spanned<String>)],
        complete: &mut bool,
    ) -> Vec<(String, Option<Tmpl<'a>>)> {
        let mut registered = Vec::new();
        for (name, value) in labels {
            self.check_identifier(
                name,
                &LABEL_KEY,
                "trellis::image::bad_label_key",
                "label key",
                "label keys look like `org.opencontainers.image.version`",
            );
            if name.value.starts_with("dev.trellis.") {
                self.diags.push(
                    Diagnostic::new(
                        "trellis::image::reserved_label",
                        format!("label `{}` is set by trellis", name.value),
                    )
                    .at(self.source, name.span, "reserved")
                    .help("dev.trellis.* labels record the workspace, variant and key; pick another key"),
                );
            }
            let template = self.add(value, "a label");
            *complete &= template.is_some();
            registered.push((name.value.clone(), template));
        }
        registered
    }

    /// A tag rule: its template and its `when`.
    fn register_tag(&mut self, tag: &'a TagDecl, complete: &mut bool) -> (Option<Tmpl<'a>>, Option<Tmpl<'a>>) {
        let template = self.add(&tag.template, "a tag");
        *complete &= template.is_some();
        let when = self.add_optional_when(&tag.when, complete);
        (template, when)
    }

    fn register_test(&mut self, image: &'a ImageDecl, test: &'a TestDecl, complete: &mut bool) -> TestTemplates<'a> {
        self.check_identifier(
            &test.name,
            &NAME,
            "trellis::test::bad_name",
            "test name",
            "test names are letters, digits, `.`, `_` and `-`: they are part of node ids",
        );
        let mut compiled = TestTemplates {
            name: test.name.value.clone(),
            span: test.name.span,
            when: self.add_optional_when(&test.when, complete),
            runs: Vec::new(),
            dockerfile: None,
            context: None,
            network: test.network.as_ref().or(image.network.as_ref()).map(|n| n.value).unwrap_or_default(),
        };
        match &test.body {
            TestBody::Run(lines) => {
                for line in lines {
                    let run = self.add(line, "a run line");
                    *complete &= run.is_some();
                    compiled.runs.push(run);
                }
            }
            TestBody::Dockerfile { dockerfile, context } => {
                compiled.dockerfile = self.add(dockerfile, "a test dockerfile path");
                *complete &= compiled.dockerfile.is_some();
                compiled.context = self.add_optional(context, "a test context path", complete);
            }
        }
        compiled
    }

    /// Renders an inline template for a variant; `None` (with a diagnostic) when rendering fails.
    fn render(&mut self, t: &Tmpl<'a>, variant: &Combination<'_>) -> Option<String> {
        if t.literal {
            return Some(t.decl.value.clone());
        }
        let result = self.env.get_template(&t.name).and_then(|tmpl| tmpl.render(&variant.context));
        match result {
            Ok(text) => Some(text),
            Err(error) if t.unknown && error.kind() == minijinja::ErrorKind::UndefinedError => {
                self.suppressed += 1;
                None
            }
            Err(error) => {
                let origin = Origin::Inline(self.source, t.decl, t.prefix, &t.prepared);
                let context = format!("for {}", variant.id);
                self.diags.push(template::diagnostic(&error, origin, &context, variant.variables));
                None
            }
        }
    }

    fn holds(&mut self, when: Option<&Tmpl<'a>>, variant: &Combination<'_>) -> Option<bool> {
        match when {
            None => Some(true),
            Some(t) => self.render(t, variant).map(|s| s == "1"),
        }
    }

    fn path(&mut self, rendered: String, decl: &Spanned<String>, what: &str, variant: &str) -> Option<PathBuf> {
        match relative(&rendered) {
            Ok(path) => Some(path),
            Err(why) => {
                self.diags.push(
                    Diagnostic::new(
                        "trellis::path::outside_workspace",
                        format!("{what} `{}` {why}", rendered.escape_debug()),
                    )
                    .at(self.source, decl.span, format!("rendered for {variant}"))
                    .help("paths are relative to the directory of matrix.kdl and may not leave it"),
                );
                None
            }
        }
    }

    /// Reads (once) a test's own Dockerfile. Its text is part of the test's key and is what the
    /// engine builds, so both see the same bytes.
    fn test_dockerfile(&mut self, path: &Path, span: SourceSpan, test: &str) -> Option<Arc<str>> {
        if let Some(known) = self.test_dockerfiles.get(path) {
            return known.clone();
        }
        let loaded = match self.files.read(path) {
            Ok(text) => Some(Arc::from(text)),
            Err(error) => {
                self.diags.push(
                    Diagnostic::new(
                        "trellis::test::unreadable",
                        format!("cannot read the Dockerfile `{}` of test `{test}`: {error}", path.display()),
                    )
                    .at(self.source, span, "declared here")
                    .help("the path is relative to the directory of matrix.kdl"),
                );
                None
            }
        };
        self.test_dockerfiles.insert(path.to_path_buf(), loaded.clone());
        loaded
    }

    /// Loads (once) and compiles a template file; its index in `template_sources`.
    fn template_file(&mut self, path: &Path, decl: &Spanned<String>) -> Option<usize> {
        if let Some(known) = self.file_templates.get(path) {
            return *known;
        }
        let loaded = match self.files.read(path) {
            Ok(text) => self.add_template_file(path, text),
            Err(error) => {
                self.diags.push(
                    Diagnostic::new(
                        "trellis::template::unreadable",
                        format!("cannot read template `{}`: {error}", path.display()),
                    )
                    .at(self.source, decl.span, "this file")
                    .help("the path is relative to the directory of matrix.kdl"),
                );
                None
            }
        };
        self.file_templates.insert(path.to_path_buf(), loaded);
        loaded
    }

    /// Compiles a template file, then the files it includes, imports or extends by name (relative
    /// to its folder): they are its sources for diagnostics, and what they render is part of
    /// the Dockerfile, hence of the keys.
    fn add_template_file(&mut self, path: &Path, text: String) -> Option<usize> {
        let name = path.to_string_lossy().into_owned();
        let file = SourceFile::new(name.clone(), text.clone());
        let prepared = axis_vars::prepare(&text, &self.facts, &self.syntax);
        let found = axis_vars::impossible_comparisons(&text, &self.facts, &self.syntax);
        self.report_impossible(found, Origin::File(&file, &prepared));
        if self.report_unknown_fields(&text, Origin::File(&file, &prepared)) {
            self.templates_with_unknown.insert(name.clone());
        }
        let mut ok = true;
        if let Err(error) = self.file_env.add_template_owned(name.clone(), prepared.text.clone()) {
            self.diags.push(template::diagnostic(&error, Origin::File(&file, &prepared), "in this template", ""));
            ok = false;
        }
        let index = self.template_sources.len();
        self.template_sources.push((file, prepared));
        // Known before its includes load: a template that includes itself is not read twice.
        self.file_templates.insert(path.to_path_buf(), ok.then_some(index));
        for (included, range) in axis_vars::template_names(&text, &self.syntax) {
            let joined = PathBuf::from(template::join_template_path(&name, &included));
            if self.file_templates.contains_key(&joined) {
                continue;
            }
            let loaded = match self.files.read(&joined) {
                Ok(text) => self.add_template_file(&joined, text),
                Err(error) => {
                    let file = &self.template_sources[index].0;
                    self.diags.push(
                        Diagnostic::new(
                            "trellis::template::unreadable",
                            format!("cannot read template `{}`: {error}", joined.display()),
                        )
                        .at(file, SourceSpan::from(range), "named here")
                        .help("included templates are found relative to the including template's folder"),
                    );
                    None
                }
            };
            ok &= loaded.is_some();
            self.file_templates.insert(joined, loaded);
        }
        ok.then_some(index)
    }

    fn expand(&mut self, image: &ExpandingImage<'a, '_>, axes: &[CompiledAxis], out: &mut Vec<Draft>) {
        if !image.templates.complete {
            return;
        }
        let decl = image.decl;
        let matrix: Vec<&CompiledAxis> =
            decl.matrix.iter().filter_map(|m| axes.iter().find(|a| a.axis.name == m.value)).collect();
        // An axis left without valid values was already reported; expanding it says nothing new.
        if matrix.len() != decl.matrix.len() || matrix.iter().any(|a| a.axis.values.is_empty()) {
            return;
        }
        let variables = describe_variables(&matrix);
        let before = out.len();
        let diagnostics_before = (self.diags.len(), self.suppressed);
        let mut odometer = vec![0usize; matrix.len()];
        loop {
            let combination = Combination::new(decl, &matrix, &odometer, &variables);
            out.extend(self.variant(image, combination));
            if !advance(&mut odometer, &matrix) {
                break;
            }
        }
        // Only when nothing failed: variants that failed to render are not "excluded".
        if out.len() == before && (self.diags.len(), self.suppressed) == diagnostics_before {
            self.diags.push(
                Diagnostic::new("trellis::image::no_variants", format!("image `{}` has no variants", decl.name.value))
                    .at(self.source, decl.name.span, "every combination is excluded")
                    .help("loosen its `exclude` rules or add axis values"),
            );
        }
    }

    /// The variant of one combination, unless an `exclude` drops it or a template fails.
    fn variant(&mut self, image: &ExpandingImage<'a, '_>, combination: Combination<'_>) -> Option<Draft> {
        // Excludes first: an excluded combination is never rendered.
        if self.excluded(image, &combination) {
            return None;
        }
        self.render_variant(image, combination)
    }

    fn excluded(&mut self, image: &ExpandingImage<'a, '_>, combination: &Combination<'_>) -> bool {
        for (exclude, when) in image.decl.excludes.iter().zip(&image.templates.excludes) {
            let globs_match = exclude.globs.iter().all(|(axis, glob)| {
                combination.values.get(&axis.value).is_some_and(|v| wildmatch::WildMatch::new(&glob.value).matches(v))
            });
            if globs_match && self.holds(when.as_ref(), combination) != Some(false) {
                return true;
            }
        }
        false
    }

    /// Renders every template of one variant. Every failing template is reported (a variant
    /// with four mistakes shows four diagnostics), then the variant is dropped.
    fn render_variant(&mut self, image: &ExpandingImage<'a, '_>, variant: Combination<'_>) -> Option<Draft> {
        let t = image.templates;
        let repository = self.render(t.repository.as_ref()?, &variant);
        let dockerfile_decl = t.dockerfile.as_ref()?;
        let template = self
            .render(dockerfile_decl, &variant)
            .and_then(|p| self.path(p, dockerfile_decl.decl, "the dockerfile path", &variant.id));
        let context = match &t.context {
            Some(c) => self.render(c, &variant).and_then(|p| self.path(p, c.decl, "the context path", &variant.id)),
            None => template.as_ref().map(|p| p.parent().map(Path::to_path_buf).unwrap_or_default()),
        };
        let render_at = match &t.path {
            Some(p) => self
                .render(p, &variant)
                .and_then(|r| self.path(r, p.decl, "the render path", &variant.id))
                .map(|sub| (sub, p.decl.span)),
            None => Some((variant.values.values().collect::<PathBuf>(), image.decl.name.span)),
        };
        let target = match &t.target {
            Some(target) => self.render(target, &variant).map(Some),
            None => Some(None),
        };
        let args = self.render_pairs(&t.args, &variant);
        let labels = self.render_pairs(&t.labels, &variant);
        let produced = self.render_tags(image, &variant, repository.as_deref());
        let tests = self.render_tests(&t.tests, &variant);
        let dockerfile = template.as_ref().and_then(|path| self.render_file(path, dockerfile_decl, &variant));
        let rendered = RenderedVariant {
            repository,
            template,
            context,
            render_at,
            target,
            args,
            labels,
            produced,
            tests,
            dockerfile,
        };
        self.draft(image, variant, rendered)
    }

    /// A variant with mistakes still takes part in the checks across variants (tag
    /// collisions, render paths, build contexts) with what did render: every mistake in one
    /// run. It never reaches a valid workspace: its mistakes were reported.
    fn draft(
        &self,
        image: &ExpandingImage<'a, '_>,
        variant: Combination<'_>,
        rendered: RenderedVariant,
    ) -> Option<Draft> {
        let complete = rendered.complete();
        let context_known = rendered.context.is_some();
        let (repository, (sub_path, render_decl)) = (rendered.repository?, rendered.render_at?);
        let render_path = self.dockerfiles_dir.join(&image.decl.name.value).join(sub_path).join("Dockerfile");
        Some(Draft {
            variant: Variant {
                id: variant.id,
                image: image.index,
                values: variant.values,
                repository,
                template: rendered.template.unwrap_or_default(),
                dockerfile: rendered.dockerfile.unwrap_or_default(),
                render_path,
                context: rendered.context.unwrap_or_default(),
                target: rendered.target.flatten(),
                args: rendered.args.unwrap_or_default(),
                labels: rendered.labels.unwrap_or_default(),
                network: image.decl.network.as_ref().map(|n| n.value).unwrap_or_default(),
                references: Vec::new(),
                tests: rendered.tests.unwrap_or_default(),
                platforms: Vec::new(),
            },
            produced: rendered.produced.0,
            render_decl,
            complete,
            context_known,
        })
    }

    /// Build args or labels: every value rendered, every failure reported.
    fn render_pairs(
        &mut self,
        pairs: &[(String, Option<Tmpl<'a>>)],
        variant: &Combination<'_>,
    ) -> Option<Vec<(String, String)>> {
        let rendered: Vec<Option<(String, String)>> =
            pairs.iter().map(|(name, value)| Some((name.clone(), self.render(value.as_ref()?, variant)?))).collect();
        rendered.into_iter().collect()
    }

    /// The references the variant's tag rules produce, with the index of each rule.
    fn render_tags(
        &mut self,
        image: &ExpandingImage<'a, '_>,
        variant: &Combination<'_>,
        repository: Option<&str>,
    ) -> (Vec<(Reference, usize)>, bool) {
        let id = &variant.id;
        let mut produced = Vec::new();
        let mut ok = true;
        for (rule, ((tag, when), tag_decl)) in image.templates.tags.iter().zip(&image.decl.tags).enumerate() {
            match self.holds(when.as_ref(), variant) {
                Some(true) => {}
                Some(false) => continue,
                None => {
                    ok = false;
                    continue;
                }
            }
            let Some(rendered) = tag.as_ref().and_then(|tag| self.render(tag, variant)) else {
                ok = false;
                continue;
            };
            let Some(repository) = repository else { continue };
            match check_reference(repository, &rendered) {
                Ok(()) => produced.push((
                    Reference { repository: repository.to_owned(), tag: rendered, floating: tag_decl.float },
                    rule,
                )),
                Err(why) => {
                    ok = false;
                    self.diags.push(
                        Diagnostic::new("trellis::reference::invalid", format!("`{repository}:{}` is not a valid image reference: {why}", rendered.escape_debug()))
                            .at(self.source, tag_decl.template.span, format!("rendered for {id}"))
                            .help("a tag is up to 128 letters, digits, `_`, `.` and `-`, not starting with `.` or `-`; a repository is lowercase path components"),
                    );
                }
            }
        }
        (produced, ok)
    }

    /// The variant's tests whose `when` holds, each rendered.
    fn render_tests(&mut self, tests: &[TestTemplates<'a>], variant: &Combination<'_>) -> Option<Vec<VariantTest>> {
        let mut rendered = Vec::new();
        let mut ok = true;
        for test in tests {
            match self.holds(test.when.as_ref(), variant) {
                Some(true) => {}
                Some(false) => continue,
                None => {
                    ok = false;
                    continue;
                }
            }
            let body = match &test.dockerfile {
                None => self.render_run_lines(&test.runs, variant).map(VariantTestBody::Run),
                Some(dockerfile) => self.test_body(test, dockerfile, variant),
            };
            match body {
                Some(body) => {
                    rendered.push(VariantTest { name: test.name.clone(), span: test.span, body, network: test.network })
                }
                None => ok = false,
            }
        }
        ok.then_some(rendered)
    }

    fn render_run_lines(&mut self, runs: &[Option<Tmpl<'a>>], variant: &Combination<'_>) -> Option<Vec<String>> {
        let mut lines = Vec::new();
        let mut ok = true;
        for run in runs {
            let Some(run) = run.as_ref() else {
                ok = false;
                continue;
            };
            let Some(line) = self.render(run, variant) else {
                ok = false;
                continue;
            };
            if line.contains(['\n', '\r']) || line.trim().is_empty() {
                self.diags.push(
                    Diagnostic::new("trellis::test::bad_run_line", "a run line must render to one non-empty line")
                        .at(self.source, run.decl.span, format!("rendered for {}", variant.id))
                        .help(
                            "each `run` becomes one RUN instruction: write one command per `run`, or join them with &&",
                        ),
                );
                ok = false;
                continue;
            }
            lines.push(line);
        }
        ok.then_some(lines)
    }

    /// A Dockerfile test: its paths rendered, its Dockerfile read.
    fn test_body(
        &mut self,
        test: &TestTemplates<'a>,
        dockerfile: &Tmpl<'a>,
        variant: &Combination<'_>,
    ) -> Option<VariantTestBody> {
        let rendered = self.render(dockerfile, variant)?;
        let dockerfile_path = self.path(rendered, dockerfile.decl, "the test dockerfile", &variant.id)?;
        let context = match &test.context {
            Some(c) => {
                let rendered = self.render(c, variant)?;
                self.path(rendered, c.decl, "the test context", &variant.id)?
            }
            None => dockerfile_path.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        let text = self.test_dockerfile(&dockerfile_path, test.span, &test.name)?;
        Some(VariantTestBody::Dockerfile { dockerfile: dockerfile_path, context, text })
    }

    /// The variant's Dockerfile from its template file, with the generated-by header.
    fn render_file(&mut self, template_path: &Path, decl: &Tmpl<'a>, variant: &Combination<'_>) -> Option<String> {
        let file = self.template_file(template_path, decl.decl)?;
        let rendered = (self.file_env.get_template(self.template_sources[file].0.name()))
            .and_then(|tmpl| tmpl.render(&variant.context));
        match rendered {
            Ok(text) => Some(with_header(&text, template_path, &variant.id)),
            Err(error) => {
                // The error may be in an included template: minijinja wraps it, innermost last.
                let mut error = &error;
                while let Some(inner) =
                    std::error::Error::source(error).and_then(|e| e.downcast_ref::<minijinja::Error>())
                {
                    error = inner;
                }
                let (source, prepared) = (self.template_sources.iter())
                    .find(|(f, _)| Some(f.name()) == error.name())
                    .unwrap_or(&self.template_sources[file]);
                if error.kind() == minijinja::ErrorKind::UndefinedError
                    && self.templates_with_unknown.contains(source.name())
                {
                    self.suppressed += 1;
                    return None;
                }
                let origin = Origin::File(source, prepared);
                self.diags.push(template::diagnostic(error, origin, &format!("for {}", variant.id), variant.variables));
                None
            }
        }
    }

    /// Floating tags go to the first producer in variant order; a reference produced by two
    /// variants where any producer is not floating is an error naming both.
    fn resolve_tags(&mut self, mut drafts: Vec<Draft>, manifest: &Manifest) -> Vec<Draft> {
        let mut owners: HashMap<String, (usize, usize, bool)> = HashMap::new();
        // One collision per reference, naming its first two producers (not one per pair).
        let mut collided: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut won: Vec<Vec<usize>> = vec![Vec::new(); drafts.len()];
        for (v, draft) in drafts.iter().enumerate() {
            for (p, (reference, rule)) in draft.produced.iter().enumerate() {
                let key = canonical(reference);
                match owners.get(&key) {
                    None => {
                        owners.insert(key, (v, *rule, reference.floating));
                        won[v].push(p);
                    }
                    // The same variant rendering one reference twice is harmless.
                    Some((owner, _, _)) if *owner == v => {}
                    Some(&(owner, owner_rule, owner_floats)) => {
                        if (owner_floats && reference.floating) || !collided.insert(key.clone()) {
                            continue;
                        }
                        self.report_collision(reference, (&drafts[owner], owner_rule), (draft, *rule), manifest);
                    }
                }
            }
        }
        for (draft, won) in drafts.iter_mut().zip(won) {
            let mut references: Vec<Reference> = Vec::new();
            for p in won {
                let reference = draft.produced[p].0.clone();
                if !references.iter().any(|r| r.tag == reference.tag && r.repository == reference.repository) {
                    references.push(reference);
                }
            }
            draft.variant.references = references;
        }
        drafts
    }

    /// A reference produced by two variants, not both by floating tags: `first` is its owner,
    /// each variant with the index of its producing tag rule.
    fn report_collision(
        &mut self,
        reference: &Reference,
        first: (&Draft, usize),
        this: (&Draft, usize),
        manifest: &Manifest,
    ) {
        let ((first, first_rule), (this, this_rule)) = (first, this);
        let first_decl = &manifest.images[first.variant.image].tags[first_rule];
        let this_decl = &manifest.images[this.variant.image].tags[this_rule];
        let mut d = Diagnostic::new(
            "trellis::tag::collision",
            format!("`{reference}` is produced by {} and {}", first.variant.id, this.variant.id),
        );
        if first_decl.template.span == this_decl.template.span {
            d = d.at(self.source, this_decl.template.span, "renders the same reference for both variants");
        } else {
            d = d.at(self.source, this_decl.template.span, format!("for {}", this.variant.id)).at(
                self.source,
                first_decl.template.span,
                format!("for {}", first.variant.id),
            );
        }
        self.diags.push(d.help(
            "mark every producing tag float=#true to give the reference to the first variant in variant order, or make the tag unique per variant",
        ));
    }
}

/// The docker-normalised form of a reference (`nginx:1` and `docker.io/library/nginx:1` are one).
pub(crate) fn canonical(reference: &Reference) -> String {
    let text = reference.to_string();
    crate::normalise_reference(&text).unwrap_or(text)
}

fn check_reference(repository: &str, tag: &str) -> Result<(), String> {
    static TAG: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$").unwrap());
    if !TAG.is_match(tag) {
        return Err(if tag.is_empty() { "the tag is empty".into() } else { "invalid tag format".into() });
    }
    if repository.contains('@') || repository.rsplit('/').next().is_some_and(|last| last.contains(':')) {
        return Err("the repository must not carry a tag or digest".into());
    }
    crate::reference::check(&format!("{repository}:{tag}"))
}

fn describe_variables(matrix: &[&CompiledAxis]) -> String {
    let mut parts = Vec::new();
    for axis in matrix {
        let mut fields: Vec<String> = Vec::new();
        if axis.axis.values.iter().any(|v| !v.version.is_empty()) {
            fields.push(".major .minor .patch".into());
        }
        let mut attributes: Vec<&str> =
            axis.axis.values.iter().flat_map(|v| v.attributes.keys().map(String::as_str)).collect();
        attributes.sort_unstable();
        attributes.dedup();
        fields.extend(attributes.iter().map(|a| format!(".{a}")));
        if fields.is_empty() {
            parts.push(axis.axis.name.clone());
        } else {
            parts.push(format!("{} ({})", axis.axis.name, fields.join(" ")));
        }
    }
    parts.push("image".into());
    parts.push("axes".into());
    parts.join(", ")
}

/// Puts the generated-by comment first, after any parser directives (`# syntax=`, `# escape=`),
/// which Docker only honours at the very top.
fn with_header(text: &str, template: &Path, variant: &str) -> String {
    static DIRECTIVE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?i)^#\s*(syntax|escape|check)\s*=").unwrap());
    let mut directives = 0;
    for line in text.split_inclusive('\n') {
        if DIRECTIVE.is_match(line) {
            directives += line.len();
        } else {
            break;
        }
    }
    let header = format!(
        "# Generated by trellis from {} for {variant}. Do not edit: change the template and run `trellis render`.\n",
        template.to_string_lossy()
    );
    format!("{}{header}{}", &text[..directives], &text[directives..])
}

/// `builder "classic"` with a Dockerfile that only BuildKit can build (`RUN --mount`): said
/// before anything runs, once per image, at the setting.
fn check_classic_builder(drafts: &[Draft], manifest: &Manifest, source: &SourceFile, diags: &mut Vec<Diagnostic>) {
    let Some(builder) = manifest.settings.builder.as_ref().filter(|b| b.value == BuilderChoice::Classic) else {
        return;
    };
    let mut reported = std::collections::HashSet::new();
    let host = crate::platform::host();
    let host_arch = crate::platform::Platform::parse(&host).architecture;
    for draft in drafts {
        let image = &manifest.images[draft.variant.image];
        let platforms = image.platforms.as_ref().or(manifest.settings.platforms.as_ref());
        let foreign = platforms
            .into_iter()
            .flat_map(|p| &p.values)
            .map(|p| p.value.as_str())
            .find(|p| crate::platform::Platform::parse(p).architecture != host_arch);
        if let Some(foreign) = foreign
            && crate::platform::classic_cannot_cross_build(&draft.variant.dockerfile)
            && reported.insert(draft.variant.image)
        {
            diags.push(
                Diagnostic::new(
                    "trellis::builder::needs_buildkit",
                    format!(
                        "the classic builder cannot build the Dockerfile of image `{}` for {foreign}: a FROM scratch stage with an ARG before a COPY or ADD ({} first)",
                        image.name.value, draft.variant.id
                    ),
                )
                .at(source, builder.span, "the classic builder is chosen here")
                .help("remove `builder \"classic\"` (BuildKit builds it), or give that stage no ARG (moby#46294)"),
            );
            continue;
        }
        let mounts = draft.variant.dockerfile.lines().any(|line| {
            let mut words = line.split_whitespace();
            words.next().is_some_and(|w| w.eq_ignore_ascii_case("RUN")) && words.any(|w| w.starts_with("--mount="))
        });
        if mounts && reported.insert(draft.variant.image) {
            diags.push(
                Diagnostic::new(
                    "trellis::builder::needs_buildkit",
                    format!(
                        "the Dockerfile of image `{}` uses `RUN --mount` ({} first), which the classic builder cannot run",
                        manifest.images[draft.variant.image].name.value,
                        draft.variant.id
                    ),
                )
                .at(source, builder.span, "the classic builder is chosen here")
                .help("remove `builder \"classic\"` (BuildKit is the default where the engine offers it), or the `--mount`"),
            );
        }
    }
}

fn check_render_paths(drafts: &[Draft], source: &SourceFile, diags: &mut Vec<Diagnostic>) {
    let mut seen: HashMap<&Path, &Draft> = HashMap::new();
    for draft in drafts {
        if let Some(first) = seen.get(draft.variant.render_path.as_path()) {
            diags.push(
                Diagnostic::new(
                    "trellis::path::render_collision",
                    format!(
                        "{} and {} render to the same file `{}`",
                        first.variant.id,
                        draft.variant.id,
                        draft.variant.render_path.display()
                    ),
                )
                .at(source, draft.render_decl, "renders the same path for both")
                .help("make `path` depend on every axis of the image, e.g. path \"{{ node }}/{{ os }}\""),
            );
            continue;
        }
        seen.insert(&draft.variant.render_path, draft);
    }
}
