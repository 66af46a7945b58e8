//! End to end on the real Docker Engine (`cargo xtask engine` starts one): small images made
//! FROM scratch + Debian's static busybox. Every test has its own workspace name and
//! repository prefix, and removes what it made. Synchronisation is by output lines and a
//! loopback service the builds call, never by sleeping.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use common::engine::*;
use serde_json::Value;

const FAMILY: &str = r#"
settings {
    name "NAME"
    retries 0
    pull "never"
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
    tag "{{ v }}.0"
    tag "latest" float=#true
    test "smoke" {
        run "test -f /app/v{{ v }}"
        run "busybox --help >/dev/null"
    }
}
image "tool" {
    repository "PREFIX/tool"
    dockerfile "tool.j2"
    context "busybox"
    tag "latest"
}
"#;

const APP: &str = "FROM PREFIX/base:latest\nRUN mkdir -p /app && echo {{ v }} > /app/v{{ v }}\n";
const TOOL: &str = "FROM PREFIX-ext/busybox:1\nRUN echo tool > /tool\n";

/// The external base `tool` builds on, made with the docker CLI (setup, not under test).
fn external_base(ws: &EngineWorkspace, marker: &str) {
    let dir = ws.fixture.path("ext");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy("/bin/busybox", dir.join("busybox")).unwrap();
    std::fs::write(dir.join("Dockerfile"), format!("{}LABEL marker={marker}\n", BASE.replace("NAME", &ws.name)))
        .unwrap();
    // Setup, not under test. The classic builder looks through the engine's images without a
    // parent for a cache hit of a `FROM scratch` step and fails ("unable to find image") when
    // one vanishes under it — every BuildKit image is such an image, and other tests remove
    // theirs all the time: that engine race is retried here.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let output = Command::new("docker")
            .args(["build", "-q", "-t", &format!("{}-ext/busybox:1", ws.prefix)])
            .arg(&dir)
            .env("DOCKER_BUILDKIT", "0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() {
            return;
        }
        assert!(attempts < 3 && stderr.contains("unable to find image"), "docker build of the external base: {stderr}");
    }
}

fn family(label: &str) -> EngineWorkspace {
    let ws = EngineWorkspace::new(label, FAMILY, &[("base.j2", BASE), ("app.j2", APP), ("tool.j2", TOOL)]);
    external_base(&ws, "one");
    ws
}

#[test]
fn every_tag_of_a_variant_is_one_image_and_a_second_run_does_nothing() {
    let ws = family("tags");
    let (code, stderr) = ws.build(&[]);
    assert_eq!(code, Some(0), "{stderr}");
    let one = image_id(&ws.reference("app", "1")).unwrap();
    assert_eq!(image_id(&ws.reference("app", "1.0")), Some(one.clone()));
    assert_eq!(image_id(&ws.reference("app", "latest")), Some(one.clone()), "latest floats to the first variant");
    let two = image_id(&ws.reference("app", "2")).unwrap();
    assert_ne!(one, two);
    assert_eq!(image_id(&ws.reference("app", "2.0")), Some(two));
    let report = ws.report();
    let built = report["nodes"].as_array().unwrap().iter().find(|n| n["id"] == "build:app/1").unwrap();
    assert_eq!(built["image"].as_str(), Some(one.as_str()), "the image ID comes from the build");
    let label =
        |key: &str| docker(&["image", "inspect", "-f", &format!("{{{{index .Config.Labels \"{key}\"}}}}"), &one]);
    assert_eq!(label("dev.trellis.workspace"), ws.name);
    assert_eq!(label("dev.trellis.variant"), "app/1");
    assert_eq!(label("dev.trellis.key").len(), 64);
    assert!(label("org.opencontainers.image.created").starts_with("20"));
    assert_eq!(label("org.opencontainers.image.version"), "1", "the variant's first tag");

    let (code, stderr) = ws.build(&[]);
    assert_eq!(code, Some(0));
    assert!(stderr.contains("0 passed, 0 flaky, 0 failed, 0 blocked, 14 up to date"), "{stderr}");
    assert!(!stderr.contains("START"), "nothing ran:\n{stderr}");
}

#[test]
fn a_template_edit_rebuilds_its_variants_and_their_children_only() {
    let ws = family("edit");
    assert_eq!(ws.build(&[]).0, Some(0));
    let tool = image_id(&ws.reference("tool", "latest")).unwrap();
    ws.fixture.write("base.j2", &format!("{}LABEL edited=yes\n", BASE.replace("NAME", &ws.name)));
    let (code, stderr) = ws.build(&[]);
    assert_eq!(code, Some(0), "{stderr}");
    let report = ws.report();
    for id in ["build:base", "build:app/1", "build:app/2", "test:app/1/smoke", "tag:app/2"] {
        assert_eq!(action(&report, id), "run", "{id}");
    }
    assert_eq!(action(&report, "build:tool"), "skip");
    assert_eq!(image_id(&ws.reference("tool", "latest")), Some(tool));
    assert!(
        docker(&["image", "inspect", "-f", "{{.Config.Labels.edited}}", &ws.reference("app", "2")]) == "yes",
        "the child is built on the new parent"
    );
}

