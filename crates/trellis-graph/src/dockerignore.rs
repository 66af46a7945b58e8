//! `.dockerignore` with Docker's exact semantics (moby/patternmatcher and the docker CLI's
//! ignore-file reader), implemented from their documented and observed behaviour:
//!
//! - lines starting with `#` are comments; lines are trimmed; a leading `!` makes an exception;
//! - patterns are cleaned like Go's `filepath.Clean` and a leading `/` is dropped;
//! - `*` and `?` never match `/`; `**` matches any number of directories (also none);
//!   `[…]` classes and `\` escapes work as in Go's `filepath.Match`;
//! - a path is excluded when the last pattern that matches it *or one of its parent
//!   directories* is not an exception;
//! - an excluded directory is still descended into when an exception pattern starts with it.
//!
//! No kept crate implements these rules (the `ignore` crate follows gitignore, which differs).

use regex::Regex;

/// How a pattern is matched; Docker picks the cheapest form that is equivalent, and the forms
/// are not quite equivalent to the regex (e.g. `**/foo` also matches `foo`), so we keep them.
#[derive(Debug, Clone)]
enum Matcher {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub struct Pattern {
    /// The cleaned pattern without its `!`.
    text: String,
    exception: bool,
    matcher: Matcher,
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        match &self.matcher {
            Matcher::Exact(p) => path == p,
            Matcher::Prefix(p) => path.starts_with(p.as_str()),
            Matcher::Suffix(s) => path.ends_with(s.as_str()) || (s.starts_with('/') && path == &s[1..]),
            Matcher::Regex(re) => re.is_match(path),
        }
    }
}

/// A bad line in a `.dockerignore` (Docker refuses the build for these).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct PatternError {
    pub line: usize,
    pub reason: String,
}

/// The compiled rules of one `.dockerignore`.
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

impl DockerIgnore {
    /// Parses the contents of a `.dockerignore`.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            if raw.starts_with('#') {
                continue;
            }
            let mut pattern = raw.trim();
            if pattern.is_empty() {
                continue;
            }
            let exception = pattern.starts_with('!');
            if exception {
                pattern = pattern[1..].trim();
                if pattern.is_empty() {
                    return Err(PatternError { line, reason: "illegal exclusion pattern: \"!\"".into() });
                }
            }
            let mut cleaned = clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            let matcher = compile(&cleaned).map_err(|reason| PatternError { line, reason })?;
            patterns.push(Pattern { text: cleaned, exception, matcher });
        }
        Ok(Self { patterns })
    }

    /// Whether `path` (relative, `/`-separated) is excluded from the context.
    pub fn excludes(&self, path: &str) -> bool {
        let parents: Vec<&str> = match path.rfind('/') {
            Some(end) => path[..end].split('/').collect(),
            None => Vec::new(),
        };
        let mut excluded = false;
        for pattern in &self.patterns {
            // An inclusion cannot change an excluded path, nor an exception an included one.
            if pattern.exception != excluded {
                continue;
            }
            let mut matched = pattern.matches(path);
            if !matched {
                let mut prefix = String::new();
                for dir in &parents {
                    if !prefix.is_empty() {
                        prefix.push('/');
                    }
                    prefix.push_str(dir);
                    if pattern.matches(&prefix) {
                        matched = true;
                        break;
                    }
                }
            }
            if matched {
                excluded = !pattern.exception;
            }
        }
        excluded
    }

    /// Whether an excluded directory must still be walked because an exception pattern
    /// starts with it (Docker's rule; `!**/keep` does not reopen a directory).
    pub fn may_reinclude_under(&self, dir: &str) -> bool {
        let dir_slash = format!("{dir}/");
        self.patterns.iter().any(|p| p.exception && format!("{}/", p.text).starts_with(&dir_slash))
    }
}

