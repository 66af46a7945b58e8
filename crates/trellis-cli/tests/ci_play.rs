//! CI played on this machine (DESIGN §9): runners start from a fresh checkout (no state
//! directory) on an engine holding none of the workspace's images, and share only the
//! registry. What each runner did is read from its report; what was published, from the
//! registry with raw requests.

mod common;

use common::engine::*;
use serde_json::Value;

const FAMILY: &str = r#"
settings {
    name "NAME"
    retries 0
    pull "never"
}
axis "v" "1" "2" "3" "4"
image "base" {
    repository "PREFIX/base"
    dockerfile "base.j2"
    context "busybox"
    tag "latest"
}
image "app" {
    matrix "v"
    repository "PREFIX/app"
    dockerfile "app.j2"
    context "busybox"
    tag "{{ v }}"
    tag "{{ v }}.0"
    test "version" {
        run "test \"$(cat /v)\" = {{ v }}"
    }
}
"#;

const APP: &str = "FROM PREFIX/base:latest\nRUN echo {{ v }} > /v\n";

const REGISTRY: &str = "127.0.0.1:5000";

/// One CI runner: a fresh checkout of `from` (a copy of `origin`, perhaps edited) on an
/// engine holding none of the workspace's images.
fn fresh_runner(origin: &EngineWorkspace, from: &EngineWorkspace, label: &str) -> EngineWorkspace {
    origin.remove_images();
    EngineWorkspace::copy_of(label, from.fixture.root(), &[])
}

/// `trellis build --push` on a runner, with the registry's credentials: its exit code, stderr
/// and report.
fn ci_build(runner: &EngineWorkspace, config: &std::path::Path, extra: &[&str]) -> (Option<i32>, String, Value) {
    let output = runner
        .trellis(&[&["build", "--push", "--registry", REGISTRY], extra].concat())
        .env("DOCKER_CONFIG", config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report = match output.status.code() {
        Some(0 | 1) => runner.report(),
        _ => Value::Null,
    };
    (output.status.code(), stderr, report)
}

/// The nodes a run ran, renders aside (a fresh checkout renders again).
fn ran(report: &Value) -> Vec<String> {
    let mut ran: Vec<String> = (report["nodes"].as_array().unwrap().iter())
        .filter(|n| n["action"] == "run" && n["kind"] != "render")
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect();
    ran.sort();
    ran
}

fn status<'r>(report: &'r Value, id: &str) -> &'r str {
    let node = report["nodes"].as_array().unwrap().iter().find(|n| n["id"] == id);
    node.unwrap_or_else(|| panic!("no node {id}"))["status"].as_str().unwrap()
}

fn reason<'r>(report: &'r Value, id: &str) -> &'r str {
    let node = report["nodes"].as_array().unwrap().iter().find(|n| n["id"] == id);
    node.unwrap_or_else(|| panic!("no node {id}"))["reason"].as_str().unwrap()
}

/// Every reference of the family and the digest it serves.
fn published(ws: &EngineWorkspace) -> Vec<(String, Option<String>)> {
    let mut references = vec![("base".to_owned(), "latest".to_owned())];
    for v in 1..=4 {
        references.push(("app".to_owned(), v.to_string()));
        references.push(("app".to_owned(), format!("{v}.0")));
    }
    (references.into_iter())
        .map(|(repository, tag)| {
            let name = format!("{}/{repository}", ws.prefix);
            (format!("{repository}:{tag}"), served_digest(&name, &tag))
        })
        .collect()
}