#[test]
fn a_moved_external_base_rebuilds_its_dependents_and_nothing_else() {
    let ws = family("base");
    assert_eq!(ws.build(&[]).0, Some(0));
    external_base(&ws, "two");
    let plan = ws.trellis(&["plan"]).output().unwrap();
    let (code, stderr) = ws.build(&[]);
    assert_eq!(code, Some(0), "{stderr}");
    let report = ws.report();
    assert_eq!(action(&report, "build:tool"), "run");
    assert!(
        report["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["kind"] == "build")
            .all(|n| n["id"] == "build:tool" || n["action"] == "skip")
    );
    assert_eq!(
        docker(&["image", "inspect", "-f", "{{.Config.Labels.marker}}", &ws.reference("tool", "latest")]),
        "two"
    );
    let reason = report["nodes"].as_array().unwrap().iter().find(|n| n["id"] == "build:tool").unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.contains("base image") && reason.contains("moved"),
        "{reason}\n{}",
        String::from_utf8_lossy(&plan.stdout)
    );
}

#[test]
fn a_failing_test_moves_no_tag_and_blocks_the_rest() {
    let ws = family("fail");
    assert_eq!(ws.build(&[]).0, Some(0));
    let tested = image_id(&ws.reference("app", "2")).unwrap();
    ws.fixture.write("app.j2", "FROM PREFIX/base:latest\n{% if v.value == '2' %}RUN mkdir -p /app{% else %}RUN mkdir -p /app && echo {{ v }} > /app/v{{ v }}{% endif %}\n".replace("PREFIX", &ws.prefix).as_str());
    let (code, stderr) = ws.build(&[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("FAIL test:app/2/smoke"));
    let report = ws.report();
    assert_eq!(status(&report, "tag:app/2"), "blocked");
    assert_eq!(image_id(&ws.reference("app", "2")), Some(tested.clone()), "the old tag still names the tested image");
    assert_eq!(image_id(&ws.reference("app", "2.0")), Some(tested));
    assert_eq!(ws.test_images(), "", "no test image is left");
}

/// A loopback HTTP service answering "fail" to the first `failures` requests, then "ok".
fn counter_service(failures: usize) -> (u16, Arc<AtomicUsize>, mpsc::Receiver<usize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let (port, answered) = loopback_service(common::engine::engine_netns().as_deref(), move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        if n < failures { "fail" } else { "ok" }
    });
    (port, hits, answered)
}

#[test]
fn a_run_line_failing_twice_then_passing_is_flaky() {
    let (port, hits, _) = counter_service(2);
    let matrix = r#"
settings { name "NAME"; retries 2; backoff "100ms"; }
image "svc" {
    repository "PREFIX/svc"
    dockerfile "svc.j2"
    context "busybox"
    tag "latest"
    test "counter" network="host" {
        run "wget -qO- http://127.0.0.1:PORT/ | grep -qx ok"
    }
}
"#
    .replace("PORT", &port.to_string());
    let ws = EngineWorkspace::new("flaky", &matrix, &[("svc.j2", BASE)]);
    let (code, stderr) = ws.build(&["--junit", "junit.xml"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("FLAKY test:svc/counter"), "{stderr}");
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    assert_eq!(status(&ws.report(), "test:svc/counter"), "flaky");
    let junit = std::fs::read_to_string(ws.fixture.path("junit.xml")).unwrap();
    assert_eq!(junit.matches("<flakyFailure").count(), 2, "{junit}");
}

#[test]
fn ctrl_c_during_a_test_leaves_no_container_and_no_test_image() {
    let (port, _, started) = counter_service(0);
    let marker = unique("sleep-marker-");
    let matrix = r#"
settings { name "NAME"; retries 0; }
image "slow" {
    repository "PREFIX/slow"
    dockerfile "slow.j2"
    context "busybox"
    tag "latest"
    test "hang" network="host" {
        run "echo first layer"
        run "wget -qO- http://127.0.0.1:PORT/ && sleep 300 # MARKER"
    }
}
"#
    .replace("PORT", &port.to_string())
    .replace("MARKER", &marker);
    let ws = EngineWorkspace::new("cancel", &matrix, &[("slow.j2", BASE)]);
    let mut child = ws.trellis(&["build"]).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines =
        std::thread::spawn(move || BufReader::new(stderr).lines().map_while(Result::ok).collect::<Vec<_>>().join("\n"));
    started.recv_timeout(Duration::from_secs(120)).expect("the test layer reached the service");
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let code = child.wait().unwrap().code();
    let stderr = lines.join().unwrap();
    assert_eq!(code, Some(130), "{stderr}");
    let containers = docker(&["ps", "-a", "--no-trunc", "--format", "{{.Command}}"]);
    assert!(!containers.contains(&marker), "a test container was left:\n{containers}");
    assert_eq!(ws.test_images(), "", "no test image is left");
    assert_eq!(status(&ws.report(), "test:slow/hang"), "cancelled");
}

/// Two images: `app`, whose template each test writes, and `other`, which builds.
const APP_AND_OTHER: &str = r#"image "app" {
    repository "PREFIX/app"
    dockerfile "app.j2"
    context "busybox"
    tag "latest"
}
image "other" {
    repository "PREFIX/other"
    dockerfile "other.j2"
    context "busybox"
    tag "latest"
}
"#;

