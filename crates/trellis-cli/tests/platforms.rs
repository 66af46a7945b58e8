//! Two-platform families end to end on the real engine and registry: linux/amd64 natively and
//! linux/arm64 under qemu (`cargo xtask engine` registers it; `cargo xtask test` fetches
//! Debian's arm64 busybox). What was pushed is read back with skopeo, never with trellis's
//! own code. The images are tiny: emulation is slow, and each test pays for it.

mod common;

use std::path::Path;
use std::process::Command;

use common::engine::*;
use serde_json::Value;

const PLATFORMS: &str = r#"
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
    tag "{{ v }}.0"
    tag "latest" float=#true
    test "arch" {
        run "test \"$(uname -m)\" = \"$(cat /arch)\""
    }
}
"#;

const APP: &str = "FROM PREFIX/base:latest\nRUN uname -m > /arch && echo {{ v }} > /v\n";

fn build_and_push(ws: &EngineWorkspace, config: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let output = ws
        .trellis(&[&["build", "--push", "--registry", "127.0.0.1:5000"], extra].concat())
        .env("DOCKER_CONFIG", config)
        .output()
        .unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// The bytes `skopeo inspect --raw` reads for a reference in the test registry.
fn raw_bytes(reference: &str) -> Option<Vec<u8>> {
    let output = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", "--creds", &format!("trellis:{}", registry_password())])
        .arg(format!("docker://127.0.0.1:5000/{reference}"))
        .output()
        .expect("skopeo (`cargo xtask engine` installs it)");
    output.status.success().then_some(output.stdout)
}

/// The manifest a reference serves.
fn raw_manifest(reference: &str) -> Option<Value> {
    raw_bytes(reference).map(|bytes| serde_json::from_slice(&bytes).unwrap())
}

/// The tags the registry holds for a repository.
fn registry_tags(repository: &str) -> Vec<String> {
    let output = Command::new("skopeo")
        .args(["list-tags", "--tls-verify=false", "--creds", &format!("trellis:{}", registry_password())])
        .arg(format!("docker://127.0.0.1:5000/{repository}"))
        .output()
        .unwrap();
    let listed: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    // trellis's records (`sha256-<digest>.trellis`, docs/ci.md) are not references.
    let mut tags: Vec<String> = (listed["Tags"].as_array().into_iter().flatten())
        .map(|t| t.as_str().unwrap().to_owned())
        .filter(|t| !t.ends_with(".trellis"))
        .collect();
    tags.sort();
    tags
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(bytes);
    format!("sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// The digest of what a reference serves, computed from the bytes skopeo read.
fn served(reference: &str) -> Option<String> {
    raw_bytes(reference).map(|bytes| sha256(&bytes))
}

/// The image ID each platform's entry of an index names: its config digest (classic image
/// store), or the entry's own digest (containerd store: the image pushed as stored).
fn index_images(repository: &str, index: &Value) -> Vec<(String, String)> {
    let mut images = Vec::new();
    for entry in index["manifests"].as_array().unwrap() {
        let platform = format!(
            "{}/{}",
            entry["platform"]["os"].as_str().unwrap(),
            entry["platform"]["architecture"].as_str().unwrap()
        );
        let digest = entry["digest"].as_str().unwrap();
        let manifest = raw_manifest(&format!("{repository}@{digest}")).unwrap();
        let image = match containerd_store() {
            true => digest,
            false => manifest["config"]["digest"].as_str().unwrap(),
        };
        images.push((platform, image.to_owned()));
    }
    images
}

/// The nodes a run ran, renders aside (a copied workspace renders again).
fn nodes_run(report: &Value) -> Vec<String> {
    (report["nodes"].as_array().unwrap().iter())
        .filter(|n| n["action"] == "run" && n["kind"] != "render")
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect()
}

fn node<'r>(report: &'r Value, id: &str) -> &'r Value {
    report["nodes"].as_array().unwrap().iter().find(|n| n["id"] == id).unwrap_or_else(|| panic!("no node {id}"))
}

#[test]
fn two_platforms_are_built_tested_and_pushed_as_one_index_under_every_reference() {
    let ws = two_platform_workspace("platforms", PLATFORMS, APP);
    let config = docker_config(true);
    let junit = ws.fixture.path("junit.xml");
    let (code, stderr) = build_and_push(&ws, config.path(), &["--junit", junit.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    let report = ws.report();

    // One build and one test per platform, each recorded with its platform.
    for platform in ["linux/amd64", "linux/arm64"] {
        let build = node(&report, &format!("build:app/1@{platform}"));
        assert_eq!(build["status"], "passed");
        assert_eq!(build["platform"], platform);
        let image = build["image"].as_str().unwrap();
        let inspected = docker(&["image", "inspect", "-f", "{{.Os}}/{{.Architecture}}", image]);
        assert_eq!(inspected, platform, "the {platform} build made a {platform} image");
        assert_eq!(node(&report, &format!("test:app/1/arch@{platform}"))["status"], "passed");
    }
    let junit = std::fs::read_to_string(junit).unwrap();
    assert!(junit.contains("name=\"arch [linux/arm64]\""), "the platform is in the test case name:\n{junit}");

    // Every reference serves one index of the two tested images; nothing else is tagged.
    let app = format!("{}/app", ws.prefix);
    let index = raw_manifest(&format!("{app}:1")).expect("app:1 is served");
    assert_eq!(index["mediaType"], "application/vnd.oci.image.index.v1+json");
    let expected: Vec<(String, String)> = ["linux/amd64", "linux/arm64"]
        .iter()
        .map(|p| (p.to_string(), node(&report, &format!("build:app/1@{p}"))["image"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(index_images(&app, &index), expected, "the index names the tested images");
    let digest = served(&format!("{app}:1")).unwrap();
    assert_eq!(node(&report, "push:app/1")["digest"], digest.as_str());
    assert_eq!(served(&format!("{app}:1.0")), Some(digest.clone()), "every alias serves the same index");
    assert_eq!(registry_tags(&app), ["1", "1.0", "2", "2.0", "latest"], "no temporary tags in the registry");
    // The axis is unsorted: `latest` floats to the first value written.
    assert_eq!(served(&format!("{app}:latest")), Some(digest.clone()));

    // Locally the references name the engine's own platform's image; the other stays, labelled.
    let local = docker(&["image", "inspect", "-f", "{{.Id}}", &ws.reference("app", "1")]);
    assert_eq!(local, expected[0].1);
    let label =
        docker(&["image", "inspect", "-f", "{{index .Config.Labels \"dev.trellis.platform\"}}", &expected[1].1]);
    assert_eq!(label, "linux/arm64");

    // A second run does nothing: every build, test, tag and push is up to date.
    let (code, stderr) = build_and_push(&ws, config.path(), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let report = ws.report();
    let ran = nodes_run(&report);
    assert!(ran.is_empty(), "the second run ran {ran:?}\n{stderr}");

    // The platforms written in the other order: the same images, the same indexes.
    let matrix = std::fs::read_to_string(ws.fixture.path("matrix.kdl")).unwrap();
    let swapped = matrix.replace("\"linux/amd64\" \"linux/arm64\"", "\"linux/arm64\" \"linux/amd64\"");
    assert_ne!(swapped, matrix);
    std::fs::write(ws.fixture.path("matrix.kdl"), swapped).unwrap();
    let (code, stderr) = build_and_push(&ws, config.path(), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let report = ws.report();
    let ran = nodes_run(&report);
    assert!(ran.is_empty(), "reordering the platforms ran {ran:?}\n{stderr}");
    assert_eq!(served(&format!("{app}:1")), Some(digest.clone()));

    // The arm64 image, pulled by platform from the registry, runs under emulation. Last: the
    // pulled tag is then the arm64 image's only one, and the workspace's cleanup removes both.
    let pulled = format!("127.0.0.1:5000/{app}:1");
    let pull = Command::new("docker")
        .args(["pull", "--platform", "linux/arm64", &pulled])
        .env("DOCKER_CONFIG", config.path())
        .output()
        .unwrap();
    assert!(pull.status.success(), "{}", String::from_utf8_lossy(&pull.stderr));
    // The classic store names the pulled tag by the arm64 image; the containerd store by the
    // index it serves, whose arm64 entry is that image (checked above).
    let named = if containerd_store() { &digest } else { &expected[1].1 };
    assert_eq!(&docker(&["image", "inspect", "-f", "{{.Id}}", &pulled]), named, "the tested arm64 image");
    assert_eq!(docker(&["run", "--rm", "--platform", "linux/arm64", &pulled, "cat", "/arch"]), "aarch64");
}

#[test]
fn a_test_failing_on_one_platform_keeps_its_variant_from_being_tagged_or_pushed() {
    let matrix = PLATFORMS.replace(
        "run \"test \\\"$(uname -m)\\\" = \\\"$(cat /arch)\\\"\"",
        "run \"test \\\"$(uname -m)\\\" != aarch64 || test {{ v }} != 2\"",
    );
    assert_ne!(matrix, PLATFORMS);
    let ws = two_platform_workspace("platform-fails", &matrix, APP);
    let config = docker_config(true);
    let (code, stderr) = build_and_push(&ws, config.path(), &[]);
    assert_eq!(code, Some(1), "{stderr}");
    let report = ws.report();
    assert_eq!(node(&report, "test:app/2/arch@linux/arm64")["status"], "failed");
    assert_eq!(node(&report, "test:app/2/arch@linux/amd64")["status"], "passed");
    for blocked in ["tag:app/2", "push:app/2"] {
        assert_eq!(node(&report, blocked)["status"], "blocked", "{blocked}");
    }
    assert_eq!(node(&report, "push:app/1")["status"], "passed");
    let app = format!("{}/app", ws.prefix);
    assert_eq!(registry_tags(&app), ["1", "1.0", "latest"], "app/2 is not pushed");
    assert_eq!(image_id(&ws.reference("app", "2")), None, "nor tagged locally");
    assert!(image_id(&ws.reference("app", "1")).is_some());
}

#[test]
fn a_platform_the_engine_cannot_run_exits_3_before_anything_runs() {
    let ws = two_platform_workspace("no-emulator", PLATFORMS, APP);
    let no_handlers = tempfile::tempdir().unwrap();
    let output = ws.trellis(&["build"]).env("TRELLIS_BINFMT_MISC", no_handlers.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("cannot run linux/arm64"), "names the platform: {stderr}");
    assert!(stderr.contains("qemu-user-static"), "says how to install it: {stderr}");
    assert_eq!(ws.images(), "", "nothing was built");
}

/// The classic builder gets BuildKit's platform args too: one Dockerfile serves both builders.
#[test]
fn the_classic_builder_gets_the_platform_build_args() {
    let matrix = PLATFORMS
        .replace("platforms \"linux/amd64\" \"linux/arm64\"", "platforms \"linux/amd64\"\n    builder \"classic\"");
    let base = "FROM scratch\nLABEL e2e=NAME\nCOPY busybox-amd64 /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n";
    let app = "FROM PREFIX/base:latest\nARG TARGETPLATFORM\nARG TARGETARCH\nRUN echo \"$TARGETPLATFORM $TARGETARCH\" > /platform && uname -m > /arch\n";
    let ws = two_platform_workspace("classic-platform", &matrix, app);
    std::fs::write(ws.fixture.path("base.j2"), base.replace("NAME", &ws.name)).unwrap();
    let (code, stderr) = ws.build(&["app/1"]);
    assert_eq!(code, Some(0), "{stderr}");
    let image = ws.reference("app", "1");
    assert_eq!(docker(&["run", "--rm", &image, "cat", "/platform"]), "linux/amd64 amd64");
}

/// A loopback proxy in front of the test registry that goes down — drops the connection and
/// every later one — at its first request putting a manifest under a tag, until `up` is set
/// again: the registry failing after the per-platform pushes, before any index. It goes down
/// once.
struct FlakyRegistry {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FlakyRegistry {
    fn start() -> Self {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let armed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let state = up.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !state.load(Ordering::SeqCst) {
                    continue; // down: the connection is dropped at once
                }
                let (state, armed) = (state.clone(), armed.clone());
                std::thread::spawn(move || forward(client, state, armed));
            }
        });
        Self { port, up }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Copies one connection both ways; a request line putting a manifest by tag takes the
/// registry down instead of reaching it.
fn forward(
    client: std::net::TcpStream,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let Ok(server) = std::net::TcpStream::connect("127.0.0.1:5000") else { return };
    let (mut from_client, mut to_server) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let (mut from_server, mut to_client) = (server, client);
    std::thread::spawn(move || std::io::copy(&mut from_server, &mut to_client));
    let mut buffer = vec![0; 64 * 1024];
    while let Ok(n) = from_client.read(&mut buffer) {
        let chunk = &buffer[..n];
        let text = String::from_utf8_lossy(chunk);
        let tag_put =
            text.lines().any(|l| l.starts_with("PUT /v2/") && l.contains("/manifests/") && !l.contains("sha256:"));
        if tag_put && armed.swap(false, Ordering::SeqCst) {
            up.store(false, Ordering::SeqCst);
        }
        if n == 0 || !up.load(Ordering::SeqCst) {
            let _ = to_server.shutdown(std::net::Shutdown::Both);
            let _ = from_client.shutdown(std::net::Shutdown::Both);
            return;
        }
        if to_server.write_all(chunk).is_err() {
            return;
        }
    }
}

/// The registry failing between the per-platform pushes and the indexes leaves no reference
/// moved: nothing half-visible. The next run pushes the indexes and converges.
#[test]
fn a_registry_down_before_the_index_moves_no_reference_and_the_next_run_converges() {
    use base64::Engine as _;
    let ws = two_platform_workspace("platform-fault", PLATFORMS, APP);
    let registry = FlakyRegistry::start();
    let config = tempfile::tempdir().unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("trellis:{}", registry_password()));
    let auths = format!(r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#, registry.host());
    std::fs::write(config.path().join("config.json"), auths).unwrap();
    let push = |args: &[&str]| {
        let output = ws
            .trellis(&[&["build", "--push", "--registry", &registry.host(), "--retries", "0"], args].concat())
            .env("DOCKER_CONFIG", config.path())
            .output()
            .unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
    };

    // Only base: its two platform images reach the registry, then it goes down.
    let (code, stderr) = push(&["base"]);
    assert_ne!(code, Some(0), "{stderr}");
    let report = ws.report();
    assert_eq!(node(&report, "push:base")["status"], "failed", "{stderr}");
    let base = format!("{}/base", ws.prefix);
    assert_eq!(registry_tags(&base), Vec::<String>::new(), "no reference moved");
    let pushed_by_digest =
        ["linux/amd64", "linux/arm64"].map(|p| node(&report, &format!("build:base@{p}"))["image"].clone());
    assert!(pushed_by_digest.iter().all(Value::is_string));

    // Back up: the next run pushes only what is missing, and every reference serves the index.
    registry.up.store(true, std::sync::atomic::Ordering::SeqCst);
    let (code, stderr) = push(&["base"]);
    assert_eq!(code, Some(0), "{stderr}");
    let report = ws.report();
    assert_eq!(action(&report, "build:base@linux/arm64"), "skip", "the images were kept");
    assert_eq!(registry_tags(&base), ["latest"]);
    let index = raw_manifest(&format!("{base}:latest")).unwrap();
    let images: Vec<String> = index_images(&base, &index).into_iter().map(|(_, id)| id).collect();
    assert_eq!(images, pushed_by_digest.map(|v| v.as_str().unwrap().to_owned()));
}

/// An external base served as an index of both platforms: each platform's build stands on
/// that platform's image of it, pulled by digest (the engine's tag names one platform's), and
/// a second run finds them again without pulling or rebuilding.
#[test]
fn an_external_base_is_resolved_per_platform() {
    // The base, published by another workspace (setup: any tool that pushes an index would do).
    let publisher = PLATFORMS.replace("tag \"latest\"\n}", "tag \"1\"\n}");
    let ext_base = format!("{PLATFORM_BASE}RUN echo $TARGETARCH > /marker\n");
    let ext = two_platform_workspace("platform-ext", &publisher.replace("PREFIX/base", "PREFIX-ext/base"), APP);
    std::fs::write(ext.fixture.path("base.j2"), ext_base.replace("NAME", &ext.name)).unwrap();
    let config = docker_config(true);
    let (code, stderr) = build_and_push(&ext, config.path(), &["base"]);
    assert_eq!(code, Some(0), "{stderr}");

    let matrix = r#"
settings {
    name "NAME"
    retries 0
    pull "missing"
    platforms "linux/amd64" "linux/arm64"
}
image "app" {
    repository "PREFIX/app"
    dockerfile "app.j2"
    context "busybox"
    tag "latest"
    test "on-its-platform" {
        run "test \"$(cat /from-base)\" = \"$(uname -m | sed 's/x86_64/amd64/; s/aarch64/arm64/')\""
    }
}
"#;
    let app = format!("FROM 127.0.0.1:5000/{}-ext/base:1\nRUN cp /marker /from-base\n", ext.prefix);
    let ws = two_platform_workspace("platform-ext-user", matrix, &app);
    let build = |ws: &EngineWorkspace| {
        let output = ws.trellis(&["build"]).env("DOCKER_CONFIG", config.path()).output().unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (code, stderr) = build(&ws);
    assert_eq!(code, Some(0), "{stderr}");
    let report = ws.report();
    for (platform, arch) in [("linux/amd64", "amd64"), ("linux/arm64", "arm64")] {
        assert_eq!(node(&report, &format!("test:app/on-its-platform@{platform}"))["status"], "passed");
        let image = node(&report, &format!("build:app@{platform}"))["image"].as_str().unwrap().to_owned();
        let from_base = docker(&["run", "--rm", "--platform", platform, &image, "cat", "/from-base"]);
        assert_eq!(from_base, arch, "the {platform} build stood on the base's {platform} image");
    }
    let local = format!("127.0.0.1:5000/{}-ext/base:1", ext.prefix);
    let tagged = docker(&["image", "inspect", "-f", "{{.Architecture}}", &local]);
    assert_eq!(tagged, "amd64", "the engine's tag still names its own platform's image");

    let (code, stderr) = build(&ws);
    assert_eq!(code, Some(0), "{stderr}");
    let report = ws.report();
    let ran = nodes_run(&report);
    assert!(ran.is_empty(), "the second run ran {ran:?}\n{stderr}");
    docker(&["rmi", &local]);
}
