//! `cargo xtask bench ci`: the registry as the store CI runners share, on this repository's
//! Node.js family (both platforms), side by side in one run:
//!
//! 1. no-op: `trellis build --push` with nothing to do on a warm runner (its state and images
//!    at hand) against a fresh runner (a copy of the checkout without state, on an engine
//!    holding none of the family's images, everything served by the registry); goal ≤ 3×;
//! 2. one change that rebuilds every Node.js variant (a line added to their template), made
//!    by one fresh runner against two fresh runners each taking a shard of the stage
//!    (`--stage 1 --shard I/2`, run one after the other on this machine): the makespan (the
//!    slower shard) against the single runner, and the total node time, which may grow only by
//!    the parents' pulls.
//!
//! The family runs in copies of the workspace with their own names (see bench_support), so the
//! repository's own images, state and registry repositories are left alone. Needs
//! `cargo xtask inputs` and the engine; argv[1] is the trellis binary.

#[path = "bench_support/mod.rs"]
mod bench_support;

use std::path::Path;
use std::time::Duration;

use bench_support::*;
use serde_json::Value;

const PUSH: [&str; 4] = ["build", "--push", "--registry", "127.0.0.1:5000"];
const ROUNDS: usize = 3;

fn main() {
    let binary = std::env::args().nth(1).expect("usage: bench_ci <path to the trellis binary>");
    let root = Path::new(ROOT).canonicalize().unwrap();
    let unique = format!("bench-ci-{}", std::process::id());
    let work = root.join("target").join(&unique);
    let platforms = "\"linux/amd64\" \"linux/arm64\"";
    let warm = copy_workspace(&root, &work.join("warm"), &unique, platforms);

    // The family built and published once, cold.
    let (cold, _) = trellis(&binary, &warm, &PUSH);
    println!("the family built cold and pushed in {:.1}s\n", cold.as_secs_f64());

    let mut warm_times = Vec::new();
    let mut fresh_times = Vec::new();
    for round in 0..ROUNDS {
        let (elapsed, report) = trellis(&binary, &warm, &PUSH);
        assert!(ran(&report).is_empty(), "the warm runner ran {:?}", ran(&report));
        warm_times.push(elapsed);
        remove_images(&unique);
        let fresh = copy_workspace(&root, &work.join(format!("fresh-{round}")), &unique, platforms);
        let (elapsed, report) = trellis(&binary, &fresh, &PUSH);
        assert!(ran(&report).is_empty(), "the fresh runner ran {:?}", ran(&report));
        fresh_times.push(elapsed);
        // The warm runner's images back, as they were (its tags pull them by digest).
        trellis(&binary, &warm, &PUSH);
    }
    let (warm_median, fresh_median) = (median(&mut warm_times), median(&mut fresh_times));
    println!("`trellis build --push` with nothing to do, median of {ROUNDS}:\n");
    println!("| warm runner | fresh runner | fresh / warm |");
    println!("|-------------|--------------|--------------|");
    println!(
        "| {:>9.0} ms | {:>10.0} ms | {:>11.2}x |\n",
        ms(warm_median),
        ms(fresh_median),
        ms(fresh_median) / ms(warm_median).max(1.0)
    );

    // The same kind of change twice (a different line each time, so that the second is new
    // work too): once on one runner, once on two shards.
    let one = changed_runner(&root, &work.join("one"), &unique, platforms, "one");
    let (one_time, one_report) = trellis(&binary, &one, &PUSH);
    let one_work = node_time(&one_report);
    let mut shard_times = Vec::new();
    let mut shard_work = Duration::ZERO;
    let mut shard_builds = 0;
    for shard in ["1/2", "2/2"] {
        remove_images(&unique);
        let dir = changed_runner(&root, &work.join(format!("shard-{}", &shard[..1])), &unique, platforms, "two");
        let args: Vec<&str> = PUSH.iter().copied().chain(["--stage", "1", "--shard", shard]).collect();
        let (elapsed, report) = trellis(&binary, &dir, &args);
        shard_times.push(elapsed);
        shard_work += node_time(&report);
        shard_builds += ran(&report).iter().filter(|id| id.starts_with("build:")).count();
    }
    let one_builds = ran(&one_report).iter().filter(|id| id.starts_with("build:")).count();
    assert_eq!(shard_builds, one_builds, "the shards together built what one runner built");
    let makespan = shard_times.iter().max().copied().unwrap_or_default();
    println!("a change rebuilding every Node.js variant ({one_builds} builds), fresh runners:\n");
    println!(
        "| one runner | two shards: makespan | makespan / one | node time: one | node time: shards | shards / one |"
    );
    println!(
        "|------------|----------------------|----------------|----------------|-------------------|--------------|"
    );
    println!(
        "| {:>8.1}s | {:>18.1}s ({:.1}s + {:.1}s) | {:>13.2}x | {:>13.1}s | {:>16.1}s | {:>11.2}x |",
        one_time.as_secs_f64(),
        makespan.as_secs_f64(),
        shard_times[0].as_secs_f64(),
        shard_times[1].as_secs_f64(),
        makespan.as_secs_f64() / one_time.as_secs_f64(),
        one_work.as_secs_f64(),
        shard_work.as_secs_f64(),
        shard_work.as_secs_f64() / one_work.as_secs_f64().max(0.001)
    );

    remove_images(&unique);
    let _ = std::fs::remove_dir_all(&work);
}

/// A fresh runner's checkout with the Node.js template changed by one line (`marker`).
fn changed_runner(root: &Path, dir: &Path, unique: &str, platforms: &str, marker: &str) -> std::path::PathBuf {
    let dir = copy_workspace(root, dir, unique, platforms);
    let template = dir.join("dockerfiles/node/Dockerfile.j2");
    let text = std::fs::read_to_string(&template).unwrap();
    std::fs::write(&template, format!("{text}LABEL bench.change=\"{marker}\"\n")).unwrap();
    dir
}

/// Node time summed over the nodes that ran.
fn node_time(report: &Value) -> Duration {
    (report["nodes"].as_array().unwrap().iter())
        .filter(|n| n["action"] == "run")
        .map(|n| Duration::from_millis(n["duration_ms"].as_u64().unwrap_or(0)))
        .sum()
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
