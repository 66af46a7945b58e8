//! What the benches on this repository's Node.js family share: a copy of the workspace with its
//! own names, a timed `trellis` run with its report, and cleaning up after.

#![allow(dead_code)] // each bench uses part of it

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "../../tests/common/remove.rs"]
mod remove;

pub const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// A copy of the repository's workspace: matrix.kdl with `platforms`, the templates, and the
/// inputs hard-linked; the workspace name and repositories prefixed with `unique`.
pub fn copy_workspace(root: &Path, dir: &Path, unique: &str, platforms: &str) -> PathBuf {
    // The family's inputs alone (.cache also holds the engines' data, on other file systems).
    std::fs::create_dir_all(dir.join(".cache")).unwrap();
    for inputs in ["busybox", "rootfs", "wheels"] {
        let status = Command::new("cp")
            .arg("-al")
            .arg(root.join(".cache").join(inputs))
            .arg(dir.join(".cache").join(inputs))
            .status()
            .unwrap();
        assert!(status.success(), "hard links into .cache/{inputs} (run `cargo xtask inputs` first)");
    }
    let status = Command::new("cp").arg("-r").arg(root.join("dockerfiles")).arg(dir).status().unwrap();
    assert!(status.success());
    let rename = |text: &str| text.replace("trellis/", &format!("{unique}/"));
    for template in ["busybox", "debian", "node"] {
        let path = dir.join("dockerfiles").join(template).join("Dockerfile.j2");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, rename(&text)).unwrap();
    }
    let matrix = std::fs::read_to_string(root.join("matrix.kdl")).unwrap();
    let matrix = rename(&matrix)
        .replace("name \"trellis-node\"", &format!("name \"{unique}\""))
        .replace("platforms \"linux/amd64\" \"linux/arm64\"", &format!("platforms {platforms}"));
    assert!(matrix.contains(&format!("platforms {platforms}")), "matrix.kdl names its platforms in settings");
    std::fs::write(dir.join("matrix.kdl"), matrix).unwrap();
    dir.to_path_buf()
}

/// Runs `trellis ARGS` in `dir` with the local registry's docker config: how long it took, and
/// the run's report.
pub fn trellis(trellis: &str, dir: &Path, args: &[&str]) -> (Duration, Value) {
    trellis_with(trellis, dir, &Path::new(ROOT).join(".cache/engine/docker"), args)
}

/// [`trellis`] with the docker config in `config`.
pub fn trellis_with(trellis: &str, dir: &Path, config: &Path, args: &[&str]) -> (Duration, Value) {
    let started = Instant::now();
    let output = Command::new(trellis)
        .args(args)
        .current_dir(dir)
        .env("DOCKER_CONFIG", config)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    assert!(output.status.success(), "trellis {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    let runs = dir.join(".trellis/runs");
    let last = std::fs::read_dir(&runs).unwrap().flatten().map(|e| e.path()).max().unwrap();
    let report = serde_json::from_slice(&std::fs::read(last.join("report.json")).unwrap()).unwrap();
    (elapsed, report)
}

/// The ids of the nodes a report ran, renders aside.
pub fn ran(report: &Value) -> Vec<String> {
    (report["nodes"].as_array().unwrap().iter())
        .filter(|n| n["action"] == "run" && n["kind"] != "render")
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Removes every image of the workspace `unique` from the engine: its builds, and what its
/// references or the registry's name (pulled by digest).
pub fn remove_images(unique: &str) {
    let patterns = [format!("{unique}/*"), format!("127.0.0.1:5000/{unique}/*")];
    remove::remove_workspace_images(unique, &patterns);
}
