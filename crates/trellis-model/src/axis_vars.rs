//! An axis variable is its value string, with `.major`, `.minor`, `.patch` and the value's
//! attributes on top (DESIGN §3).
//!
//! minijinja cannot have both in one value: a string has no attributes, and an object never
//! compares equal to a string (`os == 'bookworm'` would be silently false). So every template
//! is prepared once before it is compiled: with minijinja's own lexer, each read of an
//! attribute on an axis variable (`node.major`, `node['codename']`) is pointed at that axis's
//! value object, and every other use of the variable stays the plain string. The offsets of
//! the rewrite are kept, so errors still point at what the user wrote.
//!
//! The same token stream finds comparisons that can never hold: an axis (or a string attribute
//! of its values) compared with a string literal it never takes.

use std::collections::HashMap;
use std::ops::Range;

use minijinja::machinery::{Span, Token, tokenize};
use minijinja::syntax::SyntaxConfig;

/// The context name of an axis's value object (an identifier no axis may take: names starting
/// with `__` are reserved).
pub(crate) fn object_name(axis: &str) -> String {
    format!("__axis_{axis}")
}

/// What the checks know of an axis: its values and, per attribute, the string it takes on
/// each value that declares it.
#[derive(Debug, Default)]
pub(crate) struct AxisFacts {
    pub values: Vec<String>,
    pub string_attributes: HashMap<String, Vec<String>>,
    /// Every field some value has: `value`, `major`… when a value reads as a version, and
    /// every declared attribute.
    pub fields: Vec<String>,
}

/// An attribute read that no value of the axis has (`os.defualt`): undefined wherever it is
/// evaluated, and silently skipped where it is not (`a and os.defualt`, a false `if`).
#[derive(Debug)]
pub(crate) struct UnknownField {
    /// `os.defualt`, in the original text.
    pub range: Range<usize>,
    pub axis: String,
    pub field: String,
    pub fields: Vec<String>,
}

/// Every `axis.field` read whose field no value of the axis has.
pub(crate) fn unknown_fields(
    text: &str,
    axes: &HashMap<String, AxisFacts>,
    syntax: &SyntaxConfig,
) -> Vec<UnknownField> {
    let Some(tokens) = tokens(text, syntax) else { return Vec::new() };
    let mut found = Vec::new();
    for (i, tok) in tokens.iter().enumerate() {
        let Some((axis, facts)) = tok.ident().and_then(|name| axes.get_key_value(name)) else { continue };
        if !is_variable(&tokens, i) || !matches!(tokens.get(i + 1).map(|t| &t.token), Some(Token::Dot)) {
            continue;
        }
        let Some(field) = tokens.get(i + 2).and_then(Tok::ident) else { continue };
        if matches!(tokens.get(i + 3).map(|t| &t.token), Some(Token::ParenOpen))
            || facts.fields.iter().any(|f| f == field)
        {
            continue;
        }
        found.push(UnknownField {
            range: tok.range().start..tokens[i + 2].range().end,
            axis: axis.clone(),
            field: field.to_owned(),
            fields: facts.fields.clone(),
        });
    }
    found
}

/// A template's text as compiled, and how its offsets map back to the text the user wrote.
#[derive(Debug, Default, Clone)]
pub(crate) struct Prepared {
    pub text: String,
    /// (range in `text`, range in the original), in order, for each rewritten token.
    edits: Vec<(Range<usize>, Range<usize>)>,
}

impl Prepared {
    /// The original range of a range of the prepared text.
    pub fn original(&self, range: Range<usize>) -> Range<usize> {
        self.map(range.start, false)..self.map(range.end, true)
    }

    fn map(&self, at: usize, end: bool) -> usize {
        let mut shift: isize = 0;
        for (prepared, original) in &self.edits {
            if at < prepared.start || (end && at == prepared.start) {
                break;
            }
            if at < prepared.end || (end && at == prepared.end) {
                return if end { original.end } else { original.start };
            }
            shift = original.end as isize - prepared.end as isize;
        }
        (at as isize + shift).max(0) as usize
    }
}

/// A comparison that can never hold: `value` is not among what `subject` takes.
#[derive(Debug)]
pub(crate) struct Impossible {
    /// The string literal, in the original text.
    pub range: Range<usize>,
    /// `os`, or `node.codename` for an attribute.
    pub subject: String,
    pub value: String,
    /// What the subject does take.
    pub takes: Vec<String>,
    /// `!=` / `not in`: then the comparison is always true instead of never.
    pub negated: bool,
}

struct Tok<'a> {
    token: Token<'a>,
    span: Span,
}

