//! `cargo xtask bench noop`: 200 tiny images, all up to date. Side by side in one run:
//! `trellis build` with nothing to do, a loop of `docker build` with a warm layer cache (what
//! glue scripts do), and the floor — one image-list call plus hashing the contexts. Prints both
//! ratios. Needs a Docker engine (`cargo xtask engine`) and the trellis binary path as argv[1].

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const IMAGES: usize = 200;

fn main() {
    let trellis = std::env::args().nth(1).expect("usage: bench_noop <path to the trellis binary>");
    let dir = tempfile::tempdir().expect("temp dir");
    let name = format!("bench-noop-{}", std::process::id());
    write_workspace(dir.path(), &name);

    // Warm up: build everything once (cold), so that all three measure the no-op case.
    let status = Command::new(&trellis).arg("build").current_dir(dir.path()).stderr(Stdio::null()).status().unwrap();
    assert!(status.success(), "the first build failed");

    let noop = best_of(3, || {
        let output = Command::new(&trellis).arg("build").current_dir(dir.path()).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&format!("{} up to date", IMAGES * 3)), "not a no-op run:\n{stderr}");
    });
    let loop_time = best_of(1, || {
        for i in 0..IMAGES {
            let status = Command::new("docker")
                .args(["build", "-q", "-t", &format!("bench-noop/{name}/img{i}:latest"), "-f"])
                .arg(dir.path().join(format!("dockerfiles/img{i}/Dockerfile")))
                .arg(dir.path().join(format!("ctx/{i}")))
                .env("DOCKER_BUILDKIT", "0")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success());
        }
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let floor = best_of(3, || {
        runtime.block_on(async {
            let client = trellis_docker::DockerClient::connect().await.expect("an engine");
            let images = client.workspace_images(&name).await.unwrap();
            assert!(images.len() >= IMAGES);
        });
        for i in 0..IMAGES {
            let walk =
                trellis_graph::ContextWalk::new(&dir.path().join(format!("ctx/{i}")), &Default::default()).unwrap();
            walk.digest().unwrap();
        }
    });
    println!("| measurement (200 up-to-date images)           | time     |");
    println!("|------------------------------------------------|----------|");
    println!("| trellis build, nothing to do                   | {:>6.0}ms |", ms(noop));
    println!("| loop of docker build, warm layer cache          | {:>6.0}ms |", ms(loop_time));
    println!("| floor: one image listing + hashing the contexts | {:>6.0}ms |", ms(floor));
    println!("trellis is {:.0}x faster than the loop (goal >= 30x)", ms(loop_time) / ms(noop));
    println!("trellis takes {:.2}x the floor (goal <= 2x)", ms(noop) / ms(floor));

    let ids = Command::new("docker")
        .args(["images", "-q", "--filter", &format!("label=dev.trellis.workspace={name}")])
        .output()
        .unwrap();
    let mut ids: Vec<String> = String::from_utf8_lossy(&ids.stdout).lines().map(str::to_owned).collect();
    ids.sort();
    ids.dedup();
    if !ids.is_empty() {
        let _ = Command::new("docker").arg("rmi").arg("-f").args(&ids).stdout(Stdio::null()).status();
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn best_of(runs: usize, mut f: impl FnMut()) -> Duration {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .min()
        .unwrap()
}

fn write_workspace(dir: &Path, name: &str) {
    let mut matrix = format!("settings {{\n    name \"{name}\"\n    retries 0\n}}\n");
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(dir.join("templates/Dockerfile.j2"), "FROM scratch\nCOPY hello.txt /hello.txt\n").unwrap();
    for i in 0..IMAGES {
        matrix.push_str(&format!(
            "image \"img{i}\" {{\n    repository \"bench-noop/{name}/img{i}\"\n    dockerfile \"templates/Dockerfile.j2\"\n    context \"ctx/{i}\"\n    tag \"latest\"\n}}\n"
        ));
        let ctx = dir.join(format!("ctx/{i}"));
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("hello.txt"), format!("hello {i}\n")).unwrap();
    }
    std::fs::write(dir.join("matrix.kdl"), matrix).unwrap();
}
