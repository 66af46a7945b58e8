//! KDL 2 document → [`Manifest`], by hand, so that every value keeps its span and every shape
//! mistake (unknown node or property, wrong type, duplicate, missing field) becomes its own
//! diagnostic. Decoding never stops at the first mistake.

use std::collections::HashMap;
use std::time::Duration;

use indexmap::IndexMap;
use kdl::{KdlDocument, KdlEntry, KdlNode, KdlValue};
use miette::SourceSpan;

use crate::diagnostic::{Diagnostic, SourceFile};
use crate::manifest::*;

const TOP_NODES: &[&str] = &["settings", "axis", "image"];
const SETTINGS_NODES: &[&str] = &[
    "name",
    "dockerfiles",
    "state",
    "registry",
    "jobs",
    "retries",
    "backoff",
    "pull",
    "builder",
    "platforms",
    "compression",
];
const IMAGE_NODES: &[&str] = &[
    "matrix",
    "exclude",
    "repository",
    "dockerfile",
    "context",
    "path",
    "target",
    "arg",
    "label",
    "network",
    "platforms",
    "tag",
    "test",
];

/// A value that is one of a few words (`pull "missing"`), and how to say it is not.
struct Keywords<T: 'static> {
    /// The node or property taking the value, as the help names it.
    node: &'static str,
    /// What each word is, for the message and the label: "unknown pull policy", "not a pull policy".
    what: &'static str,
    code: &'static str,
    words: &'static [(&'static str, T)],
}

const NETWORK_MODES: Keywords<NetworkMode> = Keywords {
    node: "network",
    what: "network mode",
    code: "trellis::schema::bad_network",
    words: &[("default", NetworkMode::Default), ("host", NetworkMode::Host), ("none", NetworkMode::None)],
};

const PULL_POLICIES: Keywords<PullPolicy> = Keywords {
    node: "pull",
    what: "pull policy",
    code: "trellis::schema::bad_pull_policy",
    words: &[("missing", PullPolicy::Missing), ("always", PullPolicy::Always), ("never", PullPolicy::Never)],
};

const BUILDERS: Keywords<BuilderChoice> = Keywords {
    node: "builder",
    what: "builder",
    code: "trellis::schema::bad_builder",
    words: &[("buildkit", BuilderChoice::BuildKit), ("classic", BuilderChoice::Classic)],
};

const COMPRESSIONS: Keywords<CompressionChoice> = Keywords {
    node: "compression",
    what: "compression",
    code: "trellis::schema::bad_compression",
    words: &[("gzip", CompressionChoice::Gzip), ("zstd", CompressionChoice::Zstd)],
};

/// Parses and decodes `matrix.kdl`. A KDL syntax error yields no manifest.
pub(crate) fn decode(source: &SourceFile, diags: &mut Vec<Diagnostic>) -> Option<Manifest> {
    let document = match KdlDocument::parse(source.text()) {
        Ok(document) => document,
        Err(error) => {
            diags.push(syntax_diagnostic(source, &error));
            return None;
        }
    };
    let mut decoder = Decoder { source, diags };
    Some(decoder.document(&document))
}

/// KDL's parser reports one mistake as a cascade; the first is the cause.
fn syntax_diagnostic(source: &SourceFile, error: &kdl::KdlError) -> Diagnostic {
    let Some(first) = error.diagnostics.first() else {
        return Diagnostic::new("trellis::kdl::syntax", "matrix.kdl is not a valid KDL 2 document");
    };
    let message = first.message.clone().unwrap_or_else(|| "invalid KDL".to_owned());
    let label = first.label.clone().unwrap_or_else(|| "here".to_owned());
    let span = first.span;
    let text = source.text();
    let at = text.get(span.offset()..).unwrap_or("");
    let word: String = at.chars().take_while(|c| c.is_alphanumeric() || *c == '-').collect();
    let help = match word.as_str() {
        "true" | "false" | "null" => {
            Some(format!("KDL 2 writes keywords with a hash: #{word} (bare `{word}` is KDL 1 syntax)"))
        }
        "inf" | "nan" => Some(format!("KDL 2 writes #{word}")),
        _ if at.starts_with("r\"") || at.starts_with("r#") => {
            Some("KDL 2 raw strings are written #\"…\"# (r\"…\" is KDL 1 syntax)".to_owned())
        }
        _ if line_at(text, span.offset()).contains('\'') => {
            Some("KDL strings use double quotes: \"...\" (or #\"...\"# for raw strings)".to_owned())
        }
        _ => first.help.clone(),
    };
    let mut diagnostic = Diagnostic::new(
        "trellis::kdl::syntax",
        format!("invalid KDL: {}", message.trim_end_matches('.').to_lowercase()),
    )
    .at(source, span, label);
    if let Some(help) = help {
        diagnostic = diagnostic.help(help);
    }
    diagnostic
}

struct Decoder<'a> {
    source: &'a SourceFile,
    diags: &'a mut Vec<Diagnostic>,
}