impl Tok<'_> {
    fn ident(&self) -> Option<&str> {
        match self.token {
            Token::Ident(name) => Some(name),
            _ => None,
        }
    }

    fn string(&self) -> Option<&str> {
        match &self.token {
            Token::Str(s) => Some(s),
            Token::String(s) => Some(s),
            _ => None,
        }
    }

    fn range(&self) -> Range<usize> {
        self.span.start_offset as usize..self.span.end_offset as usize
    }
}

fn tokens<'a>(text: &'a str, syntax: &SyntaxConfig) -> Option<Vec<Tok<'a>>> {
    // A template that does not lex is left as it is: compiling it reports the syntax error.
    tokenize(text, false, syntax.clone()).map(|t| t.ok().map(|(token, span)| Tok { token, span })).collect()
}

/// Points attribute reads on axis variables at the axes' value objects.
pub(crate) fn prepare(text: &str, axes: &HashMap<String, AxisFacts>, syntax: &SyntaxConfig) -> Prepared {
    let Some(tokens) = tokens(text, syntax) else { return Prepared { text: text.to_owned(), edits: Vec::new() } };
    let mut out = String::with_capacity(text.len() + 32);
    let mut edits = Vec::new();
    let mut copied = 0;
    for (i, tok) in tokens.iter().enumerate() {
        let Some(name) = tok.ident().filter(|n| axes.contains_key(*n)) else { continue };
        if !is_variable(&tokens, i) || !reads_attribute(&tokens, i) {
            continue;
        }
        let range = tok.range();
        out.push_str(&text[copied..range.start]);
        let start = out.len();
        out.push_str(&object_name(name));
        edits.push((start..out.len(), range.clone()));
        copied = range.end;
    }
    out.push_str(&text[copied..]);
    Prepared { text: out, edits }
}

