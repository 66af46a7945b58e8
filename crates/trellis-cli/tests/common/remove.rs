//! Taking a workspace's images off the engine: shared by the tests (`EngineWorkspace`) and
//! the benches (`examples/bench_support`, which include this file by path).

use std::process::Command;

/// Removes every image labelled as built by `workspace` and every image one of `patterns`
/// (`docker images` reference filters, e.g. `prefix*/*`) names. A parent cannot be removed
/// while a child exists, and `rmi` takes its arguments in order: repeated until nothing is
/// left.
pub fn remove_workspace_images(workspace: &str, patterns: &[String]) {
    let docker = |args: &[&str]| {
        let output = Command::new("docker").args(args).output().expect("the docker CLI runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    for _ in 0..4 {
        let label = format!("label=dev.trellis.workspace={workspace}");
        let mut ids: Vec<String> = docker(&["images", "-q", "--filter", &label]).lines().map(str::to_owned).collect();
        for pattern in patterns {
            ids.extend(docker(&["images", "-q", pattern]).lines().map(str::to_owned));
        }
        ids.sort();
        ids.dedup();
        if ids.is_empty() {
            return;
        }
        let mut args = vec!["rmi", "-f"];
        args.extend(ids.iter().map(String::as_str));
        docker(&args);
    }
}
