//! examples/decoupled-runtime end to end on the real engine: a code-only image, a runtime per
//! Node.js version, every runtime tested with the code. Its runtimes build on this repository's
//! Node.js images, which the test first builds and pushes with the repository's own workspace
//! (filtered to the versions it needs; `cargo xtask test` prepares their inputs).

mod common;

use std::path::Path;
use std::process::Command;

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

fn node_log(ws: &EngineWorkspace, report: &serde_json::Value, id: &str) -> String {
    let node = report["nodes"].as_array().unwrap().iter().find(|n| n["id"] == id).unwrap();
    std::fs::read_to_string(ws.fixture.path(node["log"].as_str().unwrap())).unwrap()
}

fn reason(report: &serde_json::Value, id: &str) -> String {
    let node = report["nodes"].as_array().unwrap().iter().find(|n| n["id"] == id).unwrap();
    node["reason"].as_str().unwrap().to_owned()
}

#[test]
fn a_new_runtime_rebuilds_only_runtimes_and_new_code_only_reruns_their_tests() {
    node_images(&["24.11.1", "22.19.0", "22.20.0"]);
    let ws = EngineWorkspace::copy_of(
        "decoupled",
        &Path::new(REPOSITORY).join("examples/decoupled-runtime"),
        &[("name \"decoupled-runtime\"", "name \"NAME\""), ("decoupled/", "PREFIX/")],
    );
    let (code, stderr) = ws.build(&[]);
    assert_eq!(code, Some(0), "{stderr}");
    let report = ws.report();
    for version in ["24.11.1", "22.19.0"] {
        let id = format!("test:runtime/{version}/app");
        assert_eq!(status(&report, &id), "passed");
        let log = node_log(&ws, &report, &id);
        assert!(log.contains(&format!("I am running nodejs version: v{version}")), "{log}");
    }
    let code_image = image_id(&ws.reference("code", "1.0.0")).unwrap();

    // A Node.js security release: 22.19.0 → 22.20.0.
    let matrix = std::fs::read_to_string(ws.fixture.path("matrix.kdl")).unwrap();
    ws.fixture.write("matrix.kdl", &matrix.replace("\"22.19.0\"", "\"22.20.0\""));
    let (code, stderr) = ws.build(&[]);
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

    // New code: the code image is rebuilt and every runtime's test runs again on it; no
    // runtime is rebuilt.
    let index = std::fs::read_to_string(ws.fixture.path("app/index.js")).unwrap();
    ws.fixture.write("app/index.js", &format!("// Revision 2.\n{index}"));
    let (code, stderr) = ws.build(&[]);
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
