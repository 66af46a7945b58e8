//! [`Manifest`] → [`Workspace`]: checks names and values, expands variants, renders every
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
use crate::template::{self, AxisValueObject, Origin};
use crate::workspace::*;

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
) -> Option<Workspace> {
    let before = diags.len();
    let settings = settings(&manifest.settings, source, diags);
    let axes = axes(&manifest.axes, source, diags);
    let facts = axes.iter().map(|a| (a.axis.name.clone(), facts(&a.axis))).collect();
    let mut compiler = Compiler {
        source,
        files,
        diags,
        facts,
        syntax: template::syntax(),
        env: template::environment(),
        file_env: template::environment(),
        file_templates: HashMap::new(),
        test_dockerfiles: HashMap::new(),
        template_sources: Vec::new(),
        templates_with_unknown: Default::default(),
        suppressed: 0,
        dockerfiles_dir: settings.dockerfiles.clone(),
    };
    let valid = compiler.check_images(&manifest, &axes);
    let templates: Vec<Option<ImageTemplates<'_>>> =
        manifest.images.iter().zip(&valid).map(|(image, ok)| ok.then(|| compiler.register(image))).collect();
    let mut drafts = Vec::new();
    for (index, (image, templates)) in manifest.images.iter().zip(&templates).enumerate() {
        if let Some(templates) = templates {
            compiler.expand(index, image, templates, &axes, &mut drafts);
        }
    }
    let variants = compiler.resolve_tags(drafts, &manifest);
    check_render_paths(&variants, source, compiler.diags);
    let mut names: Vec<String> = vec![source.name().to_owned()];
    names.extend(compiler.template_sources.iter().map(|(f, _)| f.name().to_owned()));
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let tidy = crate::diagnostic::tidy(compiler.diags.split_off(before), &name_refs);
    compiler.diags.extend(tidy);
    // With diagnostics this is a partial workspace (the variants that compiled), which the
    // caller may only use to look for more mistakes.
    let images = manifest
        .images
        .iter()
        .map(|decl| Image {
            name: decl.name.value.clone(),
            matrix: decl.matrix.iter().map(|m| m.value.clone()).collect(),
            dockerfile_decl: decl.dockerfile.clone().unwrap_or_else(|| Spanned {
                value: String::new(),
                span: decl.name.span,
                verbatim_at: None,
            }),
            context_span: decl.context.as_ref().map_or(decl.name.span, |c| c.span),
        })
        .collect();
    Some(Workspace {
        root: root.to_path_buf(),
        manifest: source.clone(),
        settings,
        axes: axes.into_iter().map(|a| a.axis).collect(),
        images,
        variants: variants.into_iter().filter(|v| v.complete || v.context_known).map(|v| v.variant).collect(),
        template_files: compiler.template_sources.iter().map(|(f, _)| PathBuf::from(f.name())).collect(),
    })
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
    }
}

/// An axis together with the template value of each of its values.
struct CompiledAxis {
    axis: Axis,
    objects: Vec<Value>,
}

