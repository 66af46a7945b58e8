//! `cargo xtask bench push` (P6): what a push of this repository's family costs in bytes, and
//! what a user pulls. On the engine `DOCKER_HOST` names (xtask runs it on each engine):
//!
//! 1. the family built and tested for linux/amd64 in a copy of the workspace (its own names);
//! 2. side by side through one byte-counting proxy in front of the local registry: `docker
//!    push` of every variant's tested image (the daemon's own compression) to repositories of
//!    its own, and `trellis build --push` of the same images; against them, what trellis
//!    pushed before it compressed layers — each unique layer as its tar, read off the images
//!    decompressed into directories (`skopeo copy --dest-decompress`; skopeo compresses
//!    whatever it pushes to a registry, so that push cannot be replayed with it);
//! 3. with `--pulls`: `node:latest` of the family `cargo xtask build` published, for each
//!    platform: the bytes downloaded pulling it (`skopeo copy` into an OCI layout, on the
//!    loopback) against its layers uncompressed.
//!
//! The proxy listens on the host's loopback and, when the engine runs in a network namespace
//! of its own (`TRELLIS_E2E_NETNS`), on that namespace's loopback too, so the daemon's pushes
//! cross it as well. argv[1] is the trellis binary.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[path = "bench_support/mod.rs"]
mod bench_support;

use bench_support::{ROOT, copy_workspace};

const REGISTRY: &str = "127.0.0.1:5000";

/// Bytes that crossed the proxy: towards the registry (uploads) and back (downloads).
#[derive(Default)]
struct Meter {
    up: AtomicU64,
    down: AtomicU64,
}

impl Meter {
    fn take(&self) -> (u64, u64) {
        (self.up.swap(0, Ordering::SeqCst), self.down.swap(0, Ordering::SeqCst))
    }
}

fn main() {
    let trellis = std::env::args().nth(1).expect("usage: bench_push <path to the trellis binary> [--pulls]");
    let pulls = std::env::args().any(|a| a == "--pulls");
    let engine = std::env::var("TRELLIS_E2E_ENGINE").unwrap_or_else(|_| "bookworm".to_owned());
    let root = Path::new(ROOT).canonicalize().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let meter = Arc::new(Meter::default());
    let port = runtime.block_on(proxy(meter.clone()));
    let proxied = format!("127.0.0.1:{port}");
    let config = docker_config(&root, &proxied);

    let unique = format!("bench-push-{engine}-{}", std::process::id());
    let work = root.join("target").join(&unique);
    let dir = copy_workspace(&root, &work.join("ws"), &unique, "\"linux/amd64\"");
    let (_, built) = bench_support::trellis_with(&trellis, &dir, &config, &["build"]);
    let images = tested_images(&built);
    meter.take();

    // The daemon's push of the same images, each under a repository of its own.
    for (variant, image) in &images {
        let reference = format!("{proxied}/{unique}-docker/{}:bench", variant.replace(['/', '@', '=', ':'], "-"));
        docker(&config, &["tag", image, &reference]);
        docker(&config, &["push", &reference]);
    }
    let (docker_up, _) = meter.take();

    let (push_time, pushed) =
        bench_support::trellis_with(&trellis, &dir, &config, &["build", "--push", "--registry", &proxied]);
    let (trellis_up, _) = meter.take();
    let references = pushed_references(&pushed);

    // What trellis pushed before it compressed: each unique layer as its tar (and the
    // configs), read off the images decompressed into directories (skopeo compresses again
    // whatever it pushes to a registry, so the old push cannot be replayed with it).
    let mut unique_blobs = HashMap::new();
    for (n, reference) in references.iter().enumerate() {
        unique_blobs.extend(uncompressed_blobs(
            &root,
            &format!("docker://{REGISTRY}/{reference}"),
            &work.join(format!("plain-{n}")),
            None,
        ));
    }
    let plain_up: u64 = unique_blobs.values().sum();

    println!("push of the family ({} images, linux/amd64) on {engine}, bytes sent to the registry:\n", images.len());
    println!(
        "| docker push | trellis build --push | uncompressed (before) | trellis / docker push | trellis / uncompressed |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {} | {} ({:.1} s) | {} | {:.3}× | {:.2}× |",
        mb(docker_up),
        mb(trellis_up),
        push_time.as_secs_f64(),
        mb(plain_up),
        trellis_up as f64 / docker_up.max(1) as f64,
        trellis_up as f64 / plain_up.max(1) as f64
    );

    if pulls {
        pull_figures(&root, &proxied, &meter, &work);
    }
    bench_support::remove_images(&unique);
    let _ = std::fs::remove_dir_all(&work);
}