impl Decoder<'_> {
    fn error(&mut self, code: &'static str, message: String, span: SourceSpan, label: &str) {
        self.diags.push(Diagnostic::new(code, message).at(self.source, span, label));
    }

    fn error_help(&mut self, code: &'static str, message: String, span: SourceSpan, label: &str, help: String) {
        self.diags.push(Diagnostic::new(code, message).at(self.source, span, label).help(help));
    }

    fn document(&mut self, document: &KdlDocument) -> Manifest {
        let mut manifest = Manifest::default();
        let mut settings_seen: Option<SourceSpan> = None;
        let mut axis_names: HashMap<String, SourceSpan> = HashMap::new();
        let mut image_names: HashMap<String, SourceSpan> = HashMap::new();
        for node in document.nodes() {
            let name = node.name().value();
            match name {
                "settings" => {
                    if let Some(first) = settings_seen {
                        self.duplicate("`settings`", node.name().span(), first);
                        continue;
                    }
                    settings_seen = Some(node.name().span());
                    manifest.settings = self.settings(node);
                }
                "axis" => {
                    if let Some(axis) = self.axis(node) {
                        if let Some(first) = axis_names.get(&axis.name.value) {
                            self.duplicate(&format!("axis `{}`", axis.name.value), axis.name.span, *first);
                            continue;
                        }
                        axis_names.insert(axis.name.value.clone(), axis.name.span);
                        manifest.axes.push(axis);
                    }
                }
                "image" => {
                    if let Some(image) = self.image(node) {
                        if let Some(first) = image_names.get(&image.name.value) {
                            self.duplicate(&format!("image `{}`", image.name.value), image.name.span, *first);
                            continue;
                        }
                        image_names.insert(image.name.value.clone(), image.name.span);
                        manifest.images.push(image);
                    }
                }
                other => self.unknown_node(node, other, "the top level", TOP_NODES),
            }
        }
        if settings_seen.is_none() {
            self.error_help(
                "trellis::schema::missing_settings",
                "matrix.kdl has no `settings` node".to_owned(),
                SourceSpan::from(0..0),
                "settings expected in this file",
                "add `settings { name \"my-images\" }`: the name is recorded in image labels".to_owned(),
            );
        }
        manifest
    }

    fn duplicate(&mut self, what: &str, span: SourceSpan, first: SourceSpan) {
        self.diags.push(
            Diagnostic::new("trellis::schema::duplicate", format!("{what} is declared twice"))
                .at(self.source, span, "declared again here")
                .at(self.source, first, "first declared here")
                .help("remove one of the two declarations"),
        );
    }

    fn unknown_node(&mut self, node: &KdlNode, name: &str, place: &str, known: &[&str]) {
        let help = match did_you_mean(name, known) {
            Some(close) => format!("did you mean `{close}`? known here: {}", known.join(", ")),
            None => format!("known here: {}", known.join(", ")),
        };
        self.error_help(
            "trellis::schema::unknown_node",
            format!("unknown node `{name}` in {place}"),
            node.name().span(),
            "not a trellis node",
            help,
        );
    }

    /// Checks properties against `allowed` (unknown, repeated) and returns them by name.
    fn props<'n>(&mut self, node: &'n KdlNode, allowed: &[&str]) -> IndexMap<String, &'n KdlEntry> {
        let mut props: IndexMap<String, &KdlEntry> = IndexMap::new();
        for entry in node.entries() {
            let Some(key) = entry.name() else { continue };
            let key_name = key.value();
            if !allowed.contains(&key_name) {
                let help = match (allowed.is_empty(), did_you_mean(key_name, allowed)) {
                    (true, _) => format!("`{}` takes no properties", node.name().value()),
                    (false, Some(close)) => {
                        format!("did you mean `{close}`? `{}` takes: {}", node.name().value(), allowed.join(", "))
                    }
                    (false, None) => format!("`{}` takes: {}", node.name().value(), allowed.join(", ")),
                };
                self.error_help(
                    "trellis::schema::unknown_property",
                    format!("unknown property `{key_name}` on `{}`", node.name().value()),
                    entry.span(),
                    "not a property of this node",
                    help,
                );
                continue;
            }
            if let Some(first) = props.get(key_name) {
                let first = first.span();
                self.duplicate(&format!("property `{key_name}`"), entry.span(), first);
                continue;
            }
            props.insert(key_name.to_owned(), entry);
        }
        props
    }

    fn args(node: &KdlNode) -> Vec<&KdlEntry> {
        node.entries().iter().filter(|e| e.name().is_none()).collect()
    }

    fn no_children(&mut self, node: &KdlNode) {
        if let Some(children) = node.children() {
            self.error(
                "trellis::schema::unexpected_children",
                format!("`{}` takes no children block", node.name().value()),
                children.span(),
                "remove this block",
            );
        }
    }

    fn no_props(&mut self, node: &KdlNode) {
        self.props(node, &[]);
    }

    fn string(&mut self, entry: &KdlEntry, what: &str) -> Option<Spanned<String>> {
        match entry.value() {
            KdlValue::String(s) => {
                let mut spanned = Spanned::new(s.clone(), entry.span());
                spanned.verbatim_at = verbatim_offset(self.source.text(), entry.span(), s);
                Some(spanned)
            }
            other => {
                self.wrong_type(entry, what, "a string", other);
                None
            }
        }
    }

    fn wrong_type(&mut self, entry: &KdlEntry, what: &str, expected: &str, got: &KdlValue) {
        let help = match got {
            _ if expected.starts_with("#true") => {
                format!("write {what} as #true or #false (KDL 2 keywords start with #)")
            }
            KdlValue::Bool(_) | KdlValue::Null => format!("write {what} in double quotes"),
            KdlValue::Integer(_) | KdlValue::Float(_) if expected == "a string" => {
                format!("numbers are not strings here: write {what} in double quotes, e.g. \"{got}\"")
            }
            _ => format!("{what} must be {expected}"),
        };
        self.error_help(
            "trellis::schema::wrong_type",
            format!("{what} must be {expected}, found {}", type_name(got)),
            entry.span(),
            &format!("expected {expected}"),
            help,
        );
    }

    fn bool(&mut self, entry: &KdlEntry, what: &str) -> Option<bool> {
        match entry.value() {
            KdlValue::Bool(b) => Some(*b),
            other => {
                self.wrong_type(entry, what, "#true or #false", other);
                None
            }
        }
    }

    fn integer(&mut self, entry: &KdlEntry, what: &str, range: std::ops::RangeInclusive<i128>) -> Option<u32> {
        match entry.value() {
            KdlValue::Integer(i) if range.contains(i) => u32::try_from(*i).ok(),
            KdlValue::Integer(i) => {
                self.error(
                    "trellis::schema::out_of_range",
                    format!("{what} must be between {} and {}, found {i}", range.start(), range.end()),
                    entry.span(),
                    "out of range",
                );
                None
            }
            other => {
                self.wrong_type(entry, what, "an integer", other);
                None
            }
        }
    }

    /// A node of the form `name "value"`: exactly one string argument, nothing else.
    fn single_string(&mut self, node: &KdlNode) -> Option<Spanned<String>> {
        let what = format!("the value of `{}`", node.name().value());
        self.no_children(node);
        self.no_props(node);
        self.string_argument(node, "one string argument", &what)
    }

    /// The node's one positional string: missing and extra arguments are diagnosed.
    fn string_argument(&mut self, node: &KdlNode, missing: &str, what: &str) -> Option<Spanned<String>> {
        match Self::args(node).as_slice() {
            [] => {
                self.missing_argument(node, missing);
                None
            }
            [one] => self.string(one, what),
            [first, rest @ ..] => {
                self.extra_arguments(node, rest, 1);
                self.string(first, what)
            }
        }
    }

    fn missing_argument(&mut self, node: &KdlNode, expected: &str) {
        self.error(
            "trellis::schema::missing_argument",
            format!("`{}` needs {expected}", node.name().value()),
            node.name().span(),
            "argument missing",
        );
    }

    fn extra_arguments(&mut self, node: &KdlNode, extra: &[&KdlEntry], expected: usize) {
        let start = extra[0].span().offset();
        let last = extra[extra.len() - 1].span();
        let end = last.offset() + last.len();
        self.error(
            "trellis::schema::extra_argument",
            format!("`{}` takes {expected} argument{}", node.name().value(), if expected == 1 { "" } else { "s" }),
            SourceSpan::from(start..end),
            "unexpected argument",
        );
    }

    /// Keeps the first of a repeated singleton node (`repository` twice is a mistake).
    fn set_once<T>(&mut self, slot: &mut Option<Spanned<T>>, node: &KdlNode, value: Option<Spanned<T>>) {
        let Some(value) = value else { return };
        if let Some(first) = slot {
            let first = first.span;
            self.duplicate(&format!("`{}`", node.name().value()), node.name().span(), first);
            return;
        }
        *slot = Some(value);
    }

    fn settings(&mut self, node: &KdlNode) -> Settings {
        let mut settings = Settings::default();
        self.no_props(node);
        if let Some(extra) = Self::args(node).first() {
            self.error(
                "trellis::schema::extra_argument",
                "`settings` takes no arguments".to_owned(),
                extra.span(),
                "unexpected argument",
            );
        }
        let mut name = None;
        let mut seen: HashMap<&str, SourceSpan> = HashMap::new();
        for child in node.children().map(|c| c.nodes()).unwrap_or_default() {
            if self.repeated_setting(child, &mut seen) {
                continue;
            }
            match child.name().value() {
                "name" => name = self.single_string(child),
                _ => self.setting(child, &mut settings),
            }
        }
        match name {
            Some(name) => settings.name = name,
            None => self.error_help(
                "trellis::schema::missing_field",
                "settings has no `name`".to_owned(),
                node.name().span(),
                "name missing in this block",
                "add `name \"my-images\"`: it is recorded in the dev.trellis.workspace label".to_owned(),
            ),
        }
        settings
    }

    /// Reports a setting written twice; true when `child` repeats one (and is to be skipped).
    fn repeated_setting(&mut self, child: &KdlNode, seen: &mut HashMap<&'static str, SourceSpan>) -> bool {
        let key = child.name().value();
        let Some(known) = SETTINGS_NODES.iter().find(|k| **k == key) else { return false };
        if let Some(first) = seen.get(known) {
            self.duplicate(&format!("`{key}`"), child.name().span(), *first);
            return true;
        }
        seen.insert(known, child.name().span());
        false
    }

    /// One setting other than `name`; a bad value leaves the default.
    fn setting(&mut self, child: &KdlNode, settings: &mut Settings) {
        match child.name().value() {
            "dockerfiles" => {
                if let Some(dockerfiles) = self.single_string(child) {
                    settings.dockerfiles = dockerfiles;
                }
            }
            "state" => {
                if let Some(state) = self.single_string(child) {
                    settings.state = state;
                }
            }
            "registry" => settings.registry = self.single_string(child),
            "jobs" => settings.jobs = self.jobs(child),
            "retries" => {
                if let Some(retries) = self.retries(child) {
                    settings.retries = retries;
                }
            }
            "backoff" => {
                if let Some(backoff) = self.backoff(child) {
                    settings.backoff = backoff;
                }
            }
            "pull" => {
                if let Some(pull) = self.single_string(child).and_then(|s| self.keyword(s, &PULL_POLICIES)) {
                    settings.pull = pull.value;
                }
            }
            "builder" => settings.builder = self.single_string(child).and_then(|s| self.keyword(s, &BUILDERS)),
            "platforms" => settings.platforms = self.platforms(child),
            "compression" => {
                if let Some(compression) = self.single_string(child).and_then(|s| self.keyword(s, &COMPRESSIONS)) {
                    settings.compression = compression.value;
                }
            }
            other => self.unknown_node(child, other, "settings", SETTINGS_NODES),
        }
    }

    fn retries(&mut self, node: &KdlNode) -> Option<u32> {
        self.no_children(node);
        self.no_props(node);
        match Self::args(node).as_slice() {
            [one] => self.integer(one, "`retries`", 0..=20),
            [] => {
                self.missing_argument(node, "an integer");
                None
            }
            [_, rest @ ..] => {
                self.extra_arguments(node, rest, 1);
                None
            }
        }
    }

    fn backoff(&mut self, node: &KdlNode) -> Option<Duration> {
        let text = self.single_string(node)?;
        let backoff = parse_duration(&text.value);
        if backoff.is_none() {
            self.error_help(
                "trellis::schema::bad_duration",
                format!("`{}` is not a duration", text.value),
                text.span,
                "not a duration",
                "write a number and a unit: \"500ms\", \"2s\", \"1m\"".to_owned(),
            );
        }
        backoff
    }

    /// The word of `keywords` that `text` spells; any other word is a diagnostic listing them.
    fn keyword<T: Copy>(&mut self, text: Spanned<String>, keywords: &Keywords<T>) -> Option<Spanned<T>> {
        if let Some((_, value)) = keywords.words.iter().find(|(word, _)| *word == text.value) {
            return Some(Spanned::new(*value, text.span));
        }
        let words: Vec<String> = keywords.words.iter().map(|(word, _)| format!("\"{word}\"")).collect();
        self.error_help(
            keywords.code,
            format!("unknown {} `{}`", keywords.what, text.value),
            text.span,
            &format!("not a {}", keywords.what),
            format!("{} is one of {}", keywords.node, words.join(", ")),
        );
        None
    }

    /// `platforms "linux/amd64" "linux/arm64"`: at least one, each a platform trellis knows,
    /// none twice.
    fn platforms(&mut self, node: &KdlNode) -> Option<PlatformsDecl> {
        self.no_children(node);
        self.no_props(node);
        let args = Self::args(node);
        if args.is_empty() {
            self.missing_argument(node, "at least one platform, such as \"linux/amd64\"");
            return None;
        }
        let mut values: Vec<Spanned<String>> = Vec::new();
        for arg in args {
            let Some(platform) = self.string(arg, "a platform") else { continue };
            if let Err(help) = crate::platform::check(&platform.value) {
                self.error_help(
                    "trellis::schema::bad_platform",
                    format!("unknown platform `{}`", platform.value),
                    platform.span,
                    "not a platform",
                    help,
                );
            } else if let Some(first) = values.iter().find(|v| v.value == platform.value) {
                self.duplicate(&format!("platform `{}`", platform.value), platform.span, first.span);
            } else {
                values.push(platform);
            }
        }
        Some(PlatformsDecl { span: node.span(), values })
    }

    fn jobs(&mut self, node: &KdlNode) -> Jobs {
        self.no_children(node);
        if let Some(first) = Self::args(node).first() {
            self.error_help(
                "trellis::schema::extra_argument",
                "`jobs` takes properties, not arguments".to_owned(),
                first.span(),
                "unexpected argument",
                "write `jobs build=2 test=4 push=4`".to_owned(),
            );
        }
        let props = self.props(node, &["build", "test", "push"]);
        let mut jobs = Jobs::default();
        for (key, entry) in props {
            let n = self.integer(entry, &format!("`jobs {key}`"), 1..=1024);
            match key.as_str() {
                "build" => jobs.build = n,
                "test" => jobs.test = n,
                _ => jobs.push = n,
            }
        }
        jobs
    }

    fn axis(&mut self, node: &KdlNode) -> Option<AxisDecl> {
        let props = self.props(node, &["sort"]);
        let sort_by_version = props.get("sort").is_some_and(|sort| self.sort_by_version(sort));
        let args = Self::args(node);
        let Some((first, rest)) = args.split_first() else {
            self.missing_argument(node, "a name");
            return None;
        };
        let name = self.string(first, "an axis name")?;
        let mut values = Vec::new();
        for arg in rest {
            if let Some(value) = self.string(arg, "an axis value") {
                values.push(AxisValueDecl { value, attributes: IndexMap::new() });
            }
        }
        for child in node.children().map(|c| c.nodes()).unwrap_or_default() {
            if child.name().value() != "value" {
                self.unknown_node(child, child.name().value(), &format!("axis `{}`", name.value), &["value"]);
                continue;
            }
            if let Some(value) = self.axis_value(child) {
                values.push(value);
            }
        }
        if values.is_empty() {
            self.error_help(
                "trellis::schema::empty_axis",
                format!("axis `{}` has no values", name.value),
                name.span,
                "no values",
                format!("list values as arguments (`axis \"{0}\" \"a\" \"b\"`) or as `value` children", name.value),
            );
        }
        Some(AxisDecl { name, sort_by_version, values })
    }

    /// `sort="version"`; any other sort is a diagnostic (and the written order).
    fn sort_by_version(&mut self, sort: &KdlEntry) -> bool {
        match sort.value() {
            KdlValue::String(s) if s == "version" => true,
            KdlValue::String(s) => {
                self.error_help(
                    "trellis::schema::bad_sort",
                    format!("unknown axis sort `{s}`"),
                    sort.span(),
                    "not a sort order",
                    "sort=\"version\" orders values highest first; leave it out to keep the written order".to_owned(),
                );
                false
            }
            other => {
                self.wrong_type(sort, "`sort`", "a string", other);
                false
            }
        }
    }

    fn axis_value(&mut self, node: &KdlNode) -> Option<AxisValueDecl> {
        self.no_children(node);
        let value = self.string_argument(node, "the value as a string", "an axis value")?;
        let mut attributes = IndexMap::new();
        let mut seen: HashMap<String, SourceSpan> = HashMap::new();
        for entry in node.entries() {
            let Some(key) = entry.name() else { continue };
            if let Some(first) = seen.get(key.value()) {
                self.duplicate(&format!("attribute `{}`", key.value()), entry.span(), *first);
                continue;
            }
            seen.insert(key.value().to_owned(), entry.span());
            let attribute = match entry.value() {
                KdlValue::String(s) => AttributeValue::String(s.clone()),
                KdlValue::Bool(b) => AttributeValue::Bool(*b),
                KdlValue::Integer(i) => match i64::try_from(*i) {
                    Ok(i) => AttributeValue::Integer(i),
                    Err(_) => {
                        self.error(
                            "trellis::schema::out_of_range",
                            "integer attribute is too large".to_owned(),
                            entry.span(),
                            "too large",
                        );
                        continue;
                    }
                },
                KdlValue::Float(f) => AttributeValue::Float(*f),
                KdlValue::Null => {
                    self.error_help(
                        "trellis::schema::null_attribute",
                        format!("attribute `{}` is #null", key.value()),
                        entry.span(),
                        "null is not a value",
                        "leave the attribute out instead; templates can test `is defined`".to_owned(),
                    );
                    continue;
                }
            };
            attributes.insert(key.value().to_owned(), Spanned::new(attribute, entry.span()));
        }
        Some(AxisValueDecl { value, attributes })
    }

    fn image(&mut self, node: &KdlNode) -> Option<ImageDecl> {
        self.no_props(node);
        let name = self.string_argument(node, "a name", "an image name")?;
        let mut image = empty_image(name);
        let mut declared = ImageNames::default();
        for child in node.children().map(|c| c.nodes()).unwrap_or_default() {
            self.image_child(child, &mut image, &mut declared);
        }
        self.required_image_fields(&image);
        Some(image)
    }

    /// One node of an image block, added to `image`.
    fn image_child(&mut self, child: &KdlNode, image: &mut ImageDecl, declared: &mut ImageNames) {
        match child.name().value() {
            "matrix" => self.image_matrix(child, image, &mut declared.matrix),
            "exclude" => image.excludes.extend(self.exclude(child)),
            "repository" => {
                let v = self.single_string(child);
                self.set_once(&mut image.repository, child, v);
            }
            "dockerfile" => {
                let v = self.single_string(child);
                self.set_once(&mut image.dockerfile, child, v);
            }
            "context" => {
                let v = self.single_string(child);
                self.set_once(&mut image.context, child, v);
            }
            "path" => {
                let v = self.single_string(child);
                self.set_once(&mut image.path, child, v);
            }
            "target" => {
                let v = self.single_string(child);
                self.set_once(&mut image.target, child, v);
            }
            "network" => {
                let v = self.single_string(child).and_then(|s| self.keyword(s, &NETWORK_MODES));
                self.set_once(&mut image.network, child, v);
            }
            "platforms" => {
                if let Some(first) = &image.platforms {
                    self.duplicate("`platforms`", child.name().span(), first.span);
                } else {
                    image.platforms = self.platforms(child);
                }
            }
            "arg" => self.image_pair(child, &mut image.args, &mut declared.args),
            "label" => self.image_pair(child, &mut image.labels, &mut declared.labels),
            "tag" => image.tags.extend(self.tag(child)),
            "test" => self.image_test(child, image, &mut declared.tests),
            other => self.unknown_node(child, other, &format!("image `{}`", image.name.value), IMAGE_NODES),
        }
    }

    /// `matrix "axis" …`, once per image.
    fn image_matrix(&mut self, child: &KdlNode, image: &mut ImageDecl, declared: &mut Option<SourceSpan>) {
        self.no_children(child);
        self.no_props(child);
        if let Some(first) = *declared {
            self.duplicate("`matrix`", child.name().span(), first);
            return;
        }
        *declared = Some(child.name().span());
        let args = Self::args(child);
        if args.is_empty() {
            self.missing_argument(child, "at least one axis name");
        }
        for arg in args {
            if let Some(axis) = self.string(arg, "an axis name") {
                image.matrix.push(axis);
            }
        }
    }

    /// An `arg` or a `label`: a name given twice is a duplicate.
    fn image_pair(
        &mut self,
        child: &KdlNode,
        pairs: &mut Vec<(Spanned<String>, Spanned<String>)>,
        declared: &mut HashMap<String, SourceSpan>,
    ) {
        let Some(pair) = self.pair(child) else { return };
        if let Some(first) = declared.get(&pair.0.value) {
            self.duplicate(&format!("{} `{}`", child.name().value(), pair.0.value), pair.0.span, *first);
            return;
        }
        declared.insert(pair.0.value.clone(), pair.0.span);
        pairs.push(pair);
    }

    /// A `test`: a name given twice is a duplicate.
    fn image_test(&mut self, child: &KdlNode, image: &mut ImageDecl, declared: &mut HashMap<String, SourceSpan>) {
        let Some(test) = self.test(child) else { return };
        if let Some(first) = declared.get(&test.name.value) {
            self.duplicate(&format!("test `{}`", test.name.value), test.name.span, *first);
            return;
        }
        declared.insert(test.name.value.clone(), test.name.span);
        image.tests.push(test);
    }

    fn required_image_fields(&mut self, image: &ImageDecl) {
        let place = format!("image `{}`", image.name.value);
        let name_span = image.name.span;
        if image.repository.is_none() {
            self.missing_field(&place, "repository", name_span, "repository \"myorg/{{ image }}\"");
        }
        if image.dockerfile.is_none() {
            self.missing_field(&place, "dockerfile", name_span, "dockerfile \"dockerfiles/name/Dockerfile.j2\"");
        }
        if image.tags.is_empty() {
            self.missing_field(&place, "tag", name_span, "tag \"{{ version }}\"");
        }
    }

    fn missing_field(&mut self, place: &str, field: &str, span: SourceSpan, example: &str) {
        self.error_help(
            "trellis::schema::missing_field",
            format!("{place} has no `{field}`"),
            span,
            &format!("`{field}` missing in this image"),
            format!("add e.g. `{example}`"),
        );
    }

    fn pair(&mut self, node: &KdlNode) -> Option<(Spanned<String>, Spanned<String>)> {
        self.no_children(node);
        self.no_props(node);
        let kind = node.name().value();
        match Self::args(node).as_slice() {
            [name, value] => {
                let name = self.string(name, &format!("the {kind} name"));
                let value = self.string(value, &format!("the {kind} value"));
                Some((name?, value?))
            }
            [name, value, rest @ ..] => {
                self.extra_arguments(node, rest, 2);
                let name = self.string(name, &format!("the {kind} name"));
                let value = self.string(value, &format!("the {kind} value"));
                Some((name?, value?))
            }
            _ => {
                self.error_help(
                    "trellis::schema::missing_argument",
                    format!("`{kind}` needs a name and a value"),
                    node.span(),
                    "two strings expected",
                    format!("write `{kind} \"NAME\" \"value\"`"),
                );
                None
            }
        }
    }

    fn optional_string_prop(&mut self, props: &IndexMap<String, &KdlEntry>, key: &str) -> Option<Spanned<String>> {
        let entry = props.get(key)?;
        self.string(entry, &format!("`{key}`"))
    }

    fn exclude(&mut self, node: &KdlNode) -> Option<ExcludeDecl> {
        self.no_children(node);
        if let Some(arg) = Self::args(node).first() {
            self.error_help(
                "trellis::schema::extra_argument",
                "`exclude` takes properties, not arguments".to_owned(),
                arg.span(),
                "unexpected argument",
                "write `exclude axis=\"glob\"`, e.g. `exclude node=\"20.*\" os=\"trixie\"`".to_owned(),
            );
        }
        let mut globs = Vec::new();
        let mut when = None;
        let mut seen: HashMap<String, SourceSpan> = HashMap::new();
        for entry in node.entries() {
            let Some(key) = entry.name() else { continue };
            if let Some(first) = seen.get(key.value()) {
                self.duplicate(&format!("property `{}`", key.value()), entry.span(), *first);
                continue;
            }
            seen.insert(key.value().to_owned(), entry.span());
            let Some(value) = self.string(entry, &format!("`{}`", key.value())) else { continue };
            if key.value() == "when" {
                when = Some(value);
            } else {
                globs.push((Spanned::new(key.value().to_owned(), key.span()), value));
            }
        }
        if globs.is_empty() && when.is_none() {
            self.error_help(
                "trellis::schema::empty_exclude",
                "`exclude` matches every variant".to_owned(),
                node.name().span(),
                "no condition",
                "give at least one axis glob or a `when` expression".to_owned(),
            );
            return None;
        }
        Some(ExcludeDecl { span: node.span(), globs, when })
    }

    fn tag(&mut self, node: &KdlNode) -> Option<TagDecl> {
        self.no_children(node);
        let props = self.props(node, &["float", "when"]);
        let float = props.get("float").and_then(|e| self.bool(e, "`float`")).unwrap_or(false);
        let when = self.optional_string_prop(&props, "when");
        let template = self.string_argument(node, "the tag as a string", "a tag")?;
        Some(TagDecl { template, float, when })
    }

    fn test(&mut self, node: &KdlNode) -> Option<TestDecl> {
        let props = self.props(node, &["dockerfile", "context", "when", "network"]);
        let name = self.string_argument(node, "a name", "a test name")?;
        let dockerfile = self.optional_string_prop(&props, "dockerfile");
        let context = self.optional_string_prop(&props, "context");
        let when = self.optional_string_prop(&props, "when");
        let network = self.optional_string_prop(&props, "network").and_then(|s| self.keyword(s, &NETWORK_MODES));
        let mut runs = Vec::new();
        for child in node.children().map(|c| c.nodes()).unwrap_or_default() {
            if child.name().value() != "run" {
                self.unknown_node(child, child.name().value(), &format!("test `{}`", name.value), &["run"]);
                continue;
            }
            if let Some(run) = self.single_string(child) {
                runs.push(run);
            }
        }
        let body = self.test_body(&name, dockerfile, context, runs)?;
        Some(TestDecl { name, body, when, network })
    }

    /// `run` lines or a Dockerfile (with its context), not both and not neither.
    fn test_body(
        &mut self,
        name: &Spanned<String>,
        dockerfile: Option<Spanned<String>>,
        context: Option<Spanned<String>>,
        runs: Vec<Spanned<String>>,
    ) -> Option<TestBody> {
        let body = match (dockerfile, runs.is_empty()) {
            (Some(dockerfile), true) => TestBody::Dockerfile { dockerfile, context },
            (Some(dockerfile), false) => {
                self.diags.push(
                    Diagnostic::new(
                        "trellis::schema::test_kind",
                        format!("test `{}` has both `run` lines and a dockerfile", name.value),
                    )
                    .at(self.source, dockerfile.span, "a Dockerfile test")
                    .at(self.source, runs[0].span, "and a run test")
                    .help("split it into two tests"),
                );
                return None;
            }
            (None, false) => {
                if let Some(context) = context {
                    self.error_help(
                        "trellis::schema::test_kind",
                        "`context` only applies to a Dockerfile test".to_owned(),
                        context.span,
                        "no dockerfile= on this test",
                        "add dockerfile=\"…\" or remove context".to_owned(),
                    );
                }
                TestBody::Run(runs)
            }
            (None, true) => {
                self.error_help(
                    "trellis::schema::empty_test",
                    format!("test `{}` runs nothing", name.value),
                    name.span,
                    "no run lines and no dockerfile",
                    "add `{ run \"command\" }` or dockerfile=\"path/to/Dockerfile\"".to_owned(),
                );
                return None;
            }
        };
        Some(body)
    }
}