#[test]
fn pull_never_with_a_missing_base_fails_before_anything_builds() {
    let matrix = format!("settings {{ name \"NAME\"; pull \"never\"; }}\n{APP_AND_OTHER}");
    let ws = EngineWorkspace::new("pull", &matrix, &[("app.j2", "FROM PREFIX-ext/absent:1\n"), ("other.j2", BASE)]);
    let (code, stderr) = ws.build(&[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(&format!("{}-ext/absent:1", ws.prefix)) && stderr.contains("pull \"never\""), "{stderr}");
    assert_eq!(ws.images(), "", "nothing was built");
}

#[test]
fn a_push_to_the_authenticated_registry_serves_the_tested_image() {
    let ws = family("push");
    let config = docker_config(true);
    let push = |ws: &EngineWorkspace| {
        let output = ws
            .trellis(&["build", "--push", "--registry", "127.0.0.1:5000"])
            .env("DOCKER_CONFIG", config.path())
            .output()
            .unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (code, stderr) = push(&ws);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains(&registry_password()), "credentials never reach the output");
    let report = ws.report();
    let node = report["nodes"].as_array().unwrap().iter().find(|n| n["id"] == "push:app/1").unwrap().clone();
    let digest = ws_digest(&report, "push:app/1");
    let repository = format!("{}/app", ws.prefix);
    for tag in ["1", "1.0", "latest"] {
        assert_eq!(served_digest(&repository, tag), Some(digest.clone()), "{tag}");
    }
    let log = std::fs::read_to_string(ws.fixture.path(node["log"].as_str().unwrap())).unwrap();
    assert!(!log.contains(&registry_password()), "credentials never reach the logs");
    let (code, stderr) = push(&ws);
    assert_eq!(code, Some(0));
    assert!(stderr.contains("0 passed"), "an unchanged workspace pushes nothing:\n{stderr}");

    // Someone moves a tag in the registry: the store still says "pushed", the registry does
    // not, and the registry wins.
    let moved = format!("127.0.0.1:5000/{repository}:1.0");
    docker(&["tag", &image_id(&ws.reference("base", "latest")).unwrap(), &moved]);
    let pushed = Command::new("docker").arg("--config").arg(config.path()).args(["push", &moved]).output().unwrap();
    assert!(pushed.status.success(), "{}", String::from_utf8_lossy(&pushed.stderr));
    assert_ne!(served_digest(&repository, "1.0"), Some(digest.clone()));
    let (code, stderr) = push(&ws);
    assert_eq!(code, Some(0), "{stderr}");
    let report = ws.report();
    assert_eq!(action(&report, "push:app/1"), "run");
    let reason =
        report["nodes"].as_array().unwrap().iter().find(|n| n["id"] == "push:app/1").unwrap()["reason"].clone();
    assert_eq!(reason, format!("{moved} is served at another digest"));
    assert_eq!(action(&report, "push:app/2"), "skip");
    assert_eq!(served_digest(&repository, "1.0"), Some(digest));
}

fn ws_digest(report: &Value, id: &str) -> String {
    let node = report["nodes"].as_array().unwrap().iter().find(|n| n["id"] == id).unwrap();
    node["digest"].as_str().unwrap_or_else(|| panic!("{id} recorded no digest: {node}")).to_owned()
}

#[test]
fn a_push_without_credentials_fails_clearly_before_anything_builds() {
    let ws = family("noauth");
    let config = docker_config(false);
    let output = ws
        .trellis(&["build", "--push", "--registry", "127.0.0.1:5000", "--retries", "0"])
        .env("DOCKER_CONFIG", config.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "refused credentials are exit 3:\n{stderr}");
    assert!(stderr.contains("unauthorized: 127.0.0.1:5000 refused access without credentials"), "{stderr}");
    assert!(stderr.contains("docker login 127.0.0.1:5000"), "{stderr}");
    assert!(!ws.fixture.path(".trellis/runs").exists(), "the run stopped before anything ran");
    assert_eq!(image_id(&ws.reference("base", "latest")), None, "nothing was built");
    assert_eq!(served_digest(&format!("{}/base", ws.prefix), "latest"), None);
}

#[test]
fn a_registry_that_is_down_stops_a_pushing_run_before_anything_runs() {
    let ws = family("down");
    // A port nothing listens on: every attempt fails to connect.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let registry = format!("127.0.0.1:{closed}");
    let push = || {
        let output = ws
            .trellis(&["build", "--push", "--registry", &registry, "--retries", "1"])
            .env("DOCKER_CONFIG", docker_config(false).path())
            .output()
            .unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    // Nothing built yet: the registry is asked what it holds first, and its silence stops the
    // run before anything builds.
    let (code, stderr) = push();
    assert_eq!(code, Some(3), "a registry that cannot be reached is exit 3:\n{stderr}");
    assert!(stderr.contains(&format!("cannot reach the registry {registry} to push to")), "{stderr}");
    assert!(stderr.contains("nothing was run"), "{stderr}");
    assert_eq!(ws.images(), "", "nothing was built");
    // Built here, never pushed: the registry is asked whether it serves them already, and the
    // run stops the same way; what was built stays, untouched.
    assert_eq!(ws.build(&[]).0, Some(0));
    let sorted = |listing: String| {
        let mut ids: Vec<String> = listing.lines().map(str::to_owned).collect();
        ids.sort();
        ids
    };
    let built = sorted(ws.images());
    let (code, stderr) = push();
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains(&format!("cannot reach the registry {registry} to push to")), "{stderr}");
    assert!(!stderr.contains("START"), "nothing started:\n{stderr}");
    assert_eq!(sorted(ws.images()), built);
}

#[test]
fn clean_removes_images_no_variant_produces_and_keeps_the_rest() {
    let ws = family("clean");
    assert_eq!(ws.build(&[]).0, Some(0));
    let old = image_id(&ws.reference("app", "2")).unwrap();
    ws.fixture.write("app.j2", &format!("{}LABEL revision=2\n", APP.replace("PREFIX", &ws.prefix)));
    assert_eq!(ws.build(&[]).0, Some(0));
    let new = image_id(&ws.reference("app", "2")).unwrap();
    assert_ne!(old, new);
    assert!(!docker(&["image", "inspect", "-f", "{{.Id}}", &old]).is_empty(), "the old build is still there");
    let output = ws.trellis(&["clean"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(docker(&["image", "inspect", "-f", "{{.Id}}", &old]).is_empty(), "old builds go:\n{stdout}");
    assert_eq!(image_id(&ws.reference("app", "2")), Some(new), "current images stay");
    assert!(image_id(&ws.reference("base", "latest")).is_some());
    let again = ws.trellis(&["clean"]).output().unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("0 removed"));
}

#[test]
fn refresh_rebuilds_without_the_layer_cache_then_tests_and_tags() {
    let ws = family("refresh");
    assert_eq!(ws.build(&[]).0, Some(0));
    let before = image_id(&ws.reference("app", "1")).unwrap();
    let (code, stderr) = ws.build(&["--refresh", "app/1"]);
    assert_eq!(code, Some(0), "{stderr}");
    let report = ws.report();
    assert_eq!(action(&report, "build:app/1"), "run");
    assert_eq!(action(&report, "test:app/1/smoke"), "run");
    assert_eq!(action(&report, "build:base"), "skip", "a parent pulled in is not refreshed");
    assert!(
        report["nodes"].as_array().unwrap().iter().all(|n| !n["id"].as_str().unwrap().contains("app/2")),
        "not selected"
    );
    let node = report["nodes"].as_array().unwrap().iter().find(|n| n["id"] == "build:app/1").unwrap();
    let log = std::fs::read_to_string(ws.fixture.path(node["log"].as_str().unwrap())).unwrap();
    assert!(!log.contains("Using cache"), "built without the layer cache:\n{log}");
    let after = image_id(&ws.reference("app", "1")).unwrap();
    assert_ne!(before, after, "the refreshed image is new and carries the tags");
    assert_eq!(image_id(&ws.reference("app", "1.0")), Some(after));
}

/// Puts a busybox image marked `marker` into the test registry as `<prefix>-ext/busybox:1`
/// (with the docker CLI: setup, not under test), and removes its local tag.
fn registry_base(ws: &EngineWorkspace, marker: &str, config: &std::path::Path) -> String {
    external_base(ws, marker);
    let local = format!("{}-ext/busybox:1", ws.prefix);
    let remote = format!("127.0.0.1:5000/{local}");
    docker(&["tag", &local, &remote]);
    let pushed = Command::new("docker").args(["--config"]).arg(config).args(["push", &remote]).output().unwrap();
    assert!(pushed.status.success(), "{}", String::from_utf8_lossy(&pushed.stderr));
    docker(&["rmi", &remote]);
    remote
}

#[test]
fn pull_missing_fetches_a_base_and_pull_always_follows_it_when_it_moves() {
    let config = docker_config(true);
    let matrix = r#"
settings { name "NAME"; retries 0; pull "POLICY"; }
image "tool" {
    repository "PREFIX/tool"
    dockerfile "tool.j2"
    context "busybox"
    tag "latest"
}
"#;
    let with_policy = |policy: &str| matrix.replace("POLICY", policy);
    let ws = EngineWorkspace::new(
        "pulls",
        &with_policy("missing"),
        &[("tool.j2", "FROM 127.0.0.1:5000/PREFIX-ext/busybox:1\nRUN echo tool > /tool\n")],
    );
    let base = registry_base(&ws, "one", config.path());
    let run = |args: &[&str]| {
        let output = ws.trellis(args).env("DOCKER_CONFIG", config.path()).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.code(), text)
    };
    let (_, plan) = run(&["plan"]);
    assert!(plan.contains(&format!("base {base} is not in the engine yet: pulled first")), "{plan}");
    assert_eq!(image_id(&base), None, "a plan pulls nothing");

    let (code, stderr) = run(&["build"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains(&format!("pulling {base}")), "{stderr}");
    let marker = |reference: &str| docker(&["image", "inspect", "-f", "{{.Config.Labels.marker}}", reference]);
    assert_eq!(marker(&ws.reference("tool", "latest")), "one");

    // The registry's tag moves; "missing" keeps the base the engine has.
    let old = image_id(&base).unwrap();
    docker(&["tag", &old, &format!("{}-ext/keep:1", ws.prefix)]);
    let moved = registry_base(&ws, "two", config.path());
    assert_eq!(moved, base);
    docker(&["tag", &old, &base]);
    let (code, stderr) = run(&["build"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("pulling"), "{stderr}");
    assert_eq!(action(&ws.report(), "build:tool"), "skip");

    // "always" asks the registry every run: the moved base rebuilds its dependent.
    ws.fixture.write("matrix.kdl", &with_policy("always").replace("NAME", &ws.name).replace("PREFIX", &ws.prefix));
    let (code, stderr) = run(&["build"]);
    assert_eq!(code, Some(0), "{stderr}");
    let report = ws.report();
    assert_eq!(action(&report, "build:tool"), "run");
    assert_eq!(marker(&ws.reference("tool", "latest")), "two");
    let (code, stderr) = run(&["build"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(action(&ws.report(), "build:tool"), "skip", "pulled again, unchanged: nothing to rebuild");
}

#[test]
fn a_base_that_cannot_be_pulled_stops_the_run_before_anything_builds() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let matrix =
        format!("settings {{ name \"NAME\"; retries 1; backoff \"10ms\"; pull \"missing\"; }}\n{APP_AND_OTHER}");
    let from = format!("FROM 127.0.0.1:{closed}/PREFIX-ext/absent:1\n");
    let ws = EngineWorkspace::new("nopull", &matrix, &[("app.j2", &from), ("other.j2", BASE)]);
    let (code, stderr) = ws.build(&[]);
    assert_eq!(code, Some(3), "the registry is unreachable:\n{stderr}");
    assert!(stderr.contains("pulling") && stderr.contains("retrying"), "{stderr}");
    assert!(stderr.contains(&format!("cannot pull the external base 127.0.0.1:{closed}/{}-ext/absent:1", ws.prefix)));
    assert_eq!(ws.images(), "", "nothing was built");
}

#[test]
fn plan_asks_the_engine_and_a_removed_image_is_rebuilt() {
    let ws = family("gone");
    assert_eq!(ws.build(&[]).0, Some(0));
    let two = image_id(&ws.reference("app", "2")).unwrap();
    docker(&["rmi", "-f", &two]);
    let plan = ws.trellis(&["plan", "--json"]).output().unwrap();
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    let node = |id: &str| plan.as_array().unwrap().iter().find(|n| n["id"] == id).unwrap().clone();
    assert_eq!(node("build:app/2")["action"], "run");
    assert_eq!(node("build:app/2")["reason"], "its image is gone from the engine");
    assert_eq!(node("build:app/1")["action"], "skip");
    assert!(node("build:app/1")["reason"].as_str().unwrap().starts_with("image "), "{}", node("build:app/1"));
    assert_eq!(node("tag:app/2")["action"], "run");

    let (code, stderr) = ws.build(&[]);
    assert_eq!(code, Some(0), "{stderr}");
    let report = ws.report();
    assert_eq!(action(&report, "build:app/2"), "run");
    assert_eq!(action(&report, "build:app/1"), "skip");
    let plan = ws.trellis(&["plan", "--json"]).output().unwrap();
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    let pending: Vec<&Value> =
        plan.as_array().unwrap().iter().filter(|n| n["kind"] != "push" && n["action"] != "skip").collect();
    assert!(pending.is_empty(), "converged (no --push): {pending:?}");
}

/// Everything this process writes to stderr while `f` runs (fd 2 pointed at a pipe: nextest
/// runs each test in its own process).
fn stderr_of<T>(f: impl FnOnce() -> T) -> (T, String) {
    use std::io::Read as _;
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut fds = [0; 2];
    // SAFETY: plain POSIX calls on descriptors this function owns; fd 2 is restored before
    // returning.
    let saved = unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        let saved = libc::dup(2);
        libc::dup2(fds[1], 2);
        libc::close(fds[1]);
        saved
    };
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        // SAFETY: the read end is owned by this thread from here on.
        let mut pipe = unsafe { std::fs::File::from_raw_fd(fds[0]) };
        pipe.read_to_string(&mut text).unwrap();
        text
    });
    let value = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    // SAFETY: restores fd 2; the pipe's write end closes with it, ending the reader.
    unsafe {
        libc::dup2(saved, std::io::stderr().as_raw_fd());
        libc::close(saved);
    }
    let text = reader.join().unwrap();
    match value {
        Ok(value) => (value, text),
        Err(panic) => {
            eprintln!("stderr while it ran:\n{text}");
            std::panic::resume_unwind(panic)
        }
    }
}

#[test]
fn a_library_caller_runs_quietly_with_its_own_sink_and_the_next_run_skips_everything() {
    let ws = family("library");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let filters = vec!["app".to_owned()];
    let run = |events: &mut Vec<String>| {
        runtime.block_on(async {
            let mut workspace = trellis::Workspace::load(ws.fixture.path("matrix.kdl")).unwrap();
            let how = trellis::Attach { filters: filters.clone(), ..Default::default() };
            let backend = workspace.attach(how, &mut trellis::Quiet).await.unwrap();
            assert!(workspace.unresolved_bases(&filters).unwrap().is_empty(), "the selection needs no missing base");
            let plan = workspace.plan_on(&filters, Some(&backend)).unwrap();
            let config = trellis::RunConfig { filters: filters.clone(), ..Default::default() };
            let mut sink = |event: &trellis::Event<'_>| match event {
                trellis::Event::NodeFinished { node, .. } => events.push(format!("{} {}", node.status, node.id)),
                trellis::Event::Output { .. } => events.push("output".to_owned()),
                _ => {}
            };
            (plan, workspace.run(&config, &backend, &mut sink).await.unwrap())
        })
    };
    let mut events = Vec::new();
    let ((plan, outcome), stderr) = stderr_of(|| run(&mut events));
    assert_eq!(stderr, "", "the library printed");
    let ids: Vec<&str> = plan.iter().filter(|n| n.id.starts_with("build:")).map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["build:base", "build:app/1", "build:app/2"], "the parent is pulled in");
    assert!(outcome.summary.succeeded(), "{}", outcome.summary);
    assert!(events.contains(&"passed build:app/2".to_owned()), "{events:?}");
    assert!(events.contains(&"output".to_owned()), "build output reaches the sink: {events:?}");
    assert!(image_id(&ws.reference("app", "2.0")).is_some());
    assert!(image_id(&ws.reference("tool", "latest")).is_none(), "not selected");

    // The next run — by the library or the command — skips every node.
    let mut again = Vec::new();
    let ((_, second), stderr) = stderr_of(|| run(&mut again));
    assert_eq!(stderr, "");
    assert_eq!((second.summary.passed, second.summary.skipped), (0, second.nodes.len()), "{again:?}");
    let plan = ws.trellis(&["plan", "--json", "app"]).output().unwrap();
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert!(plan.as_array().unwrap().iter().all(|n| n["action"] == "skip"), "{plan:#}");
}

