//! The one diagnostic type of the model: a user mistake, with a stable code, the file it is in,
//! labelled spans and a help line.
//!
//! Every check of the compiler pushes `Diagnostic`s into a `Vec` and goes on, so that a user
//! sees all of their mistakes in one run. Codes are part of the public interface (snapshot tests
//! and users' scripts match on them); each user mistake has its own code.

use std::fmt;
use std::sync::Arc;

use miette::{LabeledSpan, NamedSource, SourceSpan};

/// A source file that diagnostics point into: `matrix.kdl` or a Dockerfile template.
#[derive(Clone, Debug)]
pub struct SourceFile {
    name: Arc<str>,
    text: Arc<String>,
}

impl SourceFile {
    pub fn new(name: impl Into<Arc<str>>, text: impl Into<String>) -> Self {
        Self { name: name.into(), text: Arc::new(text.into()) }
    }

    /// The name shown in diagnostics (the path as the user wrote or found it).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    fn named(&self) -> NamedSource<Arc<String>> {
        NamedSource::new(self.name.as_ref(), Arc::clone(&self.text)).with_language("kdl")
    }
}

/// One user mistake.
#[derive(Clone)]
pub struct Diagnostic {
    code: &'static str,
    message: String,
    source: Option<SourceFile>,
    labels: Vec<(SourceSpan, String)>,
    help: Option<String>,
}

impl Diagnostic {
    /// A new error with a stable code (`trellis::<area>::<mistake>`) and a lowercase message.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), source: None, labels: Vec::new(), help: None }
    }

    /// Points the diagnostic at `span` of `source`; a diagnostic has one source file, so
    /// further labels must point into the same file.
    pub fn at(mut self, source: &SourceFile, span: SourceSpan, label: impl Into<String>) -> Self {
        if self.source.is_none() {
            self.source = Some(source.clone());
        }
        self.labels.push((span, label.into()));
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The file this diagnostic points into, if any.
    pub fn source_name(&self) -> Option<&str> {
        self.source.as_ref().map(SourceFile::name)
    }

    /// The first label's span: where the mistake is.
    pub fn primary_span(&self) -> Option<SourceSpan> {
        self.labels.first().map(|(span, _)| *span)
    }

    /// Key used to drop repeats of the same mistake (a bad template renders badly for every
    /// variant; the user needs to hear it once).
    pub(crate) fn dedup_key(&self) -> (Option<&str>, Option<(usize, usize)>, &str) {
        (self.source_name(), self.primary_span().map(|s| (s.offset(), s.len())), self.message.as_str())
    }
}

impl fmt::Debug for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Diagnostic")
            .field("code", &self.code)
            .field("message", &self.message)
            .field("source", &self.source_name())
            .field("labels", &self.labels)
            .field("help", &self.help)
            .finish()
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Diagnostic {}

impl miette::Diagnostic for Diagnostic {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.code))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help.as_ref().map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        // `SourceFile` implements `SourceCode` itself and names its spans with the file name.
        self.source.as_ref().map(|s| s as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.labels.is_empty() {
            return None;
        }
        Some(Box::new(self.labels.iter().enumerate().map(|(i, (span, label))| {
            let label = (!label.is_empty()).then(|| label.clone());
            if i == 0 {
                LabeledSpan::new_primary_with_span(label, *span)
            } else {
                LabeledSpan::new_with_span(label, *span)
            }
        })))
    }
}

impl miette::SourceCode for SourceFile {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn miette::SpanContents<'a> + 'a>, miette::MietteError> {
        let contents = self.text.as_str().read_span(span, context_lines_before, context_lines_after)?;
        Ok(Box::new(miette::MietteSpanContents::new_named(
            self.name.to_string(),
            contents.data(),
            *contents.span(),
            contents.line(),
            contents.column(),
            contents.line_count(),
        )))
    }
}

impl SourceFile {
    /// A `NamedSource` for callers that want to attach this file to their own miette report.
    pub fn to_named_source(&self) -> NamedSource<Arc<String>> {
        self.named()
    }
}

/// Sorts diagnostics into reading order (file, then position) and drops exact repeats.
pub(crate) fn tidy(mut diagnostics: Vec<Diagnostic>, file_order: &[&str]) -> Vec<Diagnostic> {
    let rank = |d: &Diagnostic| {
        let file = d.source_name().and_then(|n| file_order.iter().position(|f| *f == n)).unwrap_or(usize::MAX);
        let offset = d.primary_span().map_or(0, |s| s.offset());
        (file, offset)
    };
    diagnostics.sort_by_key(rank);
    let mut seen = std::collections::HashSet::new();
    let keys: Vec<bool> = diagnostics
        .iter()
        .map(|d| {
            let (a, b, c) = d.dedup_key();
            seen.insert((a.map(str::to_owned), b, c.to_owned()))
        })
        .collect();
    let mut keep = keys.into_iter();
    diagnostics.retain(|_| keep.next().unwrap_or(true));
    diagnostics
}
