//! `cargo xtask bench build` (P5): 20 tiny real images built cold with two jobs at a time —
//! `trellis build -j 2` against `xargs -P2` of one build per rendered Dockerfile, for each
//! builder, side by side in one run. The classic loop is `docker build`; the docker CLI here
//! has no buildx, so the BuildKit loop is this program's own one-shot build through the same
//! engine API trellis uses (`bench_build --one DOCKERFILE CONTEXT TAG`). Every round writes a
//! new nonce into each context, so no round reuses another's layers. Needs a Docker engine
//! (`cargo xtask engine`) and the trellis binary path as argv[1].

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const IMAGES: usize = 20;
const ROUNDS: usize = 2;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--one") {
        return one_build(&args[2], &args[3], &args[4]);
    }
    let trellis = args.get(1).expect("usage: bench_build <path to the trellis binary>").clone();
    let me = std::env::current_exe().expect("own path");
    println!("| builder  | trellis build -j 2 | xargs -P2 loop | trellis / loop |");
    println!("|----------|--------------------|----------------|----------------|");
    for builder in ["classic", "buildkit"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let name = format!("bench-build-{builder}-{}", std::process::id());
        write_workspace(dir.path(), &name, builder);
        let mut nonce = 0;
        let mut fresh = || {
            nonce += 1;
            // Each image its own: identical images built at once race in the containerd
            // store ("moby-dangling@sha256:…: already exists", Docker 26.1.5).
            for i in 0..IMAGES {
                std::fs::write(dir.path().join(format!("ctx/{i}/nonce.txt")), format!("{name} {nonce} {i}\n")).unwrap();
            }
        };
        let (mut trellis_best, mut loop_best) = (Duration::MAX, Duration::MAX);
        for _ in 0..ROUNDS {
            fresh();
            trellis_best = trellis_best.min(timed(|| {
                let output =
                    Command::new(&trellis).args(["build", "-j", "2"]).current_dir(dir.path()).output().unwrap();
                assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            }));
            fresh();
            loop_best = loop_best.min(timed(|| xargs_loop(dir.path(), &name, builder, &me)));
        }
        println!(
            "| {builder:<8} | {:>16.1}s | {:>12.1}s | {:>13.2}x |",
            trellis_best.as_secs_f64(),
            loop_best.as_secs_f64(),
            trellis_best.as_secs_f64() / loop_best.as_secs_f64()
        );
        remove_images(&name);
    }
    println!("goal: trellis <= 1.05x the loop");
}

fn timed(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

/// One build per rendered Dockerfile, two at a time, each tagged as trellis tags it.
fn xargs_loop(dir: &Path, name: &str, builder: &str, me: &Path) {
    let lines: String = (0..IMAGES)
        .map(|i| format!("dockerfiles/img{i}/Dockerfile ctx/{i} bench-build/{name}/loop{i}:latest\n"))
        .collect();
    let command = match builder {
        "classic" => "DOCKER_BUILDKIT=0 docker build -q -f \"$1\" -t \"$3\" \"$2\" >/dev/null".to_owned(),
        _ => format!("'{}' --one \"$1\" \"$2\" \"$3\"", me.display()),
    };
    let mut xargs = Command::new("xargs")
        .args(["-P2", "-L1", "sh", "-c", &command, "sh"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut xargs.stdin.take().unwrap(), lines.as_bytes()).unwrap();
    assert!(xargs.wait().unwrap().success(), "the loop failed");
}

/// `--one DOCKERFILE CONTEXT TAG`: one BuildKit build through the engine API, then the tag.
fn one_build(dockerfile: &str, context: &str, tag: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = trellis_docker::DockerClient::connect().await.expect("an engine");
        let walk = trellis_graph::ContextWalk::new(Path::new(context), &Default::default()).unwrap();
        let text = std::fs::read_to_string(dockerfile).unwrap();
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
        let builder = client.builder(trellis_docker::BuilderKind::BuildKit);
        let mut trace = trellis_docker::BuildTrace::default();
        let id = builder.build(request, &mut trace, &mut |_: &str| {}).await.expect("the build");
        client.tag(&id, tag).await.expect("the tag");
    });
}

fn write_workspace(dir: &Path, name: &str, builder: &str) {
    let mut matrix = format!("settings {{\n    name \"{name}\"\n    builder \"{builder}\"\n    retries 0\n}}\n");
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(
        dir.join("templates/Dockerfile.j2"),
        "FROM scratch\nCOPY nonce.txt /nonce.txt\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nRUN echo built > /built && wc -c /bin/busybox > /size\n",
    )
    .unwrap();
    for i in 0..IMAGES {
        matrix.push_str(&format!(
            "image \"img{i}\" {{\n    repository \"bench-build/{name}/img{i}\"\n    dockerfile \"templates/Dockerfile.j2\"\n    context \"ctx/{i}\"\n    tag \"latest\"\n}}\n"
        ));
        let ctx = dir.join(format!("ctx/{i}"));
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::copy("/bin/busybox", ctx.join("busybox")).expect("Debian's busybox-static");
    }
    std::fs::write(dir.join("matrix.kdl"), matrix).unwrap();
    let status = Command::new(std::env::args().nth(1).unwrap())
        .arg("render")
        .current_dir(dir)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "trellis render failed");
}

fn remove_images(name: &str) {
    let ids = Command::new("docker")
        .args(["images", "-q", "--filter", &format!("reference=bench-build/{name}/*")])
        .output()
        .unwrap();
    let mut ids: Vec<String> = String::from_utf8_lossy(&ids.stdout).lines().map(str::to_owned).collect();
    ids.sort();
    ids.dedup();
    if !ids.is_empty() {
        let _ = Command::new("docker").arg("rmi").arg("-f").args(&ids).stdout(Stdio::null()).status();
    }
}