/// Names declared so far in an image block: declaring one again is a mistake.
#[derive(Default)]
struct ImageNames {
    matrix: Option<SourceSpan>,
    args: HashMap<String, SourceSpan>,
    labels: HashMap<String, SourceSpan>,
    tests: HashMap<String, SourceSpan>,
}

/// An image with a name and nothing else yet.
fn empty_image(name: Spanned<String>) -> ImageDecl {
    ImageDecl {
        name,
        matrix: Vec::new(),
        excludes: Vec::new(),
        repository: None,
        dockerfile: None,
        context: None,
        path: None,
        target: None,
        args: Vec::new(),
        labels: Vec::new(),
        network: None,
        platforms: None,
        tags: Vec::new(),
        tests: Vec::new(),
    }
}

/// The line of `text` that holds `offset`.
fn line_at(text: &str, offset: usize) -> &str {
    let (Some(before), Some(after)) = (text.get(..offset), text.get(offset..)) else { return "" };
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let end = after.find('\n').map_or(text.len(), |i| offset + i);
    text.get(start..end).unwrap_or("")
}

/// Offset of a string's contents in the source when the literal spells them verbatim.
fn verbatim_offset(text: &str, span: SourceSpan, value: &str) -> Option<usize> {
    let literal = text.get(span.offset()..span.offset() + span.len())?;
    // Skip a property key and `=`, then an optional raw-string prefix of hashes.
    let quote = literal.find('"')?;
    let start = span.offset() + quote + 1;
    let end = start + value.len();
    (text.get(start..end) == Some(value) && text.get(end..end + 1) == Some("\"")).then_some(start)
}

