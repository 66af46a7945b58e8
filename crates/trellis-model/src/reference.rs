//! Docker image references: validation and normalisation (`debian` →
//! `docker.io/library/debian:latest`).
//!
//! oci-spec's parser is the authority: the distribution grammar and Docker's normalisation.
//! Its one regex costs about 35 ms to compile and a third of a millisecond per match, which
//! was most of the time it took to load a 200-image workspace. So the common shape —
//! ASCII `[host[:port]/]path[/path…][:tag]`, no digest — is checked here directly, with the
//! same rules and the same result; anything else (digests, non-ASCII tags, every invalid
//! input, so that errors keep oci-spec's words) goes to oci-spec. `tests/reference.rs` holds
//! the two to the same answers on generated references.

use oci_spec::distribution::Reference;

/// A reference split the way oci-spec splits it, the tag defaulted to `latest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parts {
    pub registry: String,
    pub repository: String,
    pub tag: String,
}

/// The common shape, valid, split and normalised; `None` for anything else (which may still be
/// a valid reference: ask oci-spec).
pub fn common(reference: &str) -> Option<Parts> {
    if reference.is_empty() || !reference.is_ascii() || reference.contains('@') {
        return None;
    }
    let (name, tag) = match reference.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
        _ => (reference, None),
    };
    if tag.is_some_and(|t| !is_tag(t)) {
        return None;
    }
    let components: Vec<&str> = name.split('/').collect();
    let paths = |from: usize| components[from..].iter().all(|c| is_path_component(c));
    if !(paths(0) || (components.len() > 1 && is_domain(components[0]) && paths(1))) {
        return None;
    }
    // Docker's split: the first component is a registry when it looks like a host.
    let (registry, repository) = match name.split_once('/') {
        Some((left, right)) if left.contains('.') || left.contains(':') || left == "localhost" => (left, right),
        _ => ("docker.io", name),
    };
    let registry = if registry == "index.docker.io" { "docker.io" } else { registry };
    let repository = match registry == "docker.io" && !repository.contains('/') {
        true => format!("library/{repository}"),
        false => repository.to_owned(),
    };
    if repository.len() > 255 {
        return None;
    }
    Some(Parts { registry: registry.to_owned(), repository, tag: tag.unwrap_or("latest").to_owned() })
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}` (the ASCII part of the grammar's `[\w][\w.-]{0,127}`).
fn is_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    (1..=128).contains(&bytes.len()) && word(bytes[0]) && bytes[1..].iter().all(|&b| word(b) || b == b'.' || b == b'-')
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or one or more `-`.
fn is_path_component(component: &str) -> bool {
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    if !bytes.first().is_some_and(alnum) || !bytes.last().is_some_and(alnum) {
        return false;
    }
    bytes
        .split(alnum)
        .filter(|separator| !separator.is_empty())
        .all(|separator| matches!(separator, b"." | b"_" | b"__") || separator.iter().all(|&b| b == b'-'))
}

/// `host[:port]`: dot-separated `[a-zA-Z0-9]` labels with inner `-`, then an optional port.
fn is_domain(domain: &str) -> bool {
    let (host, port) = match domain.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    let label = |l: &str| {
        let bytes = l.as_bytes();
        bytes.first().is_some_and(u8::is_ascii_alphanumeric)
            && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
            && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
    };
    host.split('.').all(label) && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `Ok` when `reference` is a valid image reference; otherwise oci-spec's reason.
pub fn check(reference: &str) -> Result<(), String> {
    match common(reference) {
        Some(_) => Ok(()),
        None => Reference::try_from(reference).map(|_| ()).map_err(|e| e.to_string()),
    }
}

/// The registry host a reference lives in (`docker.io` when it names none).
pub fn registry_of(reference: &str) -> Option<String> {
    match common(reference) {
        Some(parts) => Some(parts.registry),
        None => Reference::try_from(reference).ok().map(|r| r.registry().to_owned()),
    }
}

/// Docker's normalised form of a reference, or `None` when it is not one.
pub fn normalise(reference: &str) -> Option<String> {
    match common(reference) {
        Some(Parts { registry, repository, tag }) => Some(format!("{registry}/{repository}:{tag}")),
        None => Reference::try_from(reference).ok().map(|r| r.whole()),
    }
}