/// Go's `filepath.Clean` on `/`-separated paths.
pub fn clean(path: &str) -> String {
    if path.is_empty() {
        return ".".into();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

const REGEX_ONLY: &str = ".+()|{}$";

fn compile(pattern: &str) -> Result<Matcher, String> {
    #[derive(PartialEq, Clone, Copy)]
    enum Kind {
        Exact,
        Prefix,
        Suffix,
        Regex,
    }
    let mut regex = String::from("^");
    let mut kind = Kind::Exact;
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    let mut position = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i >= chars.len() {
                    if kind == Kind::Exact {
                        kind = Kind::Prefix;
                    } else {
                        regex.push_str(".*");
                        kind = Kind::Regex;
                    }
                } else {
                    regex.push_str("(.*/)?");
                    kind = Kind::Regex;
                }
                if position == 0 {
                    kind = Kind::Suffix;
                }
            }
            '*' => {
                regex.push_str("[^/]*");
                kind = Kind::Regex;
            }
            '?' => {
                regex.push_str("[^/]");
                kind = Kind::Regex;
            }
            c if REGEX_ONLY.contains(c) => {
                regex.push('\\');
                regex.push(c);
            }
            '\\' => match chars.get(i) {
                Some(next) => {
                    i += 1;
                    regex.push_str(&regex::escape(&next.to_string()));
                    kind = Kind::Regex;
                }
                None => regex.push_str("\\\\"),
            },
            '[' | ']' => {
                regex.push(c);
                kind = Kind::Regex;
            }
            c => regex.push(c),
        }
        position += 1;
    }
    // Go's filepath.Match rejects malformed classes and a trailing escape; so do we.
    if pattern.ends_with('\\') && !pattern.ends_with("\\\\") {
        return Err(format!("bad pattern `{pattern}`: trailing backslash"));
    }
    let compiled = || {
        let mut full = regex.clone();
        full.push('$');
        Regex::new(&full).map_err(|_| format!("bad pattern `{pattern}`"))
    };
    // Validate the class syntax even where a cheaper matcher is used.
    if pattern.contains('[') {
        compiled()?;
    }
    Ok(match kind {
        Kind::Exact => Matcher::Exact(pattern.to_owned()),
        Kind::Prefix => Matcher::Prefix(pattern[..pattern.len() - 2].to_owned()),
        Kind::Suffix => Matcher::Suffix(pattern[2..].to_owned()),
        Kind::Regex => Matcher::Regex(compiled()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(rules: &str, path: &str, excluded: bool) {
        let ignore = DockerIgnore::parse(rules).unwrap();
        assert_eq!(ignore.excludes(path), excluded, "rules {rules:?} on {path:?}");
    }

    #[test]
    fn plain_names_match_the_path_and_everything_below() {
        check("node_modules", "node_modules", true);
        check("node_modules", "node_modules/x/y.js", true);
        check("node_modules", "src/node_modules", false);
    }

    #[test]
    fn star_stays_within_one_component() {
        check("*.md", "README.md", true);
        check("*.md", "docs/README.md", false);
        check("*/*.md", "docs/README.md", true);
        check("a?c", "abc", true);
        check("a?c", "a/c", false);
    }

    #[test]
    fn double_star_spans_directories() {
        check("**/*.go", "a/b/c.go", true);
        check("**/*.go", "c.go", true);
        check("**/foo", "foo", true);
        check("**/foo", "x/foo", true);
        check("**/foo", "xfoo", false);
        check("a/**", "a/b/c", true);
        check("a/**/z", "a/z", true);
        check("a/**/z", "a/b/c/z", true);
        check("**", "anything/at/all", true);
    }

    #[test]
    fn exceptions_reinclude_in_order() {
        check("*.md\n!README.md", "README.md", false);
        check("*.md\n!README.md", "CHANGES.md", true);
        check("!README.md\n*.md", "README.md", true);
        check("docs\n!docs/keep.txt", "docs/keep.txt", false);
        check("docs\n!docs/keep.txt", "docs/other.txt", true);
    }

    #[test]
    fn patterns_are_cleaned_and_unrooted() {
        check("/secret", "secret", true);
        check("./build/", "build/out", true);
        check("a/../b", "b", true);
        check("  spaced  ", "spaced", true);
        check("# comment\n\n", "# comment", false);
    }

    #[test]
    fn escapes_and_classes() {
        check(r"\*star", "*star", true);
        check(r"\*star", "xstar", false);
        check("file[0-9].txt", "file7.txt", true);
        check("file[0-9].txt", "filex.txt", false);
        check("a.b", "axb", false);
        check("a+b", "a+b", true);
    }

    #[test]
    fn bad_patterns_are_errors() {
        assert!(DockerIgnore::parse("!").is_err());
        assert!(DockerIgnore::parse("file[").is_err());
    }

    #[test]
    fn reinclusion_reopens_only_prefixed_directories() {
        let ignore = DockerIgnore::parse("docs\n!docs/keep.txt\n!**/other").unwrap();
        assert!(ignore.may_reinclude_under("docs"));
        assert!(!ignore.may_reinclude_under("src"));
    }

    #[test]
    fn clean_matches_go() {
        for (input, want) in [
            ("", "."),
            ("a//b", "a/b"),
            ("a/./b/", "a/b"),
            ("../a", "../a"),
            ("/../a", "/a"),
            ("a/b/../../..", ".."),
            ("/", "/"),
        ] {
            assert_eq!(clean(input), want, "clean({input:?})");
        }
    }
}
