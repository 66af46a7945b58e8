//! minijinja in strict mode: the template variables of a variant, and template errors turned
//! into diagnostics that point into `matrix.kdl` (inline strings) or the template file.

use std::fmt;
use std::sync::Arc;

use indexmap::IndexMap;
use miette::SourceSpan;
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Enumerator, Object, Value};
use minijinja::{Environment, ErrorKind, UndefinedBehavior};

use crate::axis_vars::Prepared;
use crate::diagnostic::{Diagnostic, SourceFile};
use crate::manifest::{AttributeValue, Spanned};

/// Upper bound on template work per render: a template is user input and must not hang us.
const FUEL: u64 = 200_000;

/// A strict environment: undefined is an error, no auto-escaping, output kept byte for byte.
/// `{% include %}` and `{% import %}` names are relative to the including template's folder.
pub(crate) fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_debug(true);
    env.set_fuel(Some(FUEL));
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_syntax(syntax());
    env.set_path_join_callback(|name, parent| join_template_path(parent, name).into());
    // An axis variable is a string: Python's string methods (`os.startswith('book')`,
    // `os.upper()`) work on it as in Jinja2.
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env
}

/// The syntax every template is lexed and compiled with.
pub(crate) fn syntax() -> SyntaxConfig {
    SyntaxConfig::builder().keep_trailing_newline(true).build().expect("the default delimiters are valid")
}

/// `name` as written in an include of the template `parent`: relative to `parent`'s folder
/// (templates are named by their path under the workspace root).
pub(crate) fn join_template_path(parent: &str, name: &str) -> String {
    let mut parts: Vec<&str> = parent.split('/').collect();
    parts.pop();
    for segment in name.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

/// What `node.major`, `node.codename` read (see `axis_vars`: the variable `node` itself is the
/// plain value string). Renders as the value; has `.value`, `.major`, `.minor`, `.patch` (when
/// the value reads as a loose version) and every attribute declared on any value of the axis,
/// `none` where this value does not declare it.
#[derive(Debug)]
pub(crate) struct AxisValueObject {
    value: String,
    fields: IndexMap<String, Value>,
}

impl AxisValueObject {
    pub(crate) fn value(
        value: &str,
        version: &[u32],
        attributes: &IndexMap<String, AttributeValue>,
        axis_attributes: &[&str],
    ) -> Value {
        let mut fields = IndexMap::new();
        fields.insert("value".to_owned(), Value::from(value));
        for (name, part) in ["major", "minor", "patch"].iter().zip(version) {
            fields.insert((*name).to_owned(), Value::from(*part));
        }
        for name in axis_attributes {
            let v = match attributes.get(*name) {
                Some(AttributeValue::String(s)) => Value::from(s.as_str()),
                Some(AttributeValue::Bool(b)) => Value::from(*b),
                Some(AttributeValue::Integer(i)) => Value::from(*i),
                Some(AttributeValue::Float(f)) => Value::from(*f),
                None => Value::from(()),
            };
            fields.insert((*name).to_owned(), v);
        }
        Value::from_object(AxisValueObject { value: value.to_owned(), fields })
    }
}

impl Object for AxisValueObject {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        key.as_str().and_then(|k| self.fields.get(k).cloned())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let keys: Vec<Value> = self.fields.keys().map(|k| Value::from(k.as_str())).collect();
        Enumerator::Values(keys)
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

/// Where a template's text lives, for pointing at its errors.
#[derive(Clone, Copy)]
pub(crate) enum Origin<'a> {
    /// A string in matrix.kdl, wrapped in a template source with `usize` leading characters,
    /// compiled as prepared.
    Inline(&'a SourceFile, &'a Spanned<String>, usize, &'a Prepared),
    /// A template file, compiled as prepared.
    File(&'a SourceFile, &'a Prepared),
}

impl Origin<'_> {
    /// The file and span of a range of the template's original text.
    pub(crate) fn locate(&self, range: Option<std::ops::Range<usize>>) -> (&SourceFile, SourceSpan, Option<&str>) {
        match *self {
            Origin::Inline(file, string, prefix, _) => {
                let len = string.value.len();
                let range =
                    range.map(|r| r.start.saturating_sub(prefix).min(len)..r.end.saturating_sub(prefix).min(len));
                let range = range.filter(|r| !r.is_empty());
                let span = match (string.verbatim_at, &range) {
                    (Some(at), Some(r)) => SourceSpan::from(at + r.start..at + r.end),
                    _ => string.span,
                };
                (file, span, range.and_then(|r| string.value.get(r)))
            }
            Origin::File(file, _) => {
                let span = range.clone().map_or(SourceSpan::from(0..0), SourceSpan::from);
                (file, span, range.and_then(|r| file.text().get(r)))
            }
        }
    }

    fn prepared(&self) -> &Prepared {
        match *self {
            Origin::Inline(.., prepared) | Origin::File(_, prepared) => prepared,
        }
    }
}

/// Turns a minijinja error into a diagnostic pointing at the failing expression.
pub(crate) fn diagnostic(error: &minijinja::Error, origin: Origin<'_>, context: &str, variables: &str) -> Diagnostic {
    let (code, what) = match error.kind() {
        ErrorKind::UndefinedError => ("trellis::template::undefined", "undefined value"),
        ErrorKind::SyntaxError => ("trellis::template::syntax", "template syntax error"),
        ErrorKind::OutOfFuel => ("trellis::template::too_much_work", "template does too much work"),
        _ => ("trellis::template::error", "template error"),
    };
    let range = error.range().map(|r| origin.prepared().original(r));
    let (source, mut span, expression) = origin.locate(range.clone());
    if let (Origin::File(file, _), None, Some(line)) = (origin, &range, error.line()) {
        span = line_span(file.text(), line);
    }
    let message = match (error.kind(), expression) {
        (ErrorKind::UndefinedError, Some(expression)) => format!("`{expression}` is undefined"),
        _ => match error.detail() {
            Some(detail) => format!("{what}: {detail}"),
            None => what.to_owned(),
        },
    };
    let help = match error.kind() {
        ErrorKind::UndefinedError => format!("variables here: {variables}"),
        ErrorKind::OutOfFuel => "templates are limited in work; simplify the loop".to_owned(),
        _ => "templates use Jinja2 syntax: {{ variable }}, {% if … %}…{% endif %}".to_owned(),
    };
    Diagnostic::new(code, message).at(source, span, context).help(help)
}

fn line_span(text: &str, line: usize) -> SourceSpan {
    let mut offset = 0;
    for (n, l) in text.split_inclusive('\n').enumerate() {
        if n + 1 == line {
            return SourceSpan::from(offset..offset + l.trim_end().len());
        }
        offset += l.len();
    }
    SourceSpan::from(0..0)
}
