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
const SETTINGS_NODES: &[&str] = &["name", "dockerfiles", "state", "registry", "jobs", "retries", "backoff", "pull"];
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
    "tag",
    "test",
];

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
        let mut dockerfiles = None;
        let mut state = None;
        let mut registry = None;
        let mut seen: HashMap<&str, SourceSpan> = HashMap::new();
        for child in node.children().map(|c| c.nodes()).unwrap_or_default() {
            let key = child.name().value();
            if let Some(known) = SETTINGS_NODES.iter().find(|k| **k == key) {
                if let Some(first) = seen.get(known) {
                    self.duplicate(&format!("`{key}`"), child.name().span(), *first);
                    continue;
                }
                seen.insert(known, child.name().span());
            }
            match key {
                "name" => {
                    let v = self.single_string(child);
                    self.set_once(&mut name, child, v);
                }
                "dockerfiles" => {
                    let v = self.single_string(child);
                    self.set_once(&mut dockerfiles, child, v);
                }
                "state" => {
                    let v = self.single_string(child);
                    self.set_once(&mut state, child, v);
                }
                "registry" => {
                    let v = self.single_string(child);
                    self.set_once(&mut registry, child, v);
                }
                "jobs" => settings.jobs = self.jobs(child),
                "retries" => {
                    self.no_children(child);
                    self.no_props(child);
                    match Self::args(child).as_slice() {
                        [one] => {
                            if let Some(n) = self.integer(one, "`retries`", 0..=20) {
                                settings.retries = n;
                            }
                        }
                        [] => self.missing_argument(child, "an integer"),
                        [_, rest @ ..] => self.extra_arguments(child, rest, 1),
                    }
                }
                "backoff" => {
                    if let Some(text) = self.single_string(child) {
                        match parse_duration(&text.value) {
                            Some(d) => settings.backoff = d,
                            None => self.error_help(
                                "trellis::schema::bad_duration",
                                format!("`{}` is not a duration", text.value),
                                text.span,
                                "not a duration",
                                "write a number and a unit: \"500ms\", \"2s\", \"1m\"".to_owned(),
                            ),
                        }
                    }
                }
                "pull" => {
                    if let Some(text) = self.single_string(child) {
                        match text.value.as_str() {
                            "missing" => settings.pull = PullPolicy::Missing,
                            "always" => settings.pull = PullPolicy::Always,
                            "never" => settings.pull = PullPolicy::Never,
                            other => self.error_help(
                                "trellis::schema::bad_pull_policy",
                                format!("unknown pull policy `{other}`"),
                                text.span,
                                "not a pull policy",
                                "pull is one of \"missing\", \"always\", \"never\"".to_owned(),
                            ),
                        }
                    }
                }
                other => self.unknown_node(child, other, "settings", SETTINGS_NODES),
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
        if let Some(d) = dockerfiles {
            settings.dockerfiles = d;
        }
        if let Some(s) = state {
            settings.state = s;
        }
        settings.registry = registry;
        settings
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
        let sort_by_version = match props.get("sort") {
            None => false,
            Some(entry) => match entry.value() {
                KdlValue::String(s) if s == "version" => true,
                KdlValue::String(s) => {
                    self.error_help(
                        "trellis::schema::bad_sort",
                        format!("unknown axis sort `{s}`"),
                        entry.span(),
                        "not a sort order",
                        "sort=\"version\" orders values highest first; leave it out to keep the written order"
                            .to_owned(),
                    );
                    false
                }
                other => {
                    self.wrong_type(entry, "`sort`", "a string", other);
                    false
                }
            },
        };
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
        let mut image = ImageDecl {
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
            tags: Vec::new(),
            tests: Vec::new(),
        };
        let mut matrix_seen: Option<SourceSpan> = None;
        let mut test_names: HashMap<String, SourceSpan> = HashMap::new();
        let mut arg_names: HashMap<String, SourceSpan> = HashMap::new();
        let mut label_names: HashMap<String, SourceSpan> = HashMap::new();
        let place = format!("image `{}`", image.name.value);
        for child in node.children().map(|c| c.nodes()).unwrap_or_default() {
            match child.name().value() {
                "matrix" => {
                    self.no_children(child);
                    self.no_props(child);
                    if let Some(first) = matrix_seen {
                        self.duplicate("`matrix`", child.name().span(), first);
                        continue;
                    }
                    matrix_seen = Some(child.name().span());
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
                "exclude" => {
                    if let Some(exclude) = self.exclude(child) {
                        image.excludes.push(exclude);
                    }
                }
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
                    let v = self.single_string(child).and_then(|s| self.network(s));
                    self.set_once(&mut image.network, child, v);
                }
                kind @ ("arg" | "label") => {
                    let Some(pair) = self.pair(child) else { continue };
                    let names = if kind == "arg" { &mut arg_names } else { &mut label_names };
                    if let Some(first) = names.get(&pair.0.value) {
                        let first = *first;
                        self.duplicate(&format!("{kind} `{}`", pair.0.value), pair.0.span, first);
                        continue;
                    }
                    names.insert(pair.0.value.clone(), pair.0.span);
                    if kind == "arg" {
                        image.args.push(pair);
                    } else {
                        image.labels.push(pair);
                    }
                }
                "tag" => {
                    if let Some(tag) = self.tag(child) {
                        image.tags.push(tag);
                    }
                }
                "test" => {
                    if let Some(test) = self.test(child) {
                        if let Some(first) = test_names.get(&test.name.value) {
                            let first = *first;
                            self.duplicate(&format!("test `{}`", test.name.value), test.name.span, first);
                            continue;
                        }
                        test_names.insert(test.name.value.clone(), test.name.span);
                        image.tests.push(test);
                    }
                }
                other => self.unknown_node(child, other, &place, IMAGE_NODES),
            }
        }
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
        Some(image)
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

    fn network(&mut self, text: Spanned<String>) -> Option<Spanned<NetworkMode>> {
        let mode = match text.value.as_str() {
            "default" => NetworkMode::Default,
            "host" => NetworkMode::Host,
            "none" => NetworkMode::None,
            other => {
                self.error_help(
                    "trellis::schema::bad_network",
                    format!("unknown network mode `{other}`"),
                    text.span,
                    "not a network mode",
                    "network is one of \"default\", \"host\", \"none\"".to_owned(),
                );
                return None;
            }
        };
        Some(Spanned::new(mode, text.span))
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
        let network = self.optional_string_prop(&props, "network").and_then(|s| self.network(s));
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
        Some(TestDecl { name, body, when, network })
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
