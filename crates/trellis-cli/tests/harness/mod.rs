//! What the corpus and the docs tests share: a user-shaped workspace copied into a temp dir
//! under a unique workspace name and repository prefix, the real `trellis` binary run on it,
//! and the docker CLI to look at the engine from the outside (nothing of trellis's own).
//! Everything a sandbox made — images, test containers, the temp dir — goes when it drops.
//!
//! Personalising a copy, so that parallel tests and reruns never share a name:
//! - `settings { name "X" }` becomes `name "<unique>"` (the `dev.trellis.workspace` label);
//! - every repository namespace the workspace uses (the part of `repository "acme/app"` before
//!   the first `/`) is moved under `trellis-corpus/<unique>/` wherever it starts a reference
//!   in a text file (`FROM acme/base:1`, `--from=acme/assets:1`, `ARG BASE=acme/base`…), so
//!   a namespace is never also a folder name of the workspace;
//! - Debian's static busybox, copied where a case asks for it, gets a trailer naming the run:
//!   every image chain that starts with it is this run's own, so one test's cleanup can never
//!   remove a cached layer another test is building on;
//! - with `TRELLIS_E2E_BUILDER` set, the settings choose that builder.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// `; builder "X"` when the suite runs under the builder `TRELLIS_E2E_BUILDER` names
/// (`cargo xtask test` runs the engine suites under each builder) and the workspace does not
/// choose one itself.
pub fn builder_setting(matrix: &str) -> String {
    match std::env::var("TRELLIS_E2E_BUILDER") {
        Ok(builder) if !matrix.contains("builder \"") => format!("; builder \"{builder}\""),
        _ => String::new(),
    }
}

/// Where every repository of a sandbox lives: `trellis-corpus/<unique>/<namespace>/…`.
pub const PREFIX_ROOT: &str = "trellis-corpus";

/// A name no other test or rerun has: `<label>-<pid><nanos>`, lowercase (a Docker repository
/// path component).
pub fn unique(label: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{label}-{:x}{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
}

pub fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).stdin(Stdio::null()).output().expect("the docker CLI runs")
}

/// The docker CLI's stdout, trimmed; empty when the command failed.
pub fn docker_text(args: &[&str]) -> String {
    String::from_utf8_lossy(&docker(args).stdout).trim().to_owned()
}

/// The ID of the image `reference` names in the engine.
pub fn image_id(reference: &str) -> Option<String> {
    let id = docker_text(&["image", "inspect", "-f", "{{.Id}}", reference]);
    (!id.is_empty()).then_some(id)
}

pub fn image_label(id: &str, key: &str) -> String {
    docker_text(&["image", "inspect", "-f", &format!("{{{{index .Config.Labels \"{key}\"}}}}"), id])
}

/// One finished `trellis` invocation.
pub struct Run {
    pub command: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(command: String, output: Output) -> Self {
        Run {
            command,
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The command and its output, for assertion messages (long outputs keep their end).
    pub fn show(&self) -> String {
        let tail = |text: &str| {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(60);
            lines[start..].join("\n")
        };
        format!(
            "`{}` exited {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.code,
            tail(&self.stdout),
            tail(&self.stderr)
        )
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.show()))
    }
}

/// A personalised copy of a workspace on disk, cleaned up (engine included) on drop.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    /// The unique workspace name (`settings { name … }` of the copy).
    pub name: String,
    /// `trellis-corpus/<name>`: the namespaces of the copy live under it.
    pub prefix: String,
    /// The repository namespaces of the original (`acme`).
    pub namespaces: Vec<String>,
    /// Images the harness itself built (external bases), removed on drop.
    made: RefCell<Vec<String>>,
}

impl Sandbox {
    /// Copies `source` (symlinks as symlinks, modes kept; `skip` names at its top level left
    /// out) and personalises the copy; `manifest` is the workspace's matrix.kdl, relative to
    /// `source`.
    pub fn copy_of(source: &Path, label: &str, manifest: &Path, skip: &[&str]) -> Self {
        let dir = tempfile::Builder::new().prefix("trellis-corpus-").tempdir().unwrap();
        copy_tree(source, dir.path(), skip);
        Self::personalise(dir, label, manifest)
    }

