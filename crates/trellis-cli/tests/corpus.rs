//! The corpus: user-shaped workspaces under tests/corpus/<case>/, written the way README.md and
//! docs/matrix.md teach a newcomer, each run end to end on the real Docker Engine through the
//! real binary. One generic runner; each case's case.json holds what a user expects.
//!
//! For every case, on a personalised copy (see tests/harness: unique workspace name and
//! repositories, busybox where the case asks for it):
//!  0. `mistakes` (optional): several mistakes made at once; ONE `trellis check` reports every
//!     one of them (exit 2) and nothing runs; then they are undone.
//!  1. `trellis check` passes; `trellis tags --json` gives exactly the variants (and references)
//!     the case lists; `trellis build` exits as the case says (0 unless a test is meant to
//!     fail), the failed variants get no tag, flaky tests are reported flaky, no test image or
//!     container is left, and every other variant's references name one image carrying its
//!     workspace, variant and current build key;
//!  2. a second `trellis build` runs nothing (report.json: every node skipped) but what the
//!     case says runs again (a failed test), and a loopback service a test calls is not called;
//!  3. one edit, then `trellis plan --json` marks EXACTLY the case's node ids `run`; `trellis
//!     build` passes and leaves nothing to run;
//!     - `refresh` (optional): `trellis build --refresh FILTER…`, then `plan --json` marks
//!       exactly the case's ids `run`; a build converges;
//!     - `move_external` (optional): the harness rebuilds the external bases (they moved),
//!       then `plan --json` marks exactly the case's ids `run`; a build converges;
//!  4. `trellis clean` keeps every image a current variant names (its references still resolve,
//!     to an image with its current key; `plan` still has nothing to run) and removes every
//!     image an earlier step superseded;
//!  5. on drop: every image of the workspace, the harness's external bases, test containers
//!     and the temp dir.
//!
//! case.json (unknown fields are errors):
//! ```json
//! {
//!   "about": "what the case covers",
//!   "busybox": ["."],                     // folders that get Debian's busybox as `busybox`
//!   "external": ["acme/toolbox:1"],       // external bases the harness builds first
//!   "cwd": ".",                           // where trellis runs (default: the case folder)
//!   "file": "../images/matrix.kdl",       // passed as `-f` (default: none; trellis searches)
//!   "filters": ["app"],                   // FILTERs for tags, plan and build
//!   "build_args": ["--junit", "junit.xml"],
//!   "service": {"port": 8080, "failures": 2},  // 127.0.0.1:8080 becomes a loopback counter
//!                                         // answering "fail" `failures` times, then "ok"
//!   "variants": ["app/1", "app/2"],       // exactly these variants
//!   "tags": {"app/1": ["acme/app:1"]},    // exactly these variants and references
//!   "first_build": {"exit": 1, "failed": ["test:app/2/smoke"], "flaky": [], "untagged": ["app/2"]},
//!   "again": ["test:app/2/smoke", "tag:app/2"],  // what the second build runs again
//!   "edit": {"file": "app/run.sh", "replace": "old", "with": "new", "run": ["build:app/1", …]},
//!   "refresh": {"filters": ["base"], "run": […]},
//!   "move_external": […],
//!   "mistakes": {"edits": [{"file", "replace", "with"}], "links": [{"path", "target"}], "expect": ["trellis::…"]}
//! }
//! ```
//! Texts in a case (edits, references) are written as the workspace writes them: the harness
//! personalises them like the workspace.

