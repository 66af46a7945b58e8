//! `cargo xtask bench noop`: 200 tiny images, all up to date, once per builder. Side by side in
//! one run: `trellis build` with nothing to do, a loop of builds with a warm layer cache (what
//! glue scripts do: `docker build` for the classic builder; for BuildKit, which the docker CLI
//! here cannot drive without buildx, the same engine API trellis uses), and the floor — one
//! image-list call (the images tagged in the workspace's repositories) plus hashing the
//! contexts. Prints both ratios per builder. Needs a Docker
//! engine (`cargo xtask engine`) and the trellis binary path as argv[1].

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const IMAGES: usize = 200;

fn main() {
    let trellis = std::env::args().nth(1).expect("usage: bench_noop <path to the trellis binary>");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    println!(
        "| builder  | trellis build, nothing to do | loop of builds, warm cache | floor: listing + hashing | vs loop | vs floor |"
    );
    println!(
        "|----------|------------------------------|----------------------------|--------------------------|---------|----------|"
    );
    // `bench_noop TRELLIS [BUILDER…]`: both builders unless named.
    let named: Vec<String> = std::env::args().skip(2).collect();
    for builder in ["classic", "buildkit"].into_iter().filter(|b| named.is_empty() || named.iter().any(|n| n == b)) {
        let dir = tempfile::tempdir().expect("temp dir");
        let name = format!("bench-noop-{builder}-{}", std::process::id());
        write_workspace(dir.path(), &name, builder);
        // Warm up: build everything once (cold), so that all three measure the no-op case.
        let status =
            Command::new(&trellis).arg("build").current_dir(dir.path()).stderr(Stdio::null()).status().unwrap();
        assert!(status.success(), "the first build failed");
        let noop = best_of(3, || {
            let output = Command::new(&trellis).arg("build").current_dir(dir.path()).output().unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(stderr.contains(&format!("{} up to date", IMAGES * 3)), "not a no-op run:\n{stderr}");
        });
        // The floor before the loop, which moves the tags onto its own (unlabelled) builds.
        let floor = best_of(3, || {
            runtime.block_on(async {
                // The listing a no-op run needs: the images tagged in the workspace's repositories.
                let client = trellis_docker::DockerClient::connect().await.expect("an engine");
                let repositories: Vec<String> = (0..IMAGES).map(|i| format!("bench-noop/{name}/img{i}")).collect();
                let images = client.tagged_images(&name, &repositories).await.unwrap();
                assert!(images.len() >= IMAGES);
            });
            for i in 0..IMAGES {
                let walk =
                    trellis_graph::ContextWalk::new(&dir.path().join(format!("ctx/{i}")), &Default::default()).unwrap();
                walk.digest().unwrap();
            }
        });
        let loop_time = match builder {
            "classic" => best_of(1, || docker_cli_loop(dir.path(), &name)),
            _ => best_of(1, || runtime.block_on(buildkit_api_loop(dir.path(), &name))),
        };
        println!(
            "| {builder:<8} | {:>26.0}ms | {:>24.0}ms | {:>22.0}ms | {:>6.0}x | {:>7.2}x |",
            ms(noop),
            ms(loop_time),
            ms(floor),
            ms(loop_time) / ms(noop),
            ms(noop) / ms(floor)
        );
        remove_images(&name);
    }
    println!("goals: >= 30x faster than the loop, <= 2x the floor");
}

/// What glue scripts do: `docker build` per image (the classic builder), warm cache.
fn docker_cli_loop(dir: &Path, name: &str) {
    for i in 0..IMAGES {
        let status = Command::new("docker")
            .args(["build", "-q", "-t", &format!("bench-noop/{name}/img{i}:latest"), "-f"])
            .arg(dir.join(format!("dockerfiles/img{i}/Dockerfile")))
            .arg(dir.join(format!("ctx/{i}")))
            .env("DOCKER_BUILDKIT", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// The same loop through the engine API trellis uses, with BuildKit (the docker CLI here has
/// no buildx): one build per image, warm cache, then its tag.
async fn buildkit_api_loop(dir: &Path, name: &str) {
    let client = trellis_docker::DockerClient::connect().await.expect("an engine");
    let builder = client.builder(trellis_docker::BuilderKind::BuildKit);
    for i in 0..IMAGES {
        let walk = trellis_graph::ContextWalk::new(&dir.join(format!("ctx/{i}")), &Default::default()).unwrap();
        let text = std::fs::read_to_string(dir.join(format!("dockerfiles/img{i}/Dockerfile"))).unwrap();
        let request = trellis_docker::BuildRequest {
            dockerfile: &text,
            context: Some(&walk),
            args: &[],
            labels: Default::default(),
            network: "default",
            target: None,
            no_cache: false,
            platform: None,
        };
        let mut trace = trellis_docker::BuildTrace::default();
        let id = builder.build(request, &mut trace, &mut |_: &str| {}).await.expect("the build");
        client.tag(&id, &format!("bench-noop/{name}/img{i}:latest")).await.expect("the tag");
    }
}

fn remove_images(name: &str) {
    let ids = Command::new("docker")
        .args(["images", "-q", "--filter", &format!("label={}={name}", trellis_docker::labels::WORKSPACE)])
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

fn write_workspace(dir: &Path, name: &str, builder: &str) {
    let mut matrix = format!("settings {{\n    name \"{name}\"\n    builder \"{builder}\"\n    retries 0\n}}\n");
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