#[test]
fn a_wrong_registry_password_is_unauthorized_exit_3_before_anything_builds() {
    use base64::Engine as _;
    let ws = family("badauth");
    let config = tempfile::tempdir().unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("trellis:not-the-password");
    std::fs::write(
        config.path().join("config.json"),
        format!(r#"{{"auths": {{"127.0.0.1:5000": {{"auth": "{auth}"}}}}}}"#),
    )
    .unwrap();
    let output = ws
        .trellis(&["build", "--push", "--registry", "127.0.0.1:5000", "--retries", "2", "base"])
        .env("DOCKER_CONFIG", config.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("unauthorized: 127.0.0.1:5000 refused user `trellis`"), "{stderr}");
    assert!(stderr.contains("nothing was run"), "{stderr}");
    assert!(!ws.fixture.path(".trellis/runs").exists(), "the run stopped before anything ran");
    assert_eq!(image_id(&ws.reference("base", "latest")), None, "nothing was built");
}

#[test]
fn a_dockerfile_the_engine_cannot_parse_fails_once() {
    let ws = family("parse");
    ws.fixture.write("tool.j2", "FROM scratch\nFROOM nothing\n");
    let (code, stderr) = ws.build(&["--retries", "2", "tool"]);
    assert_eq!(code, Some(1), "{stderr}");
    let report = ws.report();
    let build = report["nodes"].as_array().unwrap().iter().find(|n| n["id"] == "build:tool").unwrap();
    assert_eq!(build["attempts"], 1, "a parse error is not retried: {build}\n{stderr}");
    assert!(stderr.to_lowercase().contains("unknown instruction"), "{stderr}");
    // A COPY of a file the context lacks fails the same way every time.
    ws.fixture.write("tool.j2", "FROM scratch\nCOPY not-there /x\n");
    let (code, stderr) = ws.build(&["--retries", "2", "tool"]);
    assert_eq!(code, Some(1), "{stderr}");
    let report = ws.report();
    let build = report["nodes"].as_array().unwrap().iter().find(|n| n["id"] == "build:tool").unwrap();
    assert_eq!(build["attempts"], 1, "a missing file is not retried: {build}\n{stderr}");
}

/// The first-contact defect: `clean` compared against keys computed without the engine, so
/// every image built on an external base looked orphaned and was removed.
#[test]
fn clean_keeps_every_current_image_and_removes_the_superseded_one() {
    let ws = family("clean");
    assert_eq!(ws.build(&[]).0, Some(0));
    let current: Vec<String> = ["base", "tool"]
        .iter()
        .map(|r| ws.reference(r, "latest"))
        .chain(["1", "2"].iter().map(|v| ws.reference("app", v)))
        .collect();
    let ids: Vec<String> = current.iter().map(|r| image_id(r).unwrap()).collect();
    let clean = ws.trellis(&["clean"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&clean.stdout);
    assert!(clean.status.success(), "{stdout}");
    assert!(stdout.contains("0 removed"), "{stdout}");
    for (reference, id) in current.iter().zip(&ids) {
        assert_eq!(image_id(reference).as_ref(), Some(id), "{reference} survives clean");
    }
    // An edit supersedes tool's image: clean removes that one alone.
    ws.fixture.write("tool.j2", &TOOL.replace("PREFIX", &ws.prefix).replace("echo tool", "echo tool2"));
    assert_eq!(ws.build(&[]).0, Some(0));
    let clean = ws.trellis(&["clean"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&clean.stdout);
    assert!(stdout.contains(&format!("removed {} (tool)", ids[1])), "{stdout}");
    assert!(stdout.contains("1 removed"), "{stdout}");
    for reference in &current {
        assert!(image_id(reference).is_some(), "{reference} survives clean");
    }
}

/// The first-contact defect: after `build --refresh base`, the children stayed on the old
/// parent for good.
#[test]
fn a_refreshed_parent_rebuilds_its_children_on_it() {
    let ws = family("refresh");
    assert_eq!(ws.build(&[]).0, Some(0));
    let (code, stderr) = ws.build(&["--refresh", "base"]);
    assert_eq!(code, Some(0), "{stderr}");
    let base = image_id(&ws.reference("base", "latest")).unwrap();
    let plan = ws.trellis(&["plan", "--json"]).output().unwrap();
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    let running: Vec<(&str, &str)> = plan
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["action"] == "run")
        .map(|n| (n["id"].as_str().unwrap(), n["reason"].as_str().unwrap()))
        .collect();
    let builds: Vec<&(&str, &str)> = running.iter().filter(|(id, _)| id.starts_with("build:")).collect();
    assert_eq!(builds.len(), 2, "{running:?}");
    for (id, reason) in builds {
        assert!(id.starts_with("build:app/"), "{running:?}");
        assert!(reason.contains("parent base was rebuilt"), "{reason}");
    }
    assert_eq!(ws.build(&[]).0, Some(0));
    // With either builder: the child's layers start with the refreshed base's (BuildKit's
    // images record no parent image, so `docker history` cannot tell).
    let layers = |reference: &str| docker(&["image", "inspect", "-f", "{{json .RootFS.Layers}}", reference]);
    let base_layers = layers(&base);
    for v in ["1", "2"] {
        let child = layers(&ws.reference("app", v));
        assert!(
            child.starts_with(base_layers.trim_end_matches(']')),
            "app/{v} stands on the refreshed base:\n{child}\n{base_layers}"
        );
    }
    let (code, stderr) = ws.build(&[]);
    assert_eq!(code, Some(0));
    assert!(!stderr.contains("START"), "converged:\n{stderr}");
}

/// The first-contact defect: a filtered build failed on a base only unselected images use.
#[test]
fn a_filtered_build_needs_only_the_bases_of_what_it_builds() {
    let ws = family("filtered");
    ws.fixture.write("tool.j2", &format!("FROM {}-absent/busybox:1\nRUN true\n", ws.prefix));
    let (code, stderr) = ws.build(&["app"]);
    assert_eq!(code, Some(0), "tool's missing base does not concern app:\n{stderr}");
    let (code, stderr) = ws.build(&[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("-absent/busybox:1"), "{stderr}");
}

/// An image built on top of a trellis image inherits its labels (key included). Found by a
/// new user: after an untag, trellis took such an image for its own build, tagged it without
/// testing it, and `clean` removed it.
#[test]
fn an_image_built_on_a_trellis_image_is_neither_taken_for_it_nor_cleaned() {
    let ws = family("derived");
    assert_eq!(ws.build(&[]).0, Some(0));
    let tool = ws.reference("tool", "latest");
    let genuine = image_id(&tool).unwrap();
    let dir = ws.fixture.path("derived");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), format!("FROM {tool}\nRUN echo derived > /derived\n")).unwrap();
    let derived_ref = format!("{}-derived/x:1", ws.prefix);
    let status = Command::new("docker")
        .args(["build", "-q", "-t", &derived_ref])
        .arg(&dir)
        .env("DOCKER_BUILDKIT", "0")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let derived = image_id(&derived_ref).unwrap();
    docker(&["rmi", &tool]);

    let (code, stderr) = ws.build(&[]);
    assert_eq!(code, Some(0), "{stderr}");
    let now = image_id(&tool).unwrap();
    assert_ne!(now, derived, "the derived image is not taken for trellis's build");
    // Rebuilt (the genuine image was hidden under its child) or the genuine one: either way
    // trellis's own, its key the same.
    let key = |id: &str| docker(&["image", "inspect", "-f", "{{index .Config.Labels \"dev.trellis.key\"}}", id]);
    assert_eq!(key(&now), key(&genuine));
    assert_eq!(docker(&["run", "--rm", &tool, "ls", "/derived"]), "", "not the derived image");

    let clean = ws.trellis(&["clean"]).output().unwrap();
    assert!(clean.status.success(), "{}", String::from_utf8_lossy(&clean.stderr));
    assert_eq!(image_id(&derived_ref), Some(derived.clone()), "clean keeps what others built on ours");
    docker(&["rmi", &derived_ref]);
}

/// The log of `node` in the last run.
fn last_log(ws: &EngineWorkspace, node: &str) -> String {
    let report = ws.report();
    let entry = report["nodes"].as_array().unwrap().iter().find(|n| n["id"] == node).unwrap().clone();
    std::fs::read_to_string(ws.fixture.path(entry["log"].as_str().expect("the node ran"))).unwrap()
}

#[test]
fn switching_the_builder_rebuilds_and_plan_names_it() {
    let with = |builder: &str| FAMILY.replace("retries 0", &format!("retries 0\n    builder \"{builder}\""));
    let ws =
        EngineWorkspace::new("builder", &with("classic"), &[("base.j2", BASE), ("app.j2", APP), ("tool.j2", TOOL)]);
    let (code, stderr) = ws.build(&["v=1"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(last_log(&ws, "build:app/1").contains("Step 1/"), "the classic builder's steps");

    let matrix = std::fs::read_to_string(ws.fixture.path("matrix.kdl")).unwrap();
    std::fs::write(ws.fixture.path("matrix.kdl"), matrix.replace("builder \"classic\"", "builder \"buildkit\""))
        .unwrap();
    let plan = ws.trellis(&["plan", "--json", "v=1"]).output().unwrap();
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    let node = |id: &str| plan.as_array().unwrap().iter().find(|n| n["id"] == id).unwrap().clone();
    for build in ["build:base", "build:app/1"] {
        assert_eq!(node(build)["action"], "run", "{build}");
        assert!(node(build)["reason"].as_str().unwrap().contains("builder changed"), "{}", node(build));
    }
    let (code, stderr) = ws.build(&["v=1"]);
    assert_eq!(code, Some(0), "{stderr}");
    let log = last_log(&ws, "build:app/1");
    assert!(!log.contains("Step 1/") && log.contains("DONE"), "BuildKit's steps:\n{log}");
    let tested =
        docker(&["image", "inspect", "-f", "{{index .Config.Labels \"dev.trellis.key\"}}", &ws.reference("app", "1")]);
    assert_eq!(tested, node("build:app/1")["key"].as_str().unwrap(), "the tag points at the BuildKit build");
    let (code, stderr) = ws.build(&["v=1"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("START"), "nothing ran:\n{stderr}");
    assert!(stderr.contains("— builder buildkit —"), "the run names its builder:\n{stderr}");

    // Back to classic. The engine lists no untagged image that others were built on, so the
    // classic base is not found and rebuilds (from the layer cache); the reasons say exactly
    // that — nothing about files that did not change — and the run converges.
    std::fs::write(ws.fixture.path("matrix.kdl"), matrix).unwrap();
    let plan = ws.trellis(&["plan", "--json", "v=1"]).output().unwrap();
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    let reasons: Vec<(&str, &str)> = (plan.as_array().unwrap().iter())
        .filter(|n| n["action"] == "run")
        .map(|n| (n["id"].as_str().unwrap(), n["reason"].as_str().unwrap()))
        .collect();
    let expected = [
        ("build:base", "builder changed"),
        ("tag:base", "not every reference points at the image"),
        ("build:app/1", "build:base re-runs"),
        ("test:app/1/smoke", "build:app/1 re-runs"),
        ("tag:app/1", "not every reference points at the image"),
    ];
    assert_eq!(reasons, expected);
    let (code, stderr) = ws.build(&["v=1"]);
    assert_eq!(code, Some(0), "{stderr}");
    let (_, stderr) = ws.build(&["v=1"]);
    assert!(!stderr.contains("START"), "converged:\n{stderr}");
}

#[test]
fn clean_takes_a_leftover_test_tag_off_and_keeps_the_image() {
    let ws = family("leftover");
    let (code, stderr) = ws.build(&["base"]);
    assert_eq!(code, Some(0), "{stderr}");
    let base = image_id(&ws.reference("base", "latest")).unwrap();
    // What a BuildKit test killed with -9 leaves: its temporary tag on the image under test.
    let leftover = format!("{}:{}", trellis_docker::TEST_BASE_REPOSITORY, ws.name);
    docker(&["tag", &base, &leftover]);
    docker(&["rmi", &ws.reference("base", "latest")]);
    assert_eq!(image_id(&leftover), Some(base.clone()), "only the leftover tag names the image now");
    let output = ws.trellis(&["clean"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains(&format!("untagged {leftover}")), "{stdout}");
    assert_eq!(image_id(&leftover), None, "the tag is gone");
    assert!(docker(&["image", "inspect", "-f", "{{.Id}}", &base]).starts_with("sha256:"), "the image stays");
}

/// `(status, check)` of each finding `trellis doctor` printed, in order.
fn doctor_checks(text: &str) -> Vec<(String, String)> {
    (text.lines())
        .filter(|line| !line.starts_with(' ') && line.len() > 6 && line.as_bytes()[4] == b' ')
        .filter_map(|line| {
            let (status, rest) = line.split_once(' ')?;
            let check = rest.trim_start().get(..12)?.trim_end();
            Some((status.to_owned(), check.to_owned()))
        })
        .collect()
}

#[test]
fn doctor_says_what_it_found_as_the_readme_shows() {
    let config = docker_config(true);
    let dir = tempfile::tempdir().unwrap();
    let doctor = |host: Option<&str>, args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_trellis"));
        command.arg("doctor").args(args).current_dir(dir.path()).env("DOCKER_CONFIG", config.path());
        if let Some(host) = host {
            command.env("DOCKER_HOST", host);
        }
        let output = command.output().unwrap();
        (output.status.code(), String::from_utf8(output.stdout).unwrap())
    };
    // This engine and the registry, as README's "Engines and image stores" shows them.
    let (code, text) = doctor(None, &["--registry", "127.0.0.1:5000"]);
    assert_eq!(code, Some(0), "{text}");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let shown = readme.split("$ trellis doctor\n").nth(1).and_then(|rest| rest.split("```").next()).unwrap();
    assert_eq!(doctor_checks(&text), doctor_checks(shown), "{text}");
    assert!(text.ends_with("a build would work here\n"), "{text}");
    let store = if containerd_store() { "containerd image store" } else { "classic image store" };
    assert!(text.contains(store), "{text}");
    let (code, json) = doctor(None, &["--registry", "127.0.0.1:5000", "--json"]);
    assert_eq!(code, Some(0));
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["checks"].as_array().unwrap().len(), doctor_checks(&text).len());

    // No engine: exit 3, and what to do.
    let (code, text) = doctor(Some("unix:///nonexistent/docker.sock"), &[]);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.starts_with("FAIL  engine"), "{text}");
    assert!(text.contains("fix: start the engine"), "{text}");
    // Credentials the registry refuses: exit 3, naming the fix.
    let refused = docker_config(false);
    let output = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(["doctor", "--registry", "127.0.0.1:5000"])
        .current_dir(dir.path())
        .env("DOCKER_CONFIG", refused.path())
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(3), "{text}");
    assert!(text.contains("FAIL  registry     127.0.0.1:5000 refuses without credentials"), "{text}");
    assert!(text.contains("docker login 127.0.0.1:5000"), "{text}");
    // A registry that does not answer is the registry's fault, not the engine's.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = format!("127.0.0.1:{}", closed.local_addr().unwrap().port());
    drop(closed);
    let (code, text) = doctor(None, &["--registry", &nobody]);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains(&format!("FAIL  registry     {nobody} does not answer")), "{text}");
    assert!(!text.contains("Docker engine"), "{text}");
    // A workspace that cannot be read: exit 2, and no word on a registry it would name.
    std::fs::write(dir.path().join("matrix.kdl"), "settings {\n    compression \"xz\"\n}\n").unwrap();
    let (code, text) = doctor(None, &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.starts_with("FAIL  workspace"), "{text}");
    assert!(!text.contains("registry") && !text.contains("compression"), "{text}");
    // zstd on an engine that cannot pull it back (older than Docker 23): a warning.
    std::fs::write(
        dir.path().join("matrix.kdl"),
        "settings {\n    name \"doctor\"\n    compression \"zstd\"\n}\nimage \"a\" {\n    repository \"doctor/a\"\n    dockerfile \"a.j2\"\n    tag \"latest\"\n}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("a.j2"), "FROM scratch\n").unwrap();
    let (code, text) = doctor(None, &[]);
    assert_eq!(code, Some(0), "{text}");
    let api = Command::new("docker").args(["version", "--format", "{{.Server.APIVersion}}"]).output().unwrap();
    let api = String::from_utf8(api.stdout).unwrap();
    let minor: u32 = api.trim().strip_prefix("1.").and_then(|m| m.parse().ok()).expect("the engine's API version");
    let old_engine = minor < 42;
    assert_eq!(text.contains("cannot pull zstd layers back"), old_engine, "{text}");
}