mod common;
mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use harness::{Run, Sandbox, image_id, image_label, run_ids};
use serde::Deserialize;
use serde_json::Value;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    about: String,
    #[serde(default)]
    busybox: Vec<String>,
    #[serde(default)]
    external: Vec<String>,
    #[serde(default = "here")]
    cwd: String,
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    filters: Vec<String>,
    #[serde(default)]
    build_args: Vec<String>,
    #[serde(default)]
    service: Option<Service>,
    #[serde(default)]
    variants: Option<Vec<String>>,
    #[serde(default)]
    tags: Option<BTreeMap<String, Vec<String>>>,
    #[serde(default)]
    first_build: FirstBuild,
    #[serde(default)]
    again: Vec<String>,
    edit: Edit,
    #[serde(default)]
    refresh: Option<Refresh>,
    #[serde(default)]
    move_external: Option<Vec<String>>,
    #[serde(default)]
    mistakes: Option<Mistakes>,
}

fn here() -> String {
    ".".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Service {
    port: u16,
    failures: usize,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FirstBuild {
    #[serde(default)]
    exit: i32,
    #[serde(default)]
    failed: Vec<String>,
    #[serde(default)]
    flaky: Vec<String>,
    #[serde(default)]
    untagged: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Edit {
    file: String,
    replace: String,
    with: String,
    run: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Refresh {
    filters: Vec<String>,
    run: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TextEdit {
    file: String,
    replace: String,
    with: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Link {
    path: String,
    target: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Mistakes {
    edits: Vec<TextEdit>,
    #[serde(default)]
    links: Vec<Link>,
    expect: Vec<String>,
}

fn load(case: &str) -> Case {
    let path = Path::new(CORPUS).join(case).join("case.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One case on the engine: the copy, where trellis runs, and what the runs left behind.
struct Harness {
    case: Case,
    name: String,
    sandbox: Sandbox,
    /// `-f FILE` when the case names one.
    global: Vec<String>,
    /// The state directory: `.trellis` beside the workspace's matrix.kdl.
    state: PathBuf,
    /// Every image a build made: image ID → variant.
    built: BTreeMap<String, String>,
    hits: Option<Arc<AtomicUsize>>,
}

impl Harness {
    fn new(name: &str) -> Self {
        let case = load(name);
        let source = Path::new(CORPUS).join(name);
        let manifest = match &case.file {
            Some(file) => harness::normalise(&Path::new(&case.cwd).join(file)),
            None => find_manifest(&source, Path::new(&case.cwd)),
        };
        let sandbox = Sandbox::copy_of(&source, &format!("corpus-{name}"), &manifest, &["case.json"]);
        for dir in &case.busybox {
            sandbox.place_busybox(dir);
        }
        for reference in &case.external {
            sandbox.build_external(reference, "one");
        }
        let hits = case.service.as_ref().map(|service| {
            let hits = Arc::new(AtomicUsize::new(0));
            let counter = Arc::clone(&hits);
            let failures = service.failures;
            let (port, _answered) =
                common::engine::loopback_service(common::engine::engine_netns().as_deref(), move |_| {
                    if counter.fetch_add(1, Ordering::SeqCst) < failures { "fail" } else { "ok" }
                });
            let (from, to) = (format!("127.0.0.1:{}", service.port), format!("127.0.0.1:{port}"));
            sandbox.rewrite_texts(|text| text.replace(&from, &to));
            hits
        });
        let global = case.file.iter().flat_map(|f| ["-f".to_owned(), f.clone()]).collect();
        let state = sandbox.root().join(manifest.parent().unwrap()).join(".trellis");
        Harness { case, name: name.to_owned(), sandbox, global, state, built: BTreeMap::new(), hits }
    }

    fn trellis(&self, args: &[&str]) -> Run {
        let mut all: Vec<&str> = self.global.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        self.sandbox.trellis(&self.case.cwd, &all)
    }

    /// `trellis <command> [extra…] FILTER…`
    fn with_filters(&self, command: &[&str], filters: &[String]) -> Run {
        let mut args: Vec<&str> = command.to_vec();
        args.extend(filters.iter().map(String::as_str));
        self.trellis(&args)
    }

    fn personal(&self, text: &str) -> String {
        self.sandbox.personalise_text(text)
    }

    fn ids(&self, ids: &[String]) -> BTreeSet<String> {
        ids.iter().cloned().collect()
    }

    /// A build with the case's arguments and filters; its report.json (a new run must have
    /// written one).
    fn build(&mut self, step: &str, extra: &[&str], filters: &[String]) -> (Run, Value) {
        let before = harness::runs(&self.state).len();
        let mut command = vec!["build"];
        command.extend(self.case.build_args.iter().map(String::as_str));
        command.extend_from_slice(extra);
        let run = self.with_filters(&command, filters);
        let runs = harness::runs(&self.state);
        assert!(
            runs.len() > before,
            "[{}] {step}: no new run under {} — did the run start?\n{}",
            self.name,
            self.state.display(),
            run.show()
        );
        let report = harness::report(runs.last().unwrap());
        for node in report["nodes"].as_array().unwrap() {
            if let (Some("build"), Some(image)) = (node["kind"].as_str(), node["image"].as_str()) {
                let variant = node["id"].as_str().unwrap().trim_start_matches("build:").to_owned();
                self.built.insert(image.to_owned(), variant);
            }
        }
        assert!(self.sandbox.test_images().is_empty(), "[{}] {step}: test images were left behind", self.name);
        assert!(self.sandbox.containers().is_empty(), "[{}] {step}: containers were left behind", self.name);
        (run, report)
    }

    fn plan(&self, step: &str) -> BTreeSet<String> {
        let run = self.with_filters(&["plan", "--json"], &self.case.filters);
        assert_eq!(run.code, Some(0), "[{}] {step}: plan failed\n{}", self.name, run.show());
        run_ids(&run.json())
    }

    /// Asserts `plan --json` marks exactly `expected` as `run`.
    fn assert_plan(&self, step: &str, expected: &[String]) {
        let planned = self.plan(step);
        let expected = self.ids(expected);
        if planned != expected {
            let extra: Vec<_> = planned.difference(&expected).collect();
            let missing: Vec<_> = expected.difference(&planned).collect();
            let run = self.with_filters(&["plan"], &self.case.filters);
            panic!(
                "[{}] {step}: plan --json does not run exactly the expected nodes\n  runs but should not: {extra:?}\n  \
                 should run but does not: {missing:?}\n{}",
                self.name,
                run.show()
            );
        }
    }

    /// `tags --json` for the case's filters: variant → references.
    fn tags(&self) -> BTreeMap<String, Vec<String>> {
        let run = self.with_filters(&["tags", "--json"], &self.case.filters);
        assert_eq!(run.code, Some(0), "[{}] tags failed\n{}", self.name, run.show());
        run.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| {
                let references =
                    entry["references"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_owned()).collect();
                (entry["variant"].as_str().unwrap().to_owned(), references)
            })
            .collect()
    }

    /// Every current variant (but `except`) is tagged: its references name one image, which
    /// carries its workspace, its variant and the build key `plan` computes now. The variants'
    /// image IDs.
    fn assert_current(&self, step: &str, except: &[String]) -> BTreeSet<String> {
        let run = self.with_filters(&["plan", "--json"], &self.case.filters);
        assert_eq!(run.code, Some(0), "[{}] {step}: plan failed\n{}", self.name, run.show());
        let keys: BTreeMap<String, String> = run
            .json()
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["kind"] == "build")
            .map(|n| (n["id"].as_str().unwrap().to_owned(), n["key"].as_str().unwrap_or_default().to_owned()))
            .collect();
        let mut images = BTreeSet::new();
        for (variant, references) in self.tags() {
            if except.contains(&variant) {
                continue;
            }
            let named: Vec<(&String, Option<String>)> = references.iter().map(|r| (r, image_id(r))).collect();
            let ids: BTreeSet<&Option<String>> = named.iter().map(|(_, id)| id).collect();
            assert!(
                ids.len() == 1 && !ids.contains(&None),
                "[{}] {step}: the references of {variant} do not all name one image: {named:?}",
                self.name
            );
            let id = named[0].1.clone().unwrap();
            assert_eq!(
                image_label(&id, "dev.trellis.workspace"),
                self.sandbox.name,
                "[{}] {step}: {variant}",
                self.name
            );
            assert_eq!(image_label(&id, "dev.trellis.variant"), variant, "[{}] {step}: {id}", self.name);
            let key = keys.get(&format!("build:{variant}")).cloned().unwrap_or_default();
            assert_eq!(
                image_label(&id, "dev.trellis.key"),
                key,
                "[{}] {step}: the image {variant}'s references name is not built with its current key",
                self.name
            );
            images.insert(id);
        }
        images
    }

    fn hits(&self) -> usize {
        self.hits.as_ref().map_or(0, |h| h.load(Ordering::SeqCst))
    }
}

fn find_manifest(source: &Path, cwd: &Path) -> PathBuf {
    let mut dir = harness::normalise(cwd);
    loop {
        if source.join(&dir).join("matrix.kdl").is_file() {
            return dir.join("matrix.kdl");
        }
        assert!(dir.pop(), "no matrix.kdl in {} or above", cwd.display());
    }
}

fn node<'a>(report: &'a Value, id: &str) -> Option<&'a Value> {
    report["nodes"].as_array().unwrap().iter().find(|n| n["id"] == id)
}

fn run_case(name: &str) {
    // The pass under another builder (`TRELLIS_E2E_BUILDER`) adds nothing for a case that
    // chooses its builder itself: the default pass ran it as it is.
    let manifest = std::fs::read_to_string(Path::new(CORPUS).join(name).join("matrix.kdl")).unwrap_or_default();
    if std::env::var_os("TRELLIS_E2E_BUILDER").is_some() && manifest.contains("builder \"") {
        eprintln!("{name} chooses its builder: run by the default pass");
        return;
    }
    let mut h = Harness::new(name);
    // The mistakes are independent of the rest: their verdict waits until the flow is done,
    // so that one failure does not hide the other.
    let mistakes = h.case.mistakes.is_some().then(|| check_mistakes(&h));
    let flow = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| flow(&mut h)));
    match (flow, mistakes) {
        (Err(panic), Some(Err(also))) => {
            eprintln!("(and besides) {also}");
            std::panic::resume_unwind(panic)
        }
        (Err(panic), _) => std::panic::resume_unwind(panic),
        (Ok(()), Some(Err(message))) => panic!("{message}"),
        (Ok(()), _) => {}
    }
}

/// Step 0: several mistakes made at once; one `trellis check` reports every one of them and
/// nothing runs. The copy is restored afterwards.
fn check_mistakes(h: &Harness) -> Result<(), String> {
    let n = h.name.as_str();
    let mistakes = h.case.mistakes.as_ref().unwrap();
    let mut originals = BTreeMap::new();
    for edit in &mistakes.edits {
        let path = h.sandbox.path(&edit.file);
        originals.entry(path).or_insert_with_key(|p| std::fs::read(p).unwrap());
        h.sandbox.edit(&edit.file, &edit.replace, &edit.with);
    }
    for link in &mistakes.links {
        std::os::unix::fs::symlink(&link.target, h.sandbox.path(&link.path)).unwrap();
    }
    let run = h.trellis(&["check"]);
    let missing: Vec<&String> = mistakes.expect.iter().filter(|e| !run.stderr.contains(&h.personal(e))).collect();
    let ran = !harness::runs(&h.state).is_empty();
    for (path, bytes) in originals {
        std::fs::write(path, bytes).unwrap();
    }
    for link in &mistakes.links {
        std::fs::remove_file(h.sandbox.path(&link.path)).unwrap();
    }
    if run.code != Some(2) || !missing.is_empty() || ran {
        return Err(format!(
            "[{n}] mistakes: one `trellis check` must report every mistake (exit 2) and run nothing; \
             not reported: {missing:?}\n{}",
            run.show()
        ));
    }
    Ok(())
}

fn flow(h: &mut Harness) {
    let case_name = h.name.clone();
    let n = case_name.as_str();

    // 1. check, the variants and their references, the first build.
    let run = h.trellis(&["check"]);
    assert_eq!(run.code, Some(0), "[{n}] check\n{}", run.show());
    let tags = h.tags();
    if let Some(expected) = &h.case.variants {
        let got: Vec<&String> = tags.keys().collect();
        let want: BTreeSet<&String> = expected.iter().collect();
        assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want, "[{n}] the variants");
    }
    if let Some(expected) = &h.case.tags {
        let want: BTreeMap<String, BTreeSet<String>> =
            expected.iter().map(|(v, refs)| (v.clone(), refs.iter().map(|r| h.personal(r)).collect())).collect();
        let got: BTreeMap<String, BTreeSet<String>> =
            tags.iter().map(|(v, refs)| (v.clone(), refs.iter().cloned().collect())).collect();
        assert_eq!(got, want, "[{n}] the references of every variant (tags --json)");
    }

    let filters = h.case.filters.clone();
    let (run, report) = h.build("first build", &[], &filters);
    let first = &h.case.first_build;
    assert_eq!(run.code, Some(first.exit), "[{n}] first build: exit code\n{}", run.show());
    for node in report["nodes"].as_array().unwrap() {
        let id = node["id"].as_str().unwrap().to_owned();
        let status = node["status"].as_str().unwrap();
        let expected = if first.failed.contains(&id) {
            "failed"
        } else if first.flaky.contains(&id) {
            "flaky"
        } else if status == "blocked" && !first.failed.is_empty() {
            "blocked"
        } else if status == "flaky" && node["kind"] == "build" {
            // Two builds of one workspace running the same first steps at once can lose a
            // cached layer in the classic builder ("unable to find image sha256:…"): seen once
            // in CI, and what trellis retries builds for. A flaky build still passed.
            "flaky"
        } else {
            "passed"
        };
        assert_eq!(status, expected, "[{n}] first build: {id}\n{}", run.show());
    }
    for id in first.failed.iter().chain(&first.flaky) {
        assert!(node(&report, id).is_some(), "[{n}] first build: {id} is not in the report");
    }
    for variant in &first.untagged {
        for reference in tags.get(variant).unwrap_or_else(|| panic!("[{n}] no variant {variant}")) {
            assert_eq!(image_id(reference), None, "[{n}] first build: {variant} failed, yet {reference} exists");
        }
    }
    if let Some(service) = &h.case.service {
        assert_eq!(h.hits(), service.failures + 1, "[{n}] first build: calls to the service");
    }
    let untagged = first.untagged.clone();
    h.assert_current("after the first build", &untagged);
    if h.case.filters.is_empty() {
        // (A filtered build renders the selected variants only.)
        let run = h.trellis(&["render", "--check"]);
        assert_eq!(run.code, Some(0), "[{n}] render --check after a build\n{}", run.show());
    }

    // 2. Nothing changed: nothing runs but what the case expects to run again.
    let hits = h.hits();
    let (run, report) = h.build("second build", &[], &filters);
    let expected_code = if h.case.first_build.failed.is_empty() { 0 } else { h.case.first_build.exit };
    assert_eq!(run.code, Some(expected_code), "[{n}] second build: exit code\n{}", run.show());
    let again = h.ids(&h.case.again);
    let ran = run_ids(&report["nodes"]);
    assert_eq!(ran, again, "[{n}] second build of an unchanged workspace: the nodes that ran\n{}", run.show());
    for node in report["nodes"].as_array().unwrap() {
        if !again.contains(node["id"].as_str().unwrap()) {
            assert_eq!(node["attempts"], 0, "[{n}] second build: {node}");
            assert_eq!(node["status"], "skipped", "[{n}] second build: {node}");
        }
    }
    assert_eq!(h.hits(), hits, "[{n}] second build: the service was called again");

    // 3. One edit: exactly the declared nodes run.
    let edit = &h.case.edit;
    h.sandbox.edit(&edit.file, &edit.replace, &edit.with);
    let expected = edit.run.clone();
    h.assert_plan("after the edit", &expected);
    let (run, _) = h.build("build after the edit", &[], &filters);
    assert_eq!(run.code, Some(0), "[{n}] build after the edit\n{}", run.show());
    h.assert_plan("after the build that followed the edit", &[]);

    // 3b. --refresh: the refreshed variants' dependents are planned, and a build converges.
    if let Some(refresh) = &h.case.refresh {
        let (refresh_filters, expected) = (refresh.filters.clone(), refresh.run.clone());
        let (run, _) = h.build("build --refresh", &["--refresh"], &refresh_filters);
        assert_eq!(run.code, Some(0), "[{n}] build --refresh\n{}", run.show());
        h.assert_plan("after build --refresh", &expected);
        let (run, _) = h.build("build after --refresh", &[], &filters);
        assert_eq!(run.code, Some(0), "[{n}] build after --refresh\n{}", run.show());
        h.assert_plan("after the build that followed --refresh", &[]);
    }

    // 3c. The external bases move.
    if let Some(expected) = h.case.move_external.clone() {
        for reference in h.case.external.clone() {
            h.sandbox.build_external(&reference, "two");
        }
        h.assert_plan("after the external bases moved", &expected);
        let (run, _) = h.build("build after the bases moved", &[], &filters);
        assert_eq!(run.code, Some(0), "[{n}] build after the external bases moved\n{}", run.show());
        h.assert_plan("after the build that followed the move", &[]);
    }

    // 4. clean: what is current stays, what was superseded goes.
    let current = h.assert_current("before clean", &[]);
    let run = h.trellis(&["clean"]);
    assert_eq!(run.code, Some(0), "[{n}] clean\n{}", run.show());
    let after = h.assert_current(&format!("after clean (it said: {})", run.stdout.trim()), &[]);
    assert_eq!(after, current, "[{n}] clean changed what the references name");
    h.assert_plan("after clean", &[]);
    let left: Vec<String> = h
        .built
        .iter()
        .filter(|(id, _)| !current.contains(*id) && image_id(id).is_some())
        .map(|(id, variant)| format!("{variant} {id}"))
        .collect();
    assert!(left.is_empty(), "[{n}] clean left superseded images: {left:?}\n{}", run.show());
}

macro_rules! corpus {
    ($($test:ident: $dir:literal,)*) => {
        $(
            #[test]
            fn $test() {
                run_case($dir);
            }
        )*
        const CASES: &[&str] = &[$($dir),*];
    };
}

corpus! {
    simplest: "simplest",
    context_dot: "context-dot",
    two_level: "two-level",
    multi_stage: "multi-stage",
    arg_from: "arg-from",
    when_comparisons: "when-comparisons",
    template_comparisons: "template-comparisons",
    partial_attributes: "partial-attributes",
    excludes: "excludes",
    include_snippet: "include-snippet",
    dockerignore: "dockerignore",
    symlink_in_context: "symlink-in-context",
    test_dockerfile: "test-dockerfile",
    failing_test: "failing-test",
    flaky_test: "flaky-test",
    file_flag: "file-flag",
    external_base: "external-base",
    filtered_external: "filtered-external",
    cache_mount: "cache-mount",
}

/// A case folder without a test would never run; a case file with a typo would run a weaker
/// case than written.
#[test]
fn every_case_has_a_test_and_a_valid_case_file() {
    let mut found: Vec<String> = std::fs::read_dir(CORPUS)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    found.sort();
    let mut listed: Vec<String> = CASES.iter().map(|c| (*c).to_owned()).collect();
    listed.sort();
    assert_eq!(found, listed, "tests/corpus and the corpus! list differ");
    for case in CASES {
        let case = load(case);
        assert!(!case.about.is_empty());
    }
}