    /// Writes `files` into a fresh temp dir and personalises it.
    pub fn from_files(files: &BTreeMap<String, String>, label: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("trellis-docs-").tempdir().unwrap();
        for (path, text) in files {
            let full = dir.path().join(path);
            fs::create_dir_all(full.parent().unwrap()).unwrap();
            fs::write(full, text).unwrap();
        }
        Self::personalise(dir, label, Path::new("matrix.kdl"))
    }

    fn personalise(dir: tempfile::TempDir, label: &str, manifest: &Path) -> Self {
        let name = unique(label);
        let prefix = format!("{PREFIX_ROOT}/{name}");
        let manifest_path = dir.path().join(manifest);
        let text = fs::read_to_string(&manifest_path).unwrap_or_else(|e| panic!("{}: {e}", manifest_path.display()));
        let document = kdl::KdlDocument::parse_v2(&text)
            .unwrap_or_else(|e| panic!("{} is not KDL 2: {e:?}", manifest_path.display()));
        let old_name = document
            .get("settings")
            .and_then(|s| s.children())
            .and_then(|c| c.get_arg("name"))
            .and_then(|v| v.as_string())
            .unwrap_or_else(|| panic!("{}: no `settings {{ name … }}`", manifest_path.display()))
            .to_owned();
        let namespaces = namespaces(&document);
        for namespace in &namespaces {
            assert!(
                !tree_has_dir_named(dir.path(), namespace),
                "the repository namespace `{namespace}` is also a folder name: references could not be told from paths"
            );
        }
        let sandbox = Sandbox { dir, name, prefix, namespaces, made: RefCell::new(Vec::new()) };
        let from = format!("name \"{old_name}\"");
        assert!(text.contains(&from), "{}: `{from}` is not written that way", manifest_path.display());
        let to = format!("name \"{}\"{}", sandbox.name, builder_setting(&text));
        fs::write(&manifest_path, text.replacen(&from, &to, 1)).unwrap();
        sandbox.rewrite_texts(|text| sandbox.personalise_text(text));
        sandbox
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.root().join(relative)
    }

    /// `text` with every reference into the workspace's namespaces moved under the prefix.
    pub fn personalise_text(&self, text: &str) -> String {
        prefix_references(text, &self.namespaces, &self.prefix)
    }

    /// Applies `change` to every UTF-8 file of the copy (outside the state directory), writing
    /// only the files it changes.
    pub fn rewrite_texts(&self, change: impl Fn(&str) -> String) {
        for path in files_under(self.root()) {
            if let Ok(text) = fs::read_to_string(&path) {
                let changed = change(&text);
                if changed != text {
                    fs::write(&path, changed).unwrap();
                }
            }
        }
    }

    /// Replaces `from` by `to` in one file of the copy (both personalised first); the text
    /// must be there.
    pub fn edit(&self, file: &str, from: &str, to: &str) {
        let path = self.path(file);
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (from, to) = (self.personalise_text(from), self.personalise_text(to));
        assert!(text.contains(&from), "{file} does not contain {from:?}");
        fs::write(&path, text.replacen(&from, &to, 1)).unwrap();
    }

