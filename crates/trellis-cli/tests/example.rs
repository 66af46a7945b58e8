//! examples/decoupled-runtime end to end on the real engine: a code-only image, a runtime per
//! Node.js version, every runtime tested with the code. Its runtimes build on this repository's
//! Node.js images, which the test first builds and pushes with the repository's own workspace
//! (filtered to the versions it needs; `cargo xtask test` prepares their inputs). The example's
//! compose.yaml then runs the code on a runtime with Debian's docker-compose, as the article does.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::engine::*;

const REPOSITORY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// The repository's `node/<version>/trixie` images, built, tested and pushed to the local
/// registry (up to date within seconds when they already are).
fn node_images(versions: &[&str]) {
    let root = Path::new(REPOSITORY);
    let filters: Vec<String> = versions.iter().map(|v| format!("node/{v}/trixie")).collect();
    let output = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(["build", "--push"])
        .args(&filters)
        .current_dir(root)
        .env("DOCKER_CONFIG", root.join(".cache/engine/docker"))
        .env("NO_COLOR", "1")
        .env_remove("TRELLIS_ENGINE")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the repository's Node.js images (inputs from `cargo xtask build` or `cargo xtask test`):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `trellis build` of the example, with the registry's credentials: its runtimes' bases are
/// pulled from the registry when the engine does not hold them (a fresh engine, on which the
/// repository's images were published from another).
fn build(ws: &EngineWorkspace) -> (Option<i32>, String) {
    let docker_config = Path::new(REPOSITORY).join(".cache/engine/docker");
    let output = ws.trellis(&["build"]).env("DOCKER_CONFIG", docker_config).output().unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

fn node_log(ws: &EngineWorkspace, report: &serde_json::Value, id: &str) -> String {
    let node = report["nodes"].as_array().unwrap().iter().find(|n| n["id"] == id).unwrap();
    std::fs::read_to_string(ws.fixture.path(node["log"].as_str().unwrap())).unwrap()
}

fn reason(report: &serde_json::Value, id: &str) -> String {
    let node = report["nodes"].as_array().unwrap().iter().find(|n| n["id"] == id).unwrap();
    node["reason"].as_str().unwrap().to_owned()
}

/// The example's compose.yaml brought up as a project of its own (`-p`), so parallel tests
/// cannot collide; `down -v` on drop, also when the test fails, removes its containers and the
/// code container's /app volume.
struct ComposeProject {
    project: String,
    file: PathBuf,
    env: Vec<(&'static str, String)>,
}

impl ComposeProject {
    fn new(ws: &EngineWorkspace, env: &[(&'static str, String)]) -> Self {
        Self { project: ws.name.clone(), file: ws.fixture.path("compose.yaml"), env: env.to_vec() }
    }

    fn compose(&self, args: &[&str]) -> String {
        let output = Command::new("docker-compose")
            .args(["--no-ansi", "-p", &self.project, "-f"])
            .arg(&self.file)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("docker-compose (cargo xtask engine installs it)");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "docker-compose {}:\n{stdout}{stderr}", args.join(" "));
        stdout
    }

    fn up(&self) {
        self.compose(&["up", "-d"]);
    }

    /// The ID of the container compose made for `service`.
    fn container(&self, service: &str) -> String {
        // `-a`: the code container has exited (compose v2 lists running ones without it).
        let id = self.compose(&["ps", "-a", "-q", service]);
        assert!(!id.trim().is_empty(), "no container for {service}");
        id.trim().to_owned()
    }

    /// Every container, volume and network of this project the engine still has.
    fn leftovers(&self, volumes: &[String]) -> String {
        let label = format!("label=com.docker.compose.project={}", self.project);
        let mut left = docker(&["ps", "-aq", "--filter", &label]);
        left += &docker(&["network", "ls", "-q", "--filter", &label]);
        for volume in volumes {
            left += &docker(&["volume", "ls", "-q", "--filter", &format!("name=^{volume}$")]);
        }
        left
    }
}

impl Drop for ComposeProject {
    fn drop(&mut self) {
        let _ = Command::new("docker-compose")
            .args(["--no-ansi", "-p", &self.project, "-f"])
            .arg(&self.file)
            .args(["down", "-v", "--remove-orphans", "--timeout", "5"])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output();
    }
}

/// A port on 127.0.0.1 nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One `GET /` to 127.0.0.1:`port` where the engine's host network is (the machine's, or the
/// engine's own network namespace): the body, or `None` while nothing answers there.
fn get(port: u16) -> Option<String> {
    std::thread::spawn(move || {
        if let Some(netns) = engine_netns() {
            enter_netns(&netns);
        }
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(stream, "GET / HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
    })
    .join()
    .ok()
    .flatten()
}

/// Asks the app until it answers `expected`: a container's start-up (npm, then node) has no
/// event to wait on. Fails after a minute with the last answer and the app's log.
fn wait_for_answer(compose: &ComposeProject, port: u16, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    while Instant::now() < deadline {
        last = get(port);
        if last.as_deref() == Some(expected) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "127.0.0.1:{port} answered {last:?}, not {expected:?}; the app's log:\n{}",
        compose.compose(&["logs", "app"])
    );
}

#[test]
fn a_new_runtime_rebuilds_only_runtimes_and_new_code_only_reruns_their_tests() {
    node_images(&["24.11.1", "22.19.0", "22.20.0"]);
    let ws = EngineWorkspace::copy_of(
        "decoupled",
        &Path::new(REPOSITORY).join("examples/decoupled-runtime"),
        &[("name \"decoupled-runtime\"", "name \"NAME\""), ("decoupled/", "PREFIX/")],
    );
    let (code, stderr) = build(&ws);
    assert_eq!(code, Some(0), "{stderr}");
    let report = ws.report();
    for version in ["24.11.1", "22.19.0"] {
        let id = format!("test:runtime/{version}/app");
        assert_eq!(status(&report, &id), "passed");
        let log = node_log(&ws, &report, &id);
        assert!(log.contains(&format!("I am running nodejs version: v{version}")), "{log}");
    }
    let code_image = image_id(&ws.reference("code", "1.0.0")).unwrap();

    // The article's demo: compose runs the code container's /app on `runtime:22`.
    let port = free_port();
    let compose = ComposeProject::new(
        &ws,
        &[
            ("CODE", ws.reference("code", "1.0.0")),
            ("RUNTIME", ws.reference("runtime", "22")),
            ("PORT", port.to_string()),
        ],
    );
    compose.up();
    wait_for_answer(&compose, port, "I am running nodejs version: v22.19.0\n");
    let code_container = compose.container("code");
    let app_container = compose.container("app");
    let volumes: Vec<String> = docker(&["inspect", "-f", "{{range .Mounts}}{{.Name}} {{end}}", &code_container])
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(volumes.len(), 1, "the code container has one volume, /app");

    // A Node.js security release: 22.19.0 → 22.20.0.
    let matrix = std::fs::read_to_string(ws.fixture.path("matrix.kdl")).unwrap();
    ws.fixture.write("matrix.kdl", &matrix.replace("\"22.19.0\"", "\"22.20.0\""));
    let (code, stderr) = build(&ws);
    assert_eq!(code, Some(0), "{stderr}");
    let report = ws.report();
    for id in ["build:code", "tag:code", "build:runtime/24.11.1", "test:runtime/24.11.1/app"] {
        assert_eq!(action(&report, id), "skip", "{id}");
    }
    assert_eq!(action(&report, "build:runtime/22.20.0"), "run");
    assert_eq!(status(&report, "test:runtime/22.20.0/app"), "passed");
    assert!(node_log(&ws, &report, "test:runtime/22.20.0/app").contains("I am running nodejs version: v22.20.0"));
    assert_eq!(image_id(&ws.reference("code", "1.0.0")), Some(code_image.clone()), "the code image keeps its ID");
    assert_eq!(image_id(&ws.reference("runtime", "22")), image_id(&ws.reference("runtime", "22.20.0")));

    // `up` again, the compose file and its variables unchanged: compose sees that `runtime:22`
    // moved and replaces the app container; the code container and its volume stay as they were.
    compose.up();
    wait_for_answer(&compose, port, "I am running nodejs version: v22.20.0\n");
    assert_ne!(compose.container("app"), app_container);
    assert_eq!(compose.container("code"), code_container, "the code container is the same");
    let running = docker(&["inspect", "-f", "{{.Image}}", &code_container]);
    assert_eq!(running, code_image, "the code container runs the unchanged code image");
    compose.compose(&["down", "-v", "--timeout", "5"]);
    assert_eq!(compose.leftovers(&volumes), "", "containers, networks or the /app volume left behind");

    // New code: the code image is rebuilt and every runtime's test runs again on it; no
    // runtime is rebuilt.
    let index = std::fs::read_to_string(ws.fixture.path("app/index.js")).unwrap();
    ws.fixture.write("app/index.js", &format!("// Revision 2.\n{index}"));
    let (code, stderr) = build(&ws);
    assert_eq!(code, Some(0), "{stderr}");
    let report = ws.report();
    assert_eq!(action(&report, "build:code"), "run");
    assert_eq!(reason(&report, "build:code"), "context file index.js changed");
    for version in ["24.11.1", "22.20.0"] {
        assert_eq!(action(&report, &format!("build:runtime/{version}")), "skip");
        let test = format!("test:runtime/{version}/app");
        assert_eq!(status(&report, &test), "passed");
        assert_eq!(reason(&report, &test), "code, which the test uses, changed");
    }
    assert_ne!(image_id(&ws.reference("code", "1.0.0")), Some(code_image));
}