/// An identifier that names a variable: not an attribute name (`x.os`), not a keyword argument
/// (`f(os=1)`), not the target of `set` / `for`.
fn is_variable(tokens: &[Tok<'_>], i: usize) -> bool {
    let before = i.checked_sub(1).map(|b| &tokens[b].token);
    let after = tokens.get(i + 1).map(|t| &t.token);
    !matches!(before, Some(Token::Dot | Token::Pipe))
        && !matches!(before, Some(Token::Ident("set" | "for" | "macro" | "is")))
        && !matches!(after, Some(Token::Assign))
}

/// `os.attr` (not a method call such as `os.upper()`) or `os[...]`.
fn reads_attribute(tokens: &[Tok<'_>], i: usize) -> bool {
    match tokens.get(i + 1).map(|t| &t.token) {
        Some(Token::BracketOpen) => true,
        Some(Token::Dot) => !matches!(tokens.get(i + 3).map(|t| &t.token), Some(Token::ParenOpen)),
        _ => false,
    }
}

/// The template names a template includes, imports or extends as string literals, with their
/// ranges.
pub(crate) fn template_names(text: &str, syntax: &SyntaxConfig) -> Vec<(String, Range<usize>)> {
    let Some(tokens) = tokens(text, syntax) else { return Vec::new() };
    tokens
        .windows(2)
        .filter(|pair| matches!(pair[0].ident(), Some("include" | "import" | "extends" | "from")))
        .filter(|pair| matches!(pair[0].token, Token::Ident(_)) && pair[1].string().is_some())
        .map(|pair| (pair[1].string().unwrap_or_default().to_owned(), pair[1].range()))
        .collect()
}

/// Comparisons of an axis (`os`, `axes.os`, `axes['os']`) or of a string attribute
/// (`node.codename`) with string literals it never takes: `==`, `!=`, `in [...]`, `not in [...]`.
pub(crate) fn impossible_comparisons(
    text: &str,
    axes: &HashMap<String, AxisFacts>,
    syntax: &SyntaxConfig,
) -> Vec<Impossible> {
    let Some(tokens) = tokens(text, syntax) else { return Vec::new() };
    let mut found = Vec::new();
    for (i, tok) in tokens.iter().enumerate() {
        match tok.token {
            Token::Eq | Token::Ne => {
                let negated = matches!(tok.token, Token::Ne);
                let left = subject_ending_at(&tokens, i, axes).filter(|(start, _)| left_bound(&tokens, *start));
                let right_literal = tokens.get(i + 1).filter(|t| t.string().is_some() && right_bound(&tokens, i + 2));
                if let (Some((_, subject)), Some(literal)) = (left, right_literal) {
                    check(&subject, literal, negated, &mut found);
                    continue;
                }
                let left_literal =
                    i.checked_sub(1).map(|l| &tokens[l]).filter(|t| t.string().is_some() && left_bound(&tokens, i - 1));
                let right = subject_starting_at(&tokens, i + 1, axes).filter(|(end, _)| right_bound(&tokens, *end));
                if let (Some(literal), Some((_, subject))) = (left_literal, right) {
                    check(&subject, literal, negated, &mut found);
                }
            }
            Token::Ident("in") => {
                let negated = i.checked_sub(1).is_some_and(|b| tokens[b].ident() == Some("not"));
                let subject_end = if negated { i - 1 } else { i };
                let Some((start, subject)) = subject_ending_at(&tokens, subject_end, axes) else { continue };
                if !left_bound(&tokens, start) {
                    continue;
                }
                let Some((literals, end)) = literal_list(&tokens, i + 1) else { continue };
                if right_bound(&tokens, end) {
                    for literal in literals {
                        check(&subject, literal, negated, &mut found);
                    }
                }
            }
            _ => {}
        }
    }
    found
}

/// What an axis subject takes: its values, or the strings of one of its attributes.
struct Subject<'f> {
    name: String,
    takes: &'f [String],
}

fn check(subject: &Subject<'_>, literal: &Tok<'_>, negated: bool, found: &mut Vec<Impossible>) {
    let value = literal.string().unwrap_or_default();
    if !subject.takes.iter().any(|v| v == value) {
        found.push(Impossible {
            range: literal.range(),
            subject: subject.name.clone(),
            value: value.to_owned(),
            takes: subject.takes.to_vec(),
            negated,
        });
    }
}

/// A subject whose last token is just before `op`; its first token's index.
fn subject_ending_at<'f>(
    tokens: &[Tok<'_>],
    op: usize,
    axes: &'f HashMap<String, AxisFacts>,
) -> Option<(usize, Subject<'f>)> {
    (op.saturating_sub(4)..op).find_map(|start| {
        subject_starting_at(tokens, start, axes).filter(|(end, _)| *end == op).map(|(_, s)| (start, s))
    })
}

/// A subject starting at `start`; the index just after it.
fn subject_starting_at<'f>(
    tokens: &[Tok<'_>],
    start: usize,
    axes: &'f HashMap<String, AxisFacts>,
) -> Option<(usize, Subject<'f>)> {
    let at = |n: usize| tokens.get(start + n).map(|t| &t.token);
    let first = tokens.get(start)?.ident()?;
    if start > 0 && matches!(tokens[start - 1].token, Token::Dot | Token::Pipe) {
        return None;
    }
    let axis_subject =
        |name: &str| axes.get(name).map(|facts| Subject { name: name.to_owned(), takes: facts.values.as_slice() });
    match (at(1), at(2), at(3)) {
        // axes.os / axes['os']
        (Some(Token::Dot), Some(Token::Ident(axis)), _) if first == "axes" => Some((start + 3, axis_subject(axis)?)),
        (Some(Token::BracketOpen), Some(Token::Str(axis)), Some(Token::BracketClose)) if first == "axes" => {
            Some((start + 4, axis_subject(axis)?))
        }
        // node.codename, when every value that declares it declares a string
        (Some(Token::Dot), Some(Token::Ident(attribute)), _) => {
            let takes = axes.get(first)?.string_attributes.get(*attribute)?;
            Some((start + 3, Subject { name: format!("{first}.{attribute}"), takes }))
        }
        (Some(Token::Dot | Token::BracketOpen | Token::ParenOpen | Token::Pipe), _, _) => None,
        _ => Some((start + 1, axis_subject(first)?)),
    }
}

/// `[ 'a', 'b' ]` or `( 'a', 'b' )` of string literals only; the index after the closing token.
fn literal_list<'t, 'a>(tokens: &'t [Tok<'a>], open: usize) -> Option<(Vec<&'t Tok<'a>>, usize)> {
    let closes = |token: &Token<'_>| match tokens[open].token {
        Token::BracketOpen => matches!(token, Token::BracketClose),
        Token::ParenOpen => matches!(token, Token::ParenClose),
        _ => false,
    };
    if !matches!(tokens.get(open)?.token, Token::BracketOpen | Token::ParenOpen) {
        return None;
    }
    let mut literals = Vec::new();
    let mut i = open + 1;
    loop {
        let tok = tokens.get(i)?;
        if closes(&tok.token) {
            return Some((literals, i + 1));
        }
        tok.string()?;
        literals.push(tok);
        i += 1;
        match &tokens.get(i)?.token {
            Token::Comma => i += 1,
            t if closes(t) => {}
            _ => return None,
        }
    }
}

