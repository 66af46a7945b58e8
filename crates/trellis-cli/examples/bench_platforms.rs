//! `cargo xtask bench platforms`: this repository's Node.js family built cold (`--refresh`: no
//! layer cache) for linux/amd64 alone and then for linux/amd64 + linux/arm64, side by side in
//! one run, with the time each node kind spent per platform (the emulated platform's cost);
//! then the two-platform push to the local registry: blob bytes uploaded against the unique
//! blob bytes the pushed indexes name (goal: equal), and what each extra alias cost.
//!
//! The family runs in a copy of the workspace (hard links into `.cache/`, the repositories and
//! the workspace name prefixed), so the repository's own images, state and registry
//! repositories are left alone. Needs `cargo xtask inputs` and the engine; argv[1] is the
//! trellis binary.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

#[path = "bench_support/mod.rs"]
mod bench_support;

use bench_support::{ROOT, copy_workspace};

fn main() {
    let trellis = std::env::args().nth(1).expect("usage: bench_platforms <path to the trellis binary>");
    let root = Path::new(ROOT).canonicalize().unwrap();
    let unique = format!("bench-platforms-{}", std::process::id());
    let work = root.join("target").join(&unique);
    let one = copy_workspace(&root, &work.join("one"), &unique, "\"linux/amd64\"");
    let two = copy_workspace(&root, &work.join("two"), &unique, "\"linux/amd64\" \"linux/arm64\"");

    let (one_time, one_report) = bench_support::trellis(&trellis, &one, &["build", "--refresh"]);
    let (two_time, two_report) =
        bench_support::trellis(&trellis, &two, &["build", "--refresh", "--push", "--registry", "127.0.0.1:5000"]);
    let one_kinds = per_kind(&one_report);
    let two_kinds = per_kind(&two_report);

    println!("cold build of the family (--refresh, jobs from matrix.kdl), node time summed per kind:\n");
    println!("| kind  | amd64 alone | two: amd64 | two: arm64 | arm64 / amd64 |");
    println!("|-------|-------------|------------|------------|---------------|");
    for kind in ["build", "test"] {
        let alone = one_kinds.get(&(kind.to_owned(), "linux/amd64".to_owned())).copied().unwrap_or_default();
        let amd64 = two_kinds.get(&(kind.to_owned(), "linux/amd64".to_owned())).copied().unwrap_or_default();
        let arm64 = two_kinds.get(&(kind.to_owned(), "linux/arm64".to_owned())).copied().unwrap_or_default();
        println!(
            "| {kind:<5} | {:>10.1}s | {:>9.1}s | {:>9.1}s | {:>12.1}x |",
            secs(alone),
            secs(amd64),
            secs(arm64),
            secs(arm64) / secs(amd64).max(0.001)
        );
    }
    println!(
        "\nwall time: amd64 alone {:.1}s, both platforms {:.1}s (the push included): {:.2}x\n",
        one_time.as_secs_f64(),
        two_time.as_secs_f64(),
        two_time.as_secs_f64() / one_time.as_secs_f64()
    );
    push_figures(&two, &two_report);
    cleanup(&unique, &work);
}

/// Node time per (kind, platform) of the nodes that ran; unnamed platforms count as amd64.
fn per_kind(report: &Value) -> BTreeMap<(String, String), Duration> {
    let mut sums = BTreeMap::new();
    for node in report["nodes"].as_array().unwrap().iter().filter(|n| n["action"] == "run") {
        let kind = node["kind"].as_str().unwrap().to_owned();
        let platform = node["platform"].as_str().unwrap_or("linux/amd64").to_owned();
        *sums.entry((kind, platform)).or_insert(Duration::ZERO) +=
            Duration::from_millis(node["duration_ms"].as_u64().unwrap());
    }
    sums
}

fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// Bytes the pushes uploaded (their logs) against the unique blob bytes the indexes name
/// (read back with skopeo), and the aliases' cost.
fn push_figures(dir: &Path, report: &Value) {
    let mut uploaded: u64 = 0;
    let mut pushes = Duration::ZERO;
    let (mut aliases, mut new_aliases) = (0, 0);
    let mut first_references = Vec::new();
    for node in report["nodes"].as_array().unwrap().iter().filter(|n| n["kind"] == "push") {
        pushes += Duration::from_millis(node["duration_ms"].as_u64().unwrap());
        let log = std::fs::read_to_string(dir.join(node["log"].as_str().unwrap())).unwrap_or_default();
        for line in log.lines() {
            if let Some(bytes) = line.strip_prefix("uploaded ").and_then(|l| l.split(" (").nth(1)) {
                uploaded += bytes.trim_end_matches(" bytes)").parse::<u64>().unwrap_or(0);
            }
            if line.contains(" index sha256:") {
                aliases += 1;
                new_aliases += usize::from(line.contains(" put index "));
            }
        }
        if let Some(first) = node["references"].as_array().and_then(|r| r.first()) {
            first_references.push(first.as_str().unwrap().to_owned());
        }
    }
    let mut seen = HashSet::new();
    let mut unique_bytes: u64 = 0;
    for reference in &first_references {
        let index = skopeo_raw(&format!("127.0.0.1:5000/{reference}"));
        let repository = reference.rsplit_once(':').map_or(reference.as_str(), |(r, _)| r);
        for entry in index["manifests"].as_array().unwrap() {
            let manifest = skopeo_raw(&format!("127.0.0.1:5000/{repository}@{}", entry["digest"].as_str().unwrap()));
            let blobs = std::iter::once(&manifest["config"]).chain(manifest["layers"].as_array().unwrap());
            for blob in blobs {
                if seen.insert(blob["digest"].as_str().unwrap().to_owned()) {
                    unique_bytes += blob["size"].as_u64().unwrap();
                }
            }
        }
    }
    println!("push of {} variants, {aliases} references, to 127.0.0.1:5000:\n", first_references.len());
    println!("| uploaded | unique blobs named | uploaded / unique | push node time |");
    println!("|----------|--------------------|-------------------|----------------|");
    println!(
        "| {:>6.1} MB | {:>16.1} MB | {:>16.3}x | {:>13.1}s |",
        uploaded as f64 / 1e6,
        unique_bytes as f64 / 1e6,
        uploaded as f64 / (unique_bytes as f64).max(1.0),
        secs(pushes)
    );
    println!(
        "\n{new_aliases} of {aliases} references were new (HEAD + PUT: 2 requests); one already serving its index costs 1 HEAD (trellis-docker's registry test counts them)."
    );
}

fn skopeo_raw(reference: &str) -> Value {
    let password = std::fs::read_to_string(Path::new(ROOT).join(".cache/engine/registry/password")).unwrap();
    let output = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", "--creds", &format!("trellis:{}", password.trim())])
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(output.status.success(), "skopeo {reference}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The bench's images and its copies of the workspace (its registry repositories stay).
fn cleanup(unique: &str, work: &Path) {
    for _ in 0..4 {
        let listed = Command::new("docker")
            .args(["images", "-q", "--filter", &format!("label=dev.trellis.workspace={unique}")])
            .output()
            .unwrap();
        let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout).lines().map(str::to_owned).collect();
        if ids.is_empty() {
            break;
        }
        let _ = Command::new("docker").args(["rmi", "-f"]).args(&ids).output();
    }
    let _ = std::fs::remove_dir_all(work);
}