fn type_name(value: &KdlValue) -> &'static str {
    match value {
        KdlValue::String(_) => "a string",
        KdlValue::Integer(_) => "an integer",
        KdlValue::Float(_) => "a number",
        KdlValue::Bool(_) => "a boolean",
        KdlValue::Null => "#null",
    }
}

fn parse_duration(text: &str) -> Option<Duration> {
    humantime::parse_duration(text).ok()
}

/// The closest known name within a small edit distance.
pub(crate) fn did_you_mean<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(name, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a `settings` block holding `name "t"` and `lines`.
    fn decode_settings(lines: &str) -> (String, Option<Manifest>, Vec<Diagnostic>) {
        let text = format!("settings {{\n    name \"t\"\n{lines}\n}}\n");
        let source = SourceFile::new("matrix.kdl", text.as_str());
        let mut diags = Vec::new();
        let manifest = decode(&source, &mut diags);
        (text, manifest, diags)
    }

    /// Each diagnostic of the settings block as `code: message | `spanned text`: label, … | help`.
    fn check(lines: &str, expected: &[&str]) {
        let (text, _, diags) = decode_settings(lines);
        let described: Vec<String> = diags
            .iter()
            .map(|d| {
                let labels: Vec<String> = miette::Diagnostic::labels(d)
                    .into_iter()
                    .flatten()
                    .map(|l| format!("`{}`: {}", &text[l.offset()..l.offset() + l.len()], l.label().unwrap_or("")))
                    .collect();
                let help = miette::Diagnostic::help(d).map(|h| h.to_string()).unwrap_or_default();
                format!("{}: {} | {} | {help}", d.code(), d.message(), labels.join(", "))
            })
            .collect();
        assert_eq!(described, expected, "{text}");
    }

    #[test]
    fn builder_is_buildkit_or_classic_and_unset_by_default() {
        for (word, choice) in [("buildkit", BuilderChoice::BuildKit), ("classic", BuilderChoice::Classic)] {
            let (text, manifest, diags) = decode_settings(&format!("    builder \"{word}\""));
            assert!(diags.is_empty(), "{diags:?}");
            let builder = manifest.unwrap().settings.builder.expect("builder is set");
            assert_eq!(builder.value, choice);
            assert_eq!(builder.value.as_str(), word);
            assert_eq!(&text[builder.span.offset()..builder.span.offset() + builder.span.len()], format!("\"{word}\""));
        }
        let (_, manifest, _) = decode_settings("");
        assert_eq!(manifest.unwrap().settings.builder, None);
    }

    #[test]
    fn an_unknown_builder_is_a_diagnostic_at_its_value() {
        check(
            "    builder \"docker\"",
            &[
                "trellis::schema::bad_builder: unknown builder `docker` | `\"docker\"`: not a builder | builder is one of \"buildkit\", \"classic\"",
            ],
        );
        check(
            "    builder \"BuildKit\"",
            &[
                "trellis::schema::bad_builder: unknown builder `BuildKit` | `\"BuildKit\"`: not a builder | builder is one of \"buildkit\", \"classic\"",
            ],
        );
    }

    #[test]
    fn builder_twice_is_a_duplicate() {
        check(
            "    builder \"buildkit\"\n    builder \"classic\"",
            &[
                "trellis::schema::duplicate: `builder` is declared twice | `builder`: declared again here, `builder`: first declared here | remove one of the two declarations",
            ],
        );
    }

    #[test]
    fn builder_takes_one_string() {
        check(
            "    builder #true",
            &[
                "trellis::schema::wrong_type: the value of `builder` must be a string, found a boolean | `#true`: expected a string | write the value of `builder` in double quotes",
            ],
        );
    }

    #[test]
    fn an_unknown_pull_policy_is_a_diagnostic_at_its_value() {
        check(
            "    pull \"sometimes\"",
            &[
                "trellis::schema::bad_pull_policy: unknown pull policy `sometimes` | `\"sometimes\"`: not a pull policy | pull is one of \"missing\", \"always\", \"never\"",
            ],
        );
    }
}