/// A comparison's operand starts here when nothing that binds tighter comes before it.
fn left_bound(tokens: &[Tok<'_>], start: usize) -> bool {
    match start.checked_sub(1).map(|b| &tokens[b].token) {
        None => true,
        Some(Token::VariableStart | Token::BlockStart | Token::ParenOpen | Token::Comma) => true,
        Some(Token::Ident(word)) => matches!(*word, "if" | "elif" | "and" | "or" | "not"),
        Some(_) => false,
    }
}

/// A comparison's operand ends before `end` when nothing that binds tighter follows it.
fn right_bound(tokens: &[Tok<'_>], end: usize) -> bool {
    match tokens.get(end).map(|t| &t.token) {
        None => true,
        Some(Token::VariableEnd | Token::BlockEnd | Token::ParenClose | Token::Comma) => true,
        Some(Token::Ident(word)) => matches!(*word, "and" | "or" | "if" | "else"),
        Some(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axes() -> HashMap<String, AxisFacts> {
        let mut axes = HashMap::new();
        axes.insert(
            "os".to_owned(),
            AxisFacts { values: vec!["trixie".into(), "bookworm".into()], ..Default::default() },
        );
        let mut node = AxisFacts { values: vec!["22.20.0".into(), "24.11.1".into()], ..Default::default() };
        node.string_attributes.insert("codename".into(), vec!["jod".into(), "krypton".into()]);
        axes.insert("node".to_owned(), node);
        axes
    }

    fn syntax() -> SyntaxConfig {
        SyntaxConfig::default()
    }

    #[test]
    fn attribute_reads_go_to_the_object_and_offsets_map_back() {
        let text = "{{ node.major }}-{{ os }}{% if os == 'trixie' %}{{ node['codename'] }}{% endif %}";
        let prepared = prepare(text, &axes(), &syntax());
        assert_eq!(
            prepared.text,
            "{{ __axis_node.major }}-{{ os }}{% if os == 'trixie' %}{{ __axis_node['codename'] }}{% endif %}"
        );
        let at = prepared.text.find("__axis_node.major").unwrap();
        let original = prepared.original(at..at + "__axis_node.major".len());
        assert_eq!(&text[original], "node.major");
        let os = prepared.text.find("{{ os }}").unwrap();
        assert_eq!(&text[prepared.original(os..os + 8)], "{{ os }}");
    }

    #[test]
    fn methods_keyword_arguments_and_attribute_names_are_left_alone() {
        let text = "{{ os.upper() }}{{ x.os }}{{ f(os=1) }}{% set os = 1 %}{{ y|os }}";
        assert_eq!(prepare(text, &axes(), &syntax()).text, text);
    }

    fn impossible(text: &str) -> Vec<(String, String, bool)> {
        impossible_comparisons(text, &axes(), &syntax()).into_iter().map(|i| (i.subject, i.value, i.negated)).collect()
    }

    #[test]
    fn comparisons_with_values_the_axis_lacks_are_found() {
        assert_eq!(impossible("{% if os == 'bookwrm' %}{% endif %}"), [("os".into(), "bookwrm".into(), false)]);
        assert_eq!(impossible("{% if 'sid' != os %}{% endif %}"), [("os".into(), "sid".into(), true)]);
        assert_eq!(
            impossible("{% if node in ['22.20.0', '1.10.0'] %}{% endif %}"),
            [("node".into(), "1.10.0".into(), false)]
        );
        assert_eq!(impossible("{% if os not in ('x',) %}{% endif %}"), [("os".into(), "x".into(), true)]);
        assert_eq!(impossible("{{ axes.os == 'x' }}"), [("os".into(), "x".into(), false)]);
        assert_eq!(impossible("{{ node.codename == 'iron' }}"), [("node.codename".into(), "iron".into(), false)]);
    }

    #[test]
    fn possible_or_unjudgeable_comparisons_are_not() {
        for text in [
            "{% if os == 'bookworm' and node != '24.11.1' %}{% endif %}",
            "{{ os ~ '-slim' == 'trixie-slim' }}",
            "{{ os | upper == 'TRIXIE' }}",
            "{{ 'x' ~ os == 'y' }}",
            "{{ os == 'a' ~ 'b' }}",
            "{{ node.major == '22' }}",
            "{{ other == 'x' }}",
            "{{ os in 'trixie-slim' }}",
        ] {
            assert_eq!(impossible(text), [], "{text}");
        }
    }
}
