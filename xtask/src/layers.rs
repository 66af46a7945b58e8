//! The shape of the two crates with the most moving parts, checked: each module may use only
//! modules of a lower layer (docs/architecture.md draws the same layers). A module that
//! reaches up — or sideways, within its layer — is an import circle in the making; the test
//! names the reference to undo.

#![cfg(test)]

use std::collections::HashMap;
use std::fs;
use std::path::Path;

/// trellis-docker, bottom first: the engine client in the middle, stores, builders and the
/// registry client above it, the builder choice at the top (lib.rs).
const DOCKER: &[&[&str]] = &[
    &["errors", "oci", "store", "compress", "context_tar", "buildkit_progress", "engine_host", "credentials", "labels"],
    // (`labels`: lib.rs's labels and constants)
    &["endpoint", "buildkit_status"],
    &["control", "session"],
    &["client"],
    &["export", "registry", "builder"],
    &["classic", "buildkit", "publish"],
];

/// trellis, bottom first: errors and records, the backends, the state store, the workspace,
/// attaching to an engine, and what runs on an attached workspace.
const TRELLIS: &[&[&str]] = &[
    &["error", "remote", "events"],
    &["backend", "emulation"],
    &["state"],
    &["facade"],
    &["attach"],
    &["run", "clean", "doctor"],
];

/// Every `crate::…` reference of each module (its file or directory), outside comments and
/// `#[cfg(test)]` modules, resolved to the module it names (`crate::Error` through lib.rs's
/// `pub use`).
fn references(src: &Path) -> HashMap<String, Vec<(String, String)>> {
    let lib = fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    let mut exported = HashMap::new();
    for line in lib.lines().filter_map(|l| l.trim().strip_prefix("pub use ")) {
        let Some((module, names)) = line.split_once("::") else { continue };
        for name in names.trim_matches(|c| "{};".contains(c)).split(',') {
            exported.insert(name.trim().to_owned(), module.to_owned());
        }
    }
    // lib.rs's own constants (and its `labels` module) are the bottom: plain names.
    for line in lib.lines().filter_map(|l| l.trim().strip_prefix("pub const ")) {
        let name: String = line.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        exported.insert(name, "labels".to_owned());
    }
    let mut found: HashMap<String, Vec<(String, String)>> = HashMap::new();
    let mut files = Vec::new();
    collect(src, &mut files);
    for file in files {
        let relative = file.strip_prefix(src).expect("under src");
        let module = relative.iter().next().and_then(|m| m.to_str()).expect("a name").trim_end_matches(".rs");
        if module == "lib" {
            continue;
        }
        let text = fs::read_to_string(&file).expect("readable");
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (at, _) in line.match_indices("crate::") {
                let name: String =
                    line[at + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                let target = exported.get(&name).cloned().unwrap_or(name);
                if target != module {
                    found.entry(module.to_owned()).or_default().push((target, line.trim().to_owned()));
                }
            }
        }
    }
    found
}

fn collect(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).expect("a source directory").flatten() {
        let path = entry.path();
        match path.is_dir() {
            true => collect(&path, files),
            false if path.extension().is_some_and(|e| e == "rs") => files.push(path),
            false => {}
        }
    }
}

/// What breaks the layering of `crate_dir`: every reference to a module not below its own,
/// and every module the layers do not name.
fn violations(crate_dir: &str, layers: &[&[&str]]) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(crate_dir).join("src");
    let layer_of: HashMap<&str, usize> =
        layers.iter().enumerate().flat_map(|(i, names)| names.iter().map(move |n| (*n, i))).collect();
    let mut wrong = Vec::new();
    for (module, uses) in references(&src) {
        let Some(&own) = layer_of.get(module.as_str()) else {
            wrong.push(format!("{crate_dir}: module `{module}` is in no layer"));
            continue;
        };
        for (target, line) in uses {
            match layer_of.get(target.as_str()) {
                Some(&layer) if layer < own => {}
                Some(_) => wrong.push(format!("{crate_dir}: `{module}` reaches up or sideways to `{target}`: {line}")),
                None => wrong.push(format!("{crate_dir}: `{module}` uses `{target}`, which is in no layer: {line}")),
            }
        }
    }
    wrong.sort();
    wrong
}

#[test]
fn trellis_docker_is_a_layering() {
    assert_eq!(violations("crates/trellis-docker", DOCKER), Vec::<String>::new());
}

#[test]
fn trellis_is_a_layering() {
    assert_eq!(violations("crates/trellis", TRELLIS), Vec::<String>::new());
}

#[test]
fn a_reference_upwards_is_found() {
    // The check itself: the layers turned upside down must fail on today's code.
    let upside_down: Vec<&[&str]> = TRELLIS.iter().rev().copied().collect();
    assert!(!violations("crates/trellis", &upside_down).is_empty());
}