    /// Debian's busybox-static as `<dir>/busybox`, with a trailer naming this sandbox (the
    /// kernel ignores bytes after the ELF image).
    pub fn place_busybox(&self, dir: &str) {
        let mut bytes = fs::read("/bin/busybox").expect("Debian's busybox-static (cargo xtask engine installs it)");
        bytes.extend_from_slice(format!("\n{}\n", self.name).as_bytes());
        let target = self.path(dir).join("busybox");
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        fs::write(&target, bytes).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Builds the external base image `reference` (written as the workspace writes it) with the
    /// docker CLI — setup, not under test: FROM scratch, this sandbox's busybox and a `marker`
    /// label (a new marker is a new image under the same reference: the base moved).
    pub fn build_external(&self, reference: &str, marker: &str) -> String {
        let reference = self.personalise_text(reference);
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = fs::read("/bin/busybox").unwrap();
        bytes.extend_from_slice(format!("\n{}\n", self.name).as_bytes());
        fs::write(dir.path().join("busybox"), bytes).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir.path().join("busybox"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(
            dir.path().join("Dockerfile"),
            format!(
                "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
                 RUN mkdir -p /tmp /etc /usr/local/bin\nLABEL org.example.corpus.marker=\"{marker}\"\n"
            ),
        )
        .unwrap();
        let output = Command::new("docker")
            .args(["build", "-q", "--force-rm", "-t", &reference])
            .arg(dir.path())
            .env("DOCKER_BUILDKIT", "0")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "building the external base {reference}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let id = image_id(&reference).expect("the external base was just built");
        self.made.borrow_mut().push(id.clone());
        id
    }

    /// Runs `trellis <args>` in `cwd` (relative to the sandbox), with no colours and the real
    /// engine.
    pub fn trellis(&self, cwd: &str, args: &[&str]) -> Run {
        let output = Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args(args)
            .current_dir(self.path(cwd))
            .env("NO_COLOR", "1")
            .env_remove("TRELLIS_ENGINE")
            .env_remove("TRELLIS_SIMULATE")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        Run::from(format!("(in {cwd}) trellis {}", args.join(" ")), output)
    }

    /// Image IDs labelled with this workspace.
    pub fn workspace_images(&self) -> BTreeSet<String> {
        docker_text(&["images", "-q", "--no-trunc", "--filter", &format!("label=dev.trellis.workspace={}", self.name)])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Test images of this workspace still in the engine.
    pub fn test_images(&self) -> BTreeSet<String> {
        docker_text(&[
            "images",
            "-q",
            "--no-trunc",
            "--filter",
            "label=dev.trellis.test=true",
            "--filter",
            &format!("label=dev.trellis.workspace={}", self.name),
        ])
        .lines()
        .map(str::to_owned)
        .collect()
    }

    /// Containers (running or not) made from this workspace's images.
    pub fn containers(&self) -> BTreeSet<String> {
        let mut ids: BTreeSet<String> =
            docker_text(&["ps", "-aq", "--filter", &format!("label=dev.trellis.workspace={}", self.name)])
                .lines()
                .map(str::to_owned)
                .collect();
        for image in self.workspace_images().iter().chain(self.made.borrow().iter()) {
            ids.extend(
                docker_text(&["ps", "-aq", "--filter", &format!("ancestor={image}")]).lines().map(str::to_owned),
            );
        }
        ids
    }

    /// Every image this sandbox may have made: labelled with its workspace, named under its
    /// prefix, or built by the harness.
    fn everything(&self) -> BTreeSet<String> {
        let mut ids = self.workspace_images();
        let listing = docker_text(&["images", "--no-trunc", "--format", "{{.Repository}} {{.ID}}"]);
        for line in listing.lines() {
            if let Some((repository, id)) = line.split_once(' ')
                && repository.starts_with(&format!("{}/", self.prefix))
            {
                ids.insert(id.to_owned());
            }
        }
        ids.extend(self.made.borrow().iter().filter(|id| image_id(id).is_some()).cloned());
        ids
    }
}

/// The first layer of an image (its chain's root), if it has one.
fn first_layer(id: &str) -> Option<String> {
    let layer = docker_text(&["image", "inspect", "-f", "{{index .RootFS.Layers 0}}", id]);
    layer.starts_with("sha256:").then_some(layer)
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let containers = self.containers();
        if !containers.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(containers.iter().map(String::as_str));
            docker(&args);
        }
        // The roots of this sandbox's chains: they start with its own busybox (or content of
        // its own), so no other test's image starts there.
        let roots: BTreeSet<String> = self.everything().iter().filter_map(|id| first_layer(id)).collect();
        // A parent goes only after its children, and `rmi` takes its arguments in order:
        // repeat until nothing of this sandbox is left.
        for _ in 0..6 {
            let ids = self.everything();
            if ids.is_empty() {
                break;
            }
            let mut args = vec!["rmi", "-f"];
            args.extend(ids.iter().map(String::as_str));
            docker(&args);
        }
        // What the builder left untagged on those roots: the stages of multi-stage builds.
        let stages: Vec<String> = docker_text(&["images", "-q", "--no-trunc", "--filter", "dangling=true"])
            .lines()
            .filter(|id| first_layer(id).is_some_and(|layer| roots.contains(&layer)))
            .map(str::to_owned)
            .collect();
        for id in stages {
            docker(&["rmi", &id]);
        }
    }
}

/// The namespaces of a workspace's repositories: `acme` for `repository "acme/app-{{ os }}"`.
pub fn namespaces(document: &kdl::KdlDocument) -> Vec<String> {
    let mut found = BTreeSet::new();
    for image in document.nodes().iter().filter(|n| n.name().value() == "image") {
        let Some(children) = image.children() else { continue };
        for repository in children.nodes().iter().filter(|n| n.name().value() == "repository") {
            let Some(value) = repository.entries().first().and_then(|e| e.value().as_string()) else { continue };
            match value.split_once('/') {
                Some((namespace, _))
                    if !namespace.contains("{{") && !namespace.contains('.') && !namespace.contains(':') =>
                {
                    found.insert(namespace.to_owned());
                }
                _ => panic!("repository {value:?}: a sandboxed workspace writes its repositories as `namespace/name`"),
            }
        }
    }
    found.into_iter().collect()
}

/// Moves every reference that starts with `<namespace>/` (at a word boundary: not after a
/// registry host or another path component) under `prefix`.
pub fn prefix_references(text: &str, namespaces: &[String], prefix: &str) -> String {
    let part_of_reference = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':' | '@');
    let mut out = String::with_capacity(text.len());
    let mut previous: Option<char> = None;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if !previous.is_some_and(part_of_reference)
            && let Some(namespace) =
                namespaces.iter().find(|n| rest.starts_with(n.as_str()) && rest[n.len()..].starts_with('/'))
        {
            out.push_str(prefix);
            out.push('/');
            out.push_str(namespace);
            out.push('/');
            rest = &rest[namespace.len() + 1..];
            previous = Some('/');
            continue;
        }
        out.push(c);
        previous = Some(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Copies a tree: directories, files with their modes, symlinks as symlinks; never a state
/// directory (`.trellis`) someone's run by hand left in it.
pub fn copy_tree(from: &Path, to: &Path, skip: &[&str]) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == ".trellis" || skip.iter().any(|s| name == *s) {
            continue;
        }
        let (source, target) = (entry.path(), to.join(&name));
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&source).unwrap(), &target).unwrap();
        } else if kind.is_dir() {
            copy_tree(&source, &target, &[]);
        } else {
            fs::copy(&source, &target).unwrap();
        }
    }
}

/// Regular files under `root`, not following symlinks, outside trellis's state directory.
fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() && entry.file_name() != ".trellis" {
                pending.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    files
}

fn tree_has_dir_named(root: &Path, name: &str) -> bool {
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                if entry.file_name() == name {
                    return true;
                }
                pending.push(entry.path());
            }
        }
    }
    false
}

/// `path` with `.` and `..` resolved lexically.
pub fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The run directories under `<state>/runs`, oldest first (run ids sort by time).
pub fn runs(state: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(state.join("runs")) else { return Vec::new() };
    let mut runs: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    runs.sort();
    runs
}

/// The report.json of a run directory.
pub fn report(run: &Path) -> Value {
    let path = run.join("report.json");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The ids of the nodes of a `plan --json` (or report) whose action is `run`, push nodes left
/// out (the sandboxes never push).
pub fn run_ids(nodes: &Value) -> BTreeSet<String> {
    nodes
        .as_array()
        .expect("a JSON array of nodes")
        .iter()
        .filter(|n| n["action"] == "run" && n["kind"] != "push")
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect()
}