#[test]
fn a_fresh_runner_skips_what_was_published_and_rebuilds_exactly_what_changed() {
    let origin = EngineWorkspace::new("ci-play", FAMILY, &[("base.j2", BASE), ("app.j2", APP)]);
    let config = docker_config(true);

    // Runner A builds, tests and publishes the family.
    let (code, stderr, report) = ci_build(&origin, config.path(), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(ran(&report).contains(&"push:app/3".to_owned()));
    let before = published(&origin);
    assert!(before.iter().all(|(_, digest)| digest.is_some()), "{before:?}");

    // Runner B: a fresh checkout, an engine without the images, no state: nothing to do, and
    // nothing pulled.
    let b = fresh_runner(&origin, &origin, "ci-play-b");
    let (code, stderr, report) = ci_build(&b, config.path(), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(ran(&report), Vec::<String>::new(), "runner B ran nodes\n{stderr}");
    let why = reason(&report, "build:app/2");
    assert!(why.starts_with(&format!("served by {REGISTRY} at ")) && why.ends_with("built elsewhere"), "{why}");
    assert_eq!(reason(&report, "test:app/2/version"), why);
    assert_eq!(reason(&report, "push:app/2"), why);
    assert_eq!(origin.images(), "", "runner B pulled images it did not need");
    assert_eq!(published(&origin), before);

    // Runner C: one variant's build edited. Exactly it is rebuilt, on its parent's image pulled
    // by digest; the rest stays published as it was.
    let c = fresh_runner(&origin, &origin, "ci-play-c");
    c.fixture.write(
        "app.j2",
        &APP.replace("PREFIX", &origin.prefix)
            .replace("> /v\n", "> /v{% if v == \"3\" %} && echo edited > /edited{% endif %}\n"),
    );
    let (code, stderr, report) = ci_build(&c, config.path(), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(ran(&report), ["build:app/3", "push:app/3", "tag:app/3", "test:app/3/version"], "{stderr}");
    let why = reason(&report, "build:app/3");
    assert!(why.starts_with(&format!("its inputs changed since {REGISTRY} at ")), "{why}");
    let edited = report["nodes"].as_array().unwrap().iter().find(|n| n["id"] == "build:app/3").unwrap()["image"]
        .as_str()
        .unwrap()
        .to_owned();
    let parents = docker(&["image", "inspect", "-f", "{{index .Config.Labels \"dev.trellis.parents\"}}", &edited]);
    let after = published(&origin);
    for ((reference, was), (_, now)) in before.iter().zip(&after) {
        match reference.starts_with("app:3") {
            true => assert_ne!(was, now, "{reference} was republished"),
            false => assert_eq!(was, now, "{reference} must not move"),
        }
    }
    assert!(parents.starts_with("base@sha256:"), "app/3 records the base it stands on: {parents}");

    // Runner D: a test changed on unchanged images. Only that test runs (on the images pulled
    // by digest) and the push records it; no reference moves.
    let d = fresh_runner(&origin, &c, "ci-play-d");
    let matrix = std::fs::read_to_string(d.fixture.path("matrix.kdl")).unwrap();
    d.fixture.write("matrix.kdl", &matrix.replace("= {{ v }}\"", "= \\\"{{ v }}\\\"\""));
    let (code, stderr, report) = ci_build(&d, config.path(), &["v=1"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(ran(&report), ["push:app/1", "test:app/1/version"], "{stderr}");
    let why = reason(&report, "push:app/1");
    assert!(why.starts_with(&format!("a test changed: the record beside {REGISTRY} at ")), "{why}");
    let why = reason(&report, "test:app/1/version");
    assert!(why.starts_with("the test changed since it passed on "), "{why}");
    assert_eq!(published(&origin), after, "a test's record moved a reference");
    // And a runner after D finds it recorded.
    let e = fresh_runner(&origin, &d, "ci-play-e");
    let (code, stderr, report) = ci_build(&e, config.path(), &["v=1"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(ran(&report), Vec::<String>::new(), "{stderr}");

    // Runner F: a test changed so that it fails, on unchanged images. The tag has nothing to
    // do, but the push waits for the test and is blocked by it: nothing is recorded, so the
    // next runner runs the test again instead of taking it as passed.
    for label in ["ci-play-f", "ci-play-g"] {
        let f = fresh_runner(&origin, &d, label);
        let matrix = std::fs::read_to_string(f.fixture.path("matrix.kdl")).unwrap();
        f.fixture.write("matrix.kdl", &matrix.replace("= \\\"{{ v }}\\\"\"", "= never\""));
        let (code, stderr, report) = ci_build(&f, config.path(), &["v=1"]);
        assert_eq!(code, Some(1), "{label}: {stderr}");
        assert_eq!(ran(&report), ["push:app/1", "test:app/1/version"], "{label}: {stderr}");
        assert_eq!(status(&report, "test:app/1/version"), "failed", "{label}");
        assert_eq!(status(&report, "push:app/1"), "blocked", "{label}");
        assert_eq!(published(&origin), after, "{label}: a failed test moved a reference");
    }

    // Runner H built the family itself without pushing (`--refresh`: new image IDs under the
    // same keys). Its push publishes nothing new: the registry's images win over its own.
    let h = fresh_runner(&origin, &c, "ci-play-h");
    let built = h.trellis(&["build", "--refresh", "v=2"]).env("DOCKER_CONFIG", config.path()).output().unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let own = image_id(&origin.reference("app", "2"))
        .unwrap_or_else(|| panic!("H tagged its own build: {}", String::from_utf8_lossy(&built.stderr)));
    let (code, stderr, report) = ci_build(&h, config.path(), &["v=2"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(ran(&report), ["tag:app/2", "tag:base"], "H tags what the registry serves and pushes nothing\n{stderr}");
    let why = reason(&report, "push:app/2");
    assert!(why.starts_with(&format!("served by {REGISTRY} at ")), "{why}");
    assert_eq!(published(&origin), after, "H's own build moved a reference");
    let tagged = image_id(&origin.reference("app", "2")).unwrap();
    assert_ne!(tagged, own, "app:2 names the published image, not H's unpublished build");
}

/// The family and a tool built on nothing but tested with the base (the decoupled-runtime
/// pattern): its test needs the base, so the tool comes in the stage after it.
const TOOL: &str = r#"
image "tool" {
    repository "PREFIX/tool"
    dockerfile "base.j2"
    context "busybox"
    tag "latest"
    test "with-base" dockerfile="tests/with-base/Dockerfile" context="tests/with-base"
}
"#;

const WITH_BASE: &str = "ARG IMAGE\nARG BASE=PREFIX/base:latest\nFROM ${BASE} AS base\n\nFROM ${IMAGE}\nCOPY --from=base /bin/busybox /from-base\nRUN test -x /from-base\n";

#[test]
fn shards_of_a_stage_split_the_work_on_fresh_runners_and_publish_the_whole_family() {
    let family = format!("{FAMILY}{TOOL}");
    let files = [("base.j2", BASE), ("app.j2", APP), ("tests/with-base/Dockerfile", WITH_BASE)];
    let origin = EngineWorkspace::new("ci-shards", &family, &files);
    let config = docker_config(true);

    // Stage 1 before stage 0: the parent is not served, nothing runs.
    let early = fresh_runner(&origin, &origin, "ci-shards-early");
    let (code, stderr, _) = ci_build(&early, config.path(), &["--stage", "1", "--shard", "1/2"]);
    assert_eq!(code, Some(2), "{stderr}");
    let on_base = stderr.contains("builds on base") || stderr.contains("is tested with base");
    assert!(on_base && stderr.contains("(--stage 0) first"), "{stderr}");
    // A stage the workspace does not have is a mistake, not a job with nothing to do.
    let (code, stderr, _) = ci_build(&early, config.path(), &["--stage", "2"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--stage 2: the workspace's stages are 0 to 1"), "{stderr}");
    assert_eq!(origin.images(), "");

    // Stage 0 on one runner, then the two shards of stage 1, each on its own fresh runner.
    let stage0 = fresh_runner(&origin, &origin, "ci-shards-0");
    let (code, stderr, report) = ci_build(&stage0, config.path(), &["--stage", "0"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(ran(&report), ["build:base", "push:base", "tag:base"], "{stderr}");
    let mut built = Vec::new();
    for shard in ["1/2", "2/2"] {
        let runner = fresh_runner(&origin, &origin, "ci-shards-1");
        let (code, stderr, report) = ci_build(&runner, config.path(), &["--stage", "1", "--shard", shard]);
        assert_eq!(code, Some(0), "shard {shard}: {stderr}");
        let builds: Vec<String> = ran(&report).into_iter().filter(|id| id.starts_with("build:")).collect();
        assert!(!builds.is_empty(), "shard {shard} built nothing");
        assert!(!builds.contains(&"build:base".to_owned()), "shard {shard} rebuilt its parent");
        built.extend(builds);
    }
    built.sort();
    assert_eq!(
        built,
        ["build:app/1", "build:app/2", "build:app/3", "build:app/4", "build:tool"],
        "disjoint and complete"
    );
    let published = published(&origin);
    assert!(published.iter().all(|(_, digest)| digest.is_some()), "{published:?}");
}

const TWO_PLATFORMS: &str = r#"
settings {
    name "NAME"
    retries 0
    pull "never"
    platforms "linux/amd64" "linux/arm64"
}
axis "v" "1" "2"
image "base" {
    repository "PREFIX/base"
    dockerfile "base.j2"
    context "busybox"
    tag "latest"
}
image "app" {
    matrix "v"
    repository "PREFIX/app"
    dockerfile "app.j2"
    context "busybox"
    tag "{{ v }}"
    test "arch" {
        run "test \"$(uname -m)\" = \"$(cat /arch)\""
    }
}
"#;

const PLATFORM_APP: &str = "FROM PREFIX/base:latest\nRUN uname -m > /arch\n";

#[test]
fn two_platforms_a_fresh_runner_skips_the_indexes_and_rebuilds_one_variant_on_both() {
    let origin = two_platform_workspace("ci-platforms", TWO_PLATFORMS, PLATFORM_APP);
    let config = docker_config(true);
    let served = |tag: &str| served_digest(&format!("{}/app", origin.prefix), tag);

    let (code, stderr, _) = ci_build(&origin, config.path(), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let (one, two) = (served("1"), served("2"));
    assert!(one.is_some() && two.is_some());

    let b = fresh_runner(&origin, &origin, "ci-platforms-b");
    let (code, stderr, report) = ci_build(&b, config.path(), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(ran(&report), Vec::<String>::new(), "runner B ran nodes\n{stderr}");
    assert_eq!(origin.images(), "", "runner B pulled images it did not need");

    // One variant edited: rebuilt and tested on both platforms, each on its parent's image for
    // that platform pulled by digest; one new index for it, the other untouched.
    let c = fresh_runner(&origin, &origin, "ci-platforms-c");
    let app = PLATFORM_APP.replace("PREFIX", &origin.prefix);
    c.fixture.write("app.j2", &app.replace("> /arch\n", "> /arch{% if v == \"2\" %} && echo edited > /e{% endif %}\n"));
    let (code, stderr, report) = ci_build(&c, config.path(), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        ran(&report),
        [
            "build:app/2@linux/amd64",
            "build:app/2@linux/arm64",
            "push:app/2",
            "tag:app/2",
            "test:app/2/arch@linux/amd64",
            "test:app/2/arch@linux/arm64"
        ],
        "{stderr}"
    );
    assert_eq!(served("1"), one, "app:1 must not move");
    assert_ne!(served("2"), two, "app:2 serves the rebuilt index");
}

/// The layer media types of the image manifest `repository:tag` serves.
fn layer_types(repository: &str, tag: &str) -> Vec<String> {
    let response = registry_request("GET", repository, tag).expect("the registry answers");
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let manifest: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"));
    // One family of media types: an OCI manifest names an OCI config (the containerd store's
    // own gzip manifests are Docker schema 2 throughout).
    let config = match manifest["mediaType"].as_str() {
        Some("application/vnd.oci.image.manifest.v1+json") => "application/vnd.oci.image.config.v1+json",
        _ => "application/vnd.docker.container.image.v1+json",
    };
    assert_eq!(manifest["config"]["mediaType"], config, "{manifest}");
    (manifest["layers"].as_array().unwrap().iter()).map(|l| l["mediaType"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn a_change_of_compression_publishes_again_and_a_fresh_runner_builds_what_the_registry_holds_otherwise() {
    const ZSTD: &str = "    compression \"zstd\"\n";
    let family = FAMILY.replace("    pull \"never\"\n", &format!("    pull \"never\"\n{ZSTD}"));
    let origin = EngineWorkspace::new("ci-compression", &family, &[("base.j2", BASE), ("app.j2", APP)]);
    let config = docker_config(true);
    let app = format!("{}/app", origin.prefix);
    let matrix = origin.fixture.root().join("matrix.kdl");
    let zstd_matrix = std::fs::read_to_string(&matrix).unwrap();

    // Published as zstd.
    let (code, stderr, _) = ci_build(&origin, config.path(), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let types = layer_types(&app, "1");
    assert!(types.iter().all(|t| t == "application/vnd.oci.image.layer.v1.tar+zstd"), "{types:?}");
    let zstd_digest = served_digest(&app, "1").unwrap();

    // Back to gzip on the same machine: nothing is rebuilt, every push runs and publishes gzip.
    std::fs::write(&matrix, zstd_matrix.replace(ZSTD, "")).unwrap();
    let (code, stderr, report) = ci_build(&origin, config.path(), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let pushes = ["push:app/1", "push:app/2", "push:app/3", "push:app/4", "push:base"];
    assert_eq!(ran(&report), pushes, "{stderr}");
    assert!(reason(&report, "push:app/1").contains("compression changed"), "{}", reason(&report, "push:app/1"));
    let types = layer_types(&app, "1");
    assert!(types.iter().all(|t| t.ends_with("gzip")), "{types:?}");
    assert_ne!(served_digest(&app, "1").unwrap(), zstd_digest);

    // zstd again: the same image publishes the same digest it did.
    std::fs::write(&matrix, &zstd_matrix).unwrap();
    let (code, stderr, report) = ci_build(&origin, config.path(), &[]);
    assert_eq!((code, ran(&report)), (Some(0), pushes.map(str::to_owned).to_vec()), "{stderr}");
    assert_eq!(served_digest(&app, "1").unwrap(), zstd_digest);

    // A fresh runner of the gzip checkout does not pull the zstd images the registry records
    // (an engine older than Docker 23 could not): it builds, tests and publishes gzip.
    origin.remove_images();
    let runner = EngineWorkspace::copy_of("ci-compression-b", origin.fixture.root(), &[(ZSTD, "")]);
    let (code, stderr, report) = ci_build(&runner, config.path(), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let why = reason(&report, "build:app/1");
    assert!(why.contains("is published with another compression"), "{why}");
    assert_eq!(status(&report, "test:app/1/version"), "passed");
    let types = layer_types(&app, "1");
    assert!(types.iter().all(|t| t.ends_with("gzip")), "{types:?}");
    runner.remove_images();
}