fn axes(decls: &[AxisDecl], source: &SourceFile, diags: &mut Vec<Diagnostic>) -> Vec<CompiledAxis> {
    let mut out = Vec::new();
    for decl in decls {
        let name = &decl.name;
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
        let mut seen: HashMap<&str, SourceSpan> = HashMap::new();
        let mut values = Vec::new();
        for value in &decl.values {
            let text = &value.value;
            if let Some(first) = seen.get(text.value.as_str()) {
                diags.push(
                    Diagnostic::new(
                        "trellis::axis::duplicate_value",
                        format!("axis `{}` lists `{}` twice", name.value, text.value),
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
                        Diagnostic::new(
                            "trellis::axis::bad_attribute",
                            format!("`{attr}` is not a valid attribute name"),
                        )
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
            if !ok {
                continue;
            }
            let version = loose_version(&text.value);
            values.push((
                AxisValue {
                    value: text.value.clone(),
                    attributes: value.attributes.iter().map(|(k, v)| (k.clone(), v.value.clone())).collect(),
                    version,
                },
                text,
            ));
        }
        if decl.sort_by_version {
            let mut sortable = Vec::new();
            for (value, text) in values {
                match versions::Versioning::new(&value.value) {
                    Some(v) if !value.version.is_empty() => sortable.push((v, value)),
                    _ => diags.push(
                        Diagnostic::new("trellis::axis::not_a_version", format!("`{}` is not a version", value.value))
                            .at(source, text.span, "axis is sorted by version")
                            .help(
                                "remove sort=\"version\" from the axis, or write the value as a version (e.g. 22.20.0)",
                            ),
                    ),
                }
            }
            // Highest first; `sort_by` is stable, so equal versions keep the written order.
            sortable.sort_by(|a, b| b.0.cmp(&a.0));
            values = sortable.into_iter().map(|(_, v)| (v, &decl.name)).collect();
        }
        let values: Vec<AxisValue> = values.into_iter().map(|(v, _)| v).collect();
        // An attribute declared on some values is `none` on the others.
        let mut attributes: Vec<&str> = Vec::new();
        for name in values.iter().flat_map(|v| v.attributes.keys()) {
            if !attributes.contains(&name.as_str()) {
                attributes.push(name);
            }
        }
        let objects =
            values.iter().map(|v| AxisValueObject::value(&v.value, &v.version, &v.attributes, &attributes)).collect();
        out.push(CompiledAxis { axis: Axis { name: name.value.clone(), values }, objects });
    }
    out
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

/// The prefix wrapped around a `when` expression to evaluate it as a template.
const WHEN_PREFIX: &str = "{% if ";

impl<'a> Compiler<'a> {
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
                    let help = match crate::decode::did_you_mean(&axis.value, &axis_names) {
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
            for exclude in &image.excludes {
                for (axis, glob) in &exclude.globs {
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
            valid.push(ok);
        }
        valid
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

    fn register(&mut self, image: &'a ImageDecl) -> ImageTemplates<'a> {
        let mut complete = true;
        let mut opt = |this: &mut Self, decl: &'a Option<Spanned<String>>, what: &str| -> Option<Tmpl<'a>> {
            let decl = decl.as_ref()?;
            let t = this.add(decl, what);
            complete &= t.is_some();
            t
        };
        let repository = opt(self, &image.repository, "the repository");
        let dockerfile = opt(self, &image.dockerfile, "the dockerfile path");
        let context = opt(self, &image.context, "the context path");
        let path = opt(self, &image.path, "the render path");
        let target = opt(self, &image.target, "the target");
        let mut args = Vec::new();
        // A bad name is reported; the image still renders, for the mistakes further on.
        for (name, value) in &image.args {
            self.check_identifier(
                name,
                &IDENTIFIER,
                "trellis::image::bad_arg_name",
                "build arg name",
                "build arg names are letters, digits and `_`, not starting with a digit",
            );
            let t = self.add(value, "a build arg");
            complete &= t.is_some();
            args.push((name.value.clone(), t));
        }
        let mut labels = Vec::new();
        for (name, value) in &image.labels {
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
            let t = self.add(value, "a label");
            complete &= t.is_some();
            labels.push((name.value.clone(), t));
        }
        let mut tags = Vec::new();
        for tag in &image.tags {
            let t = self.add(&tag.template, "a tag");
            let w = tag.when.as_ref().map(|w| self.add_when(w, "a when expression"));
            complete &= t.is_some() && w.as_ref().is_none_or(Option::is_some);
            tags.push((t, w.flatten()));
        }
        let mut tests = Vec::new();
        for test in &image.tests {
            self.check_identifier(
                &test.name,
                &NAME,
                "trellis::test::bad_name",
                "test name",
                "test names are letters, digits, `.`, `_` and `-`: they are part of node ids",
            );
            let when = test.when.as_ref().map(|w| self.add_when(w, "a when expression"));
            complete &= when.as_ref().is_none_or(Option::is_some);
            let mut compiled = TestTemplates {
                name: test.name.value.clone(),
                span: test.name.span,
                when: when.flatten(),
                runs: Vec::new(),
                dockerfile: None,
                context: None,
                network: test
                    .network
                    .as_ref()
                    .map(|n| n.value)
                    .or(image.network.as_ref().map(|n| n.value))
                    .unwrap_or_default(),
            };
            match &test.body {
                TestBody::Run(lines) => {
                    for line in lines {
                        let t = self.add(line, "a run line");
                        complete &= t.is_some();
                        compiled.runs.push(t);
                    }
                }
                TestBody::Dockerfile { dockerfile, context } => {
                    compiled.dockerfile = self.add(dockerfile, "a test dockerfile path");
                    complete &= compiled.dockerfile.is_some();
                    if let Some(context) = context {
                        compiled.context = self.add(context, "a test context path");
                        complete &= compiled.context.is_some();
                    }
                }
            }
            tests.push(compiled);
        }
        let mut excludes = Vec::new();
        for exclude in &image.excludes {
            let w = exclude.when.as_ref().map(|w| self.add_when(w, "a when expression"));
            complete &= w.as_ref().is_none_or(Option::is_some);
            excludes.push(w.flatten());
        }
        ImageTemplates { repository, dockerfile, context, path, target, args, labels, tags, tests, excludes, complete }
    }

    /// Renders an inline template; `None` (with a diagnostic) when rendering fails.
    fn render(&mut self, t: &Tmpl<'a>, ctx: &Value, variant: &str, variables: &str) -> Option<String> {
        if t.literal {
            return Some(t.decl.value.clone());
        }
        let result = self.env.get_template(&t.name).and_then(|tmpl| tmpl.render(ctx));
        match result {
            Ok(text) => Some(text),
            Err(error) if t.unknown && error.kind() == minijinja::ErrorKind::UndefinedError => {
                self.suppressed += 1;
                None
            }
            Err(error) => {
                let origin = Origin::Inline(self.source, t.decl, t.prefix, &t.prepared);
                self.diags.push(template::diagnostic(&error, origin, &format!("for {variant}"), variables));
                None
            }
        }
    }

    fn holds(&mut self, when: Option<&Tmpl<'a>>, ctx: &Value, variant: &str, variables: &str) -> Option<bool> {
        match when {
            None => Some(true),
            Some(t) => self.render(t, ctx, variant, variables).map(|s| s == "1"),
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

    fn expand(
        &mut self,
        index: usize,
        decl: &'a ImageDecl,
        t: &ImageTemplates<'a>,
        axes: &[CompiledAxis],
        out: &mut Vec<Draft>,
    ) {
        if !t.complete {
            return;
        }
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
        'combinations: loop {
            self.variant(index, decl, t, &matrix, &odometer, &variables, out);
            // Advance: the last axis turns fastest.
            for position in (0..odometer.len()).rev() {
                odometer[position] += 1;
                if odometer[position] < matrix[position].axis.values.len() {
                    continue 'combinations;
                }
                odometer[position] = 0;
            }
            break;
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

    #[allow(clippy::too_many_arguments)]
    fn variant(
        &mut self,
        index: usize,
        decl: &'a ImageDecl,
        t: &ImageTemplates<'a>,
        matrix: &[&CompiledAxis],
        odometer: &[usize],
        variables: &str,
        out: &mut Vec<Draft>,
    ) {
        let mut values = IndexMap::new();
        let mut id = decl.name.value.clone();
        let mut ctx: IndexMap<String, Value> = IndexMap::new();
        for (axis, &i) in matrix.iter().zip(odometer) {
            let value = &axis.axis.values[i].value;
            values.insert(axis.axis.name.clone(), value.clone());
            // The variable is the value string; its attributes are read from the object.
            ctx.insert(axis.axis.name.clone(), Value::from(value.as_str()));
            ctx.insert(axis_vars::object_name(&axis.axis.name), axis.objects[i].clone());
            id.push('/');
            id.push_str(value);
        }
        ctx.insert("image".into(), Value::from(decl.name.value.as_str()));
        ctx.insert("axes".into(), Value::from_pairs(values.iter().map(|(k, v)| (k.clone(), v.clone()))));
        let ctx = Value::from_pairs(ctx);
        // Excludes first: an excluded combination is never rendered.
        for (exclude, when) in decl.excludes.iter().zip(&t.excludes) {
            let globs_match = exclude.globs.iter().all(|(axis, glob)| {
                values.get(&axis.value).is_some_and(|v| wildmatch::WildMatch::new(&glob.value).matches(v))
            });
            if globs_match && self.holds(when.as_ref(), &ctx, &id, variables) != Some(false) {
                return;
            }
        }
        let Some(draft) = self.render_variant(index, decl, t, &ctx, id, values, variables) else { return };
        out.push(draft);
    }

    /// Renders every template of one variant. Every failing template is reported (a variant
    /// with four mistakes shows four diagnostics), then the variant is dropped.
    #[allow(clippy::too_many_arguments)]
    fn render_variant(
        &mut self,
        index: usize,
        decl: &'a ImageDecl,
        t: &ImageTemplates<'a>,
        ctx: &Value,
        id: String,
        values: IndexMap<String, String>,
        variables: &str,
    ) -> Option<Draft> {
        let repository = self.render(t.repository.as_ref()?, ctx, &id, variables);
        let dockerfile_decl = t.dockerfile.as_ref()?;
        let template_path = self
            .render(dockerfile_decl, ctx, &id, variables)
            .and_then(|p| self.path(p, dockerfile_decl.decl, "the dockerfile path", &id));
        let context = match &t.context {
            Some(c) => self.render(c, ctx, &id, variables).and_then(|p| self.path(p, c.decl, "the context path", &id)),
            None => template_path.as_ref().map(|p| p.parent().map(Path::to_path_buf).unwrap_or_default()),
        };
        let render_at = match &t.path {
            Some(p) => self
                .render(p, ctx, &id, variables)
                .and_then(|r| self.path(r, p.decl, "the render path", &id))
                .map(|sub| (sub, p.decl.span)),
            None => Some((values.values().collect::<PathBuf>(), decl.name.span)),
        };
        let target = match &t.target {
            Some(target) => self.render(target, ctx, &id, variables).map(Some),
            None => Some(None),
        };
        let args = self.render_pairs(&t.args, ctx, &id, variables);
        let labels = self.render_pairs(&t.labels, ctx, &id, variables);
        let produced = self.render_tags(decl, t, ctx, &id, repository.as_deref(), variables);
        let tests = self.render_tests(t, ctx, &id, variables);
        let dockerfile =
            template_path.as_ref().and_then(|path| self.render_file(path, dockerfile_decl, ctx, &id, variables));
        // A variant with mistakes still takes part in the checks across variants (tag
        // collisions, render paths, build contexts) with what did render: every mistake in
        // one run. It never reaches a valid workspace: its mistakes were reported.
        let complete = [
            template_path.is_some(),
            context.is_some(),
            render_at.is_some(),
            target.is_some(),
            args.is_some(),
            labels.is_some(),
            produced.1,
            tests.is_some(),
            dockerfile.is_some(),
        ]
        .iter()
        .all(|ok| *ok);
        let (repository, (sub_path, render_decl)) = (repository?, render_at?);
        let context_known = context.is_some();
        let render_path = self.dockerfiles_dir.join(&decl.name.value).join(sub_path).join("Dockerfile");
        Some(Draft {
            variant: Variant {
                id,
                image: index,
                values,
                repository,
                template: template_path.unwrap_or_default(),
                dockerfile: dockerfile.unwrap_or_default(),
                render_path,
                context: context.unwrap_or_default(),
                target: target.flatten(),
                args: args.unwrap_or_default(),
                labels: labels.unwrap_or_default(),
                network: decl.network.as_ref().map(|n| n.value).unwrap_or_default(),
                references: Vec::new(),
                tests: tests.unwrap_or_default(),
            },
            produced: produced.0,
            render_decl,
            complete,
            context_known,
        })
    }

    /// Build args or labels: every value rendered, every failure reported.
    fn render_pairs(
        &mut self,
        pairs: &[(String, Option<Tmpl<'a>>)],
        ctx: &Value,
        id: &str,
        variables: &str,
    ) -> Option<Vec<(String, String)>> {
        let rendered: Vec<Option<(String, String)>> = pairs
            .iter()
            .map(|(name, value)| Some((name.clone(), self.render(value.as_ref()?, ctx, id, variables)?)))
            .collect();
        rendered.into_iter().collect()
    }

    /// The references the variant's tag rules produce, with the index of each rule.
    fn render_tags(
        &mut self,
        decl: &'a ImageDecl,
        t: &ImageTemplates<'a>,
        ctx: &Value,
        id: &str,
        repository: Option<&str>,
        variables: &str,
    ) -> (Vec<(Reference, usize)>, bool) {
        let mut produced = Vec::new();
        let mut ok = true;
        for (rule, ((tag, when), tag_decl)) in t.tags.iter().zip(&decl.tags).enumerate() {
            match self.holds(when.as_ref(), ctx, id, variables) {
                Some(true) => {}
                Some(false) => continue,
                None => {
                    ok = false;
                    continue;
                }
            }
            let Some(rendered) = tag.as_ref().and_then(|tag| self.render(tag, ctx, id, variables)) else {
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
    fn render_tests(
        &mut self,
        t: &ImageTemplates<'a>,
        ctx: &Value,
        id: &str,
        variables: &str,
    ) -> Option<Vec<VariantTest>> {
        let mut tests = Vec::new();
        let mut ok = true;
        for test in &t.tests {
            match self.holds(test.when.as_ref(), ctx, id, variables) {
                Some(true) => {}
                Some(false) => continue,
                None => {
                    ok = false;
                    continue;
                }
            }
            let body = match &test.dockerfile {
                None => self.render_run_lines(&test.runs, ctx, id, variables).map(VariantTestBody::Run),
                Some(dockerfile) => self.test_body(test, dockerfile, ctx, id, variables),
            };
            match body {
                Some(body) => {
                    tests.push(VariantTest { name: test.name.clone(), span: test.span, body, network: test.network })
                }
                None => ok = false,
            }
        }
        ok.then_some(tests)
    }

    fn render_run_lines(
        &mut self,
        runs: &[Option<Tmpl<'a>>],
        ctx: &Value,
        id: &str,
        variables: &str,
    ) -> Option<Vec<String>> {
        let mut lines = Vec::new();
        let mut ok = true;
        for run in runs {
            let Some(run) = run.as_ref() else {
                ok = false;
                continue;
            };
            let Some(line) = self.render(run, ctx, id, variables) else {
                ok = false;
                continue;
            };
            if line.contains(['\n', '\r']) || line.trim().is_empty() {
                self.diags.push(
                    Diagnostic::new("trellis::test::bad_run_line", "a run line must render to one non-empty line")
                        .at(self.source, run.decl.span, format!("rendered for {id}"))
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
        ctx: &Value,
        id: &str,
        variables: &str,
    ) -> Option<VariantTestBody> {
        let rendered = self.render(dockerfile, ctx, id, variables)?;
        let dockerfile_path = self.path(rendered, dockerfile.decl, "the test dockerfile", id)?;
        let context = match &test.context {
            Some(c) => {
                let rendered = self.render(c, ctx, id, variables)?;
                self.path(rendered, c.decl, "the test context", id)?
            }
            None => dockerfile_path.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        let text = self.test_dockerfile(&dockerfile_path, test.span, &test.name)?;
        Some(VariantTestBody::Dockerfile { dockerfile: dockerfile_path, context, text })
    }

    /// The variant's Dockerfile from its template file, with the generated-by header.
    fn render_file(
        &mut self,
        template_path: &Path,
        decl: &Tmpl<'a>,
        ctx: &Value,
        id: &str,
        variables: &str,
    ) -> Option<String> {
        let file = self.template_file(template_path, decl.decl)?;
        let rendered =
            self.file_env.get_template(self.template_sources[file].0.name()).and_then(|tmpl| tmpl.render(ctx));
        match rendered {
            Ok(text) => Some(with_header(&text, template_path, id)),
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
                self.diags.push(template::diagnostic(error, origin, &format!("for {id}"), variables));
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
                        let first = &drafts[owner];
                        let first_decl = &manifest.images[first.variant.image].tags[owner_rule];
                        let this_decl = &manifest.images[draft.variant.image].tags[*rule];
                        let mut d = Diagnostic::new(
                            "trellis::tag::collision",
                            format!("`{reference}` is produced by {} and {}", first.variant.id, draft.variant.id),
                        );
                        if first_decl.template.span == this_decl.template.span {
                            d = d.at(
                                self.source,
                                this_decl.template.span,
                                "renders the same reference for both variants",
                            );
                        } else {
                            d = d.at(self.source, this_decl.template.span, format!("for {}", draft.variant.id)).at(
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