/// `node:latest` of the published family, per platform: as published, and uncompressed.
fn pull_figures(root: &Path, proxied: &str, meter: &Meter, work: &Path) {
    let published = "trellis/node:latest";
    let password = std::fs::read_to_string(root.join(".cache/engine/registry/password")).unwrap();
    let served = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", "--creds", &format!("trellis:{}", password.trim())])
        .arg(format!("docker://{REGISTRY}/{published}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !served {
        println!(
            "
{REGISTRY}/{published} is not served: run `cargo xtask build` first for the pull figures"
        );
        return;
    }

    println!("\npulls of node:latest (`cargo xtask build`'s), downloaded on the loopback:\n");
    println!("| platform | compressed | uncompressed (before) | bytes: after / before | download time, compressed |");
    println!("|---|---|---|---|---|");
    for arch in ["amd64", "arm64"] {
        let from = format!("docker://{REGISTRY}/{published}");
        let before: u64 =
            uncompressed_blobs(root, &from, &work.join(format!("plain-node-{arch}")), Some(arch)).values().sum();
        let target = work.join(format!("pull-{arch}"));
        let _ = std::fs::remove_dir_all(&target);
        meter.take();
        let started = Instant::now();
        skopeo_copy(
            root,
            &format!("docker://{proxied}/{published}"),
            &format!("oci:{}", target.display()),
            &["--override-arch", arch, "--override-os", "linux"],
        );
        let (after, after_time) = (meter.take().1, started.elapsed());
        println!(
            "| linux/{arch} | {} | {} | {:.2}× | {:.1} s |",
            mb(after),
            mb(before),
            after as f64 / before.max(1) as f64,
            after_time.as_secs_f64()
        );
    }
}

/// The blobs of `from` (`arch`'s image of an index, when given) decompressed, by file name
/// (digest) with their sizes: the image as the old uncompressed push sent it.
fn uncompressed_blobs(root: &Path, from: &str, staging: &Path, arch: Option<&str>) -> HashMap<String, u64> {
    let _ = std::fs::remove_dir_all(staging);
    let mut extra = vec!["--dest-decompress"];
    if let Some(arch) = arch {
        extra.extend(["--override-arch", arch, "--override-os", "linux"]);
    }
    skopeo_copy(root, from, &format!("dir:{}", staging.display()), &extra);
    let blobs = std::fs::read_dir(staging)
        .unwrap()
        .flatten()
        .filter(|e| !matches!(e.file_name().to_str(), Some("manifest.json" | "version")))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
        .collect();
    let _ = std::fs::remove_dir_all(staging);
    blobs
}

/// The counting proxy: a free port on the host's loopback, and the same port on the engine's
/// namespace loopback when it has one; every connection forwarded to the registry.
async fn proxy(meter: Arc<Meter>) -> u16 {
    let host = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = host.local_addr().unwrap().port();
    let mut listeners = vec![host];
    if let Some(netns) = std::env::var_os("TRELLIS_E2E_NETNS") {
        let listener = std::thread::spawn(move || {
            enter_netns(Path::new(&netns));
            std::net::TcpListener::bind(("127.0.0.1", port)).unwrap()
        })
        .join()
        .unwrap();
        listener.set_nonblocking(true).unwrap();
        listeners.push(tokio::net::TcpListener::from_std(listener).unwrap());
    }
    for listener in listeners {
        let meter = meter.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let meter = meter.clone();
                tokio::spawn(async move {
                    // Connected from a runtime thread: the host's namespace, where the registry is.
                    let Ok(outbound) = tokio::net::TcpStream::connect(REGISTRY).await else { return };
                    let (inbound_read, inbound_write) = inbound.into_split();
                    let (outbound_read, outbound_write) = outbound.into_split();
                    tokio::join!(
                        pipe(inbound_read, outbound_write, &meter.up),
                        pipe(outbound_read, inbound_write, &meter.down)
                    );
                });
            }
        });
    }
    port
}

async fn pipe(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    count: &AtomicU64,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buffer).await {
        if n == 0 || to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
        count.fetch_add(n as u64, Ordering::SeqCst);
    }
    let _ = to.shutdown().await;
}

fn enter_netns(path: &Path) {
    use std::os::fd::AsRawFd;
    let namespace = std::fs::File::open(path).unwrap();
    // SAFETY: setns(2) with a namespace file descriptor open for the whole call; it changes
    // the network namespace of this thread alone.
    let rc = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// A docker config with the local registry's credentials under the proxy's address too.
fn docker_config(root: &Path, proxied: &str) -> PathBuf {
    let source = root.join(".cache/engine/docker/config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&source).unwrap()).unwrap();
    let auth = config["auths"][REGISTRY].clone();
    assert!(!auth.is_null(), "{} has no entry for {REGISTRY}", source.display());
    config["auths"][proxied] = auth;
    let dir = std::env::temp_dir().join(format!("bench-push-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
    dir
}

/// Each variant's tested image, from a build's report: its build node's image.
fn tested_images(report: &Value) -> BTreeMap<String, String> {
    report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["kind"] == "build")
        .map(|n| (n["id"].as_str().unwrap().to_owned(), n["image"].as_str().unwrap().to_owned()))
        .collect()
}

/// The first reference of each push node of a report.
fn pushed_references(report: &Value) -> Vec<String> {
    report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["kind"] == "push")
        .filter_map(|n| n["references"].as_array()?.first()?.as_str().map(str::to_owned))
        .collect()
}

fn docker(config: &Path, args: &[&str]) {
    let status = Command::new("docker").args(args).env("DOCKER_CONFIG", config).stdout(Stdio::null()).status().unwrap();
    assert!(status.success(), "docker {args:?}");
}

fn skopeo_copy(root: &Path, from: &str, to: &str, extra: &[&str]) {
    let password = std::fs::read_to_string(root.join(".cache/engine/registry/password")).unwrap();
    let creds = format!("trellis:{}", password.trim());
    let mut command = Command::new("skopeo");
    command.args(["copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false"]);
    if from.starts_with("docker://") {
        command.args(["--src-creds", &creds]);
    }
    if to.starts_with("docker://") {
        command.args(["--dest-creds", &creds]);
    }
    let output = command.args(extra).arg(from).arg(to).output().unwrap();
    assert!(output.status.success(), "skopeo copy {from} {to}: {}", String::from_utf8_lossy(&output.stderr));
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}
