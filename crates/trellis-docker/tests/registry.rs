//! The registry client against the real engine and the registry `cargo xtask engine` starts
//! (127.0.0.1:5000, user `trellis`, its password in `.cache/engine/registry/password`), checked
//! from outside with skopeo and the docker CLI. Each test builds its images (busybox on scratch,
//! for linux/amd64 and linux/arm64) under a label of its own, removes them when it ends, and
//! pushes into repositories of its own; the registry keeps what was pushed.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use trellis_docker::publish::{LayerMap, PushOptions};
use trellis_docker::registry::{ImageIndex, Registry};
use trellis_docker::{
    BuildRequest, BuildTrace, BuilderKind, Compression, DockerClient, DockerCredentials, EngineError, ImageStore,
};
use trellis_graph::ContextWalk;

const REGISTRY: &str = "127.0.0.1:5000";
const USER: &str = "trellis";

/// A test's corner of the engine and the registry.
struct Scene {
    client: DockerClient,
    unique: String,
    password: String,
}

impl Scene {
    /// `None` (and a note) when no engine or no registry answers: only then is a test skipped.
    async fn new(name: &str) -> Option<Self> {
        let client = match DockerClient::connect().await {
            Ok(client) => client,
            Err(EngineError::Unreachable(why)) => {
                eprintln!("skipped: no Docker engine answers (DOCKER_HOST or /var/run/docker.sock): {why}");
                return None;
            }
            Err(other) => panic!("the engine answered, wrongly: {other}"),
        };
        let password = registry_password()?;
        ensure_skopeo();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let unique = format!("{name}-{}-{nanos:x}", std::process::id()).replace('_', "-");
        Some(Self { client, unique, password })
    }

    fn credentials(&self) -> DockerCredentials {
        DockerCredentials {
            username: Some(USER.to_owned()),
            password: Some(self.password.clone()),
            serveraddress: Some(REGISTRY.to_owned()),
            ..Default::default()
        }
    }

    /// A registry client as a run makes one.
    fn registry(&self) -> Registry {
        Registry::new(REGISTRY, Some(self.credentials()))
    }

    fn repository(&self, name: &str) -> String {
        format!("trellis-e2e/{}-{name}", self.unique)
    }

    /// Busybox on scratch for `platform`, on a layer of this test's own (`/id`).
    async fn image(&self, platform: &str) -> String {
        let busybox = match platform {
            "linux/arm64" => arm64_busybox(),
            _ => PathBuf::from("/bin/busybox"),
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(&busybox, dir.path().join("busybox")).expect("a static busybox");
        std::fs::write(dir.path().join("id"), format!("{} {platform}\n", self.unique)).unwrap();
        let walk = ContextWalk::new(dir.path(), &Default::default()).unwrap();
        // The test's own layer first: no layer is shared with another image (their chains
        // differ), so that removing the image removes all of them and a pull downloads all.
        let dockerfile = format!(
            "FROM scratch\nLABEL e2e={}\nCOPY id /id\nCOPY busybox /bin/busybox\n\
             RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n",
            self.unique
        );
        let request = BuildRequest {
            dockerfile: &dockerfile,
            context: Some(&walk),
            args: &[],
            labels: HashMap::new(),
            network: "default",
            target: None,
            no_cache: false,
            platform: Some(platform),
        };
        let kind = match self.client.offers_buildkit() {
            true => BuilderKind::BuildKit,
            false => BuilderKind::Classic,
        };
        let mut lines = Vec::new();
        let result = self
            .client
            .builder(kind)
            .build(request, &mut BuildTrace::default(), &mut |l| lines.push(l.to_owned()))
            .await;
        result.unwrap_or_else(|e| panic!("building for {platform}: {e}\n{}", lines.join("\n")))
    }

    async fn two_platforms(&self) -> (String, String) {
        tokio::join!(self.image("linux/amd64"), self.image("linux/arm64"))
    }

    /// skopeo's answer (stdout) about `reference` in the registry, with the registry's credentials.
    fn skopeo(&self, command: &str, reference: &str, extra: &[&str]) -> String {
        let creds = format!("{USER}:{}", self.password);
        let output = Command::new("skopeo")
            .args([command, "--tls-verify=false", "--creds", &creds])
            .args(extra)
            .arg(format!("docker://{REGISTRY}/{reference}"))
            .output()
            .expect("skopeo runs");
        assert!(output.status.success(), "skopeo {command} {reference}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    }

    /// The manifest the registry serves for `reference`, as skopeo reads it.
    fn raw(&self, reference: &str) -> String {
        self.skopeo("inspect", reference, &["--raw"])
    }

    /// A blob's bytes, as the registry serves them (curl, not trellis).
    fn blob(&self, repository: &str, digest: &str) -> Vec<u8> {
        let url = format!("http://{REGISTRY}/v2/{repository}/blobs/{digest}");
        let output = Command::new("curl")
            .args(["-sfL", "-u", &format!("{USER}:{}", self.password), &url])
            .output()
            .expect("curl runs");
        assert!(output.status.success(), "GET {url}: {}", String::from_utf8_lossy(&output.stderr));
        output.stdout
    }

    fn tags(&self, repository: &str) -> BTreeSet<String> {
        let list: Value = serde_json::from_str(&self.skopeo("list-tags", repository, &[])).unwrap();
        list["Tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_owned()).collect()
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let filter = format!("label=e2e={}", self.unique);
        let ids = docker(&["images", "-a", "-q", "--no-trunc", "--filter", &filter]);
        let ids: BTreeSet<&str> = ids.lines().collect();
        if !ids.is_empty() {
            let mut args = vec!["rmi", "-f"];
            args.extend(ids);
            docker(&args);
        }
    }
}

/// The registry's password as `cargo xtask engine` wrote it, when a registry answers.
fn registry_password() -> Option<String> {
    let file = workspace().join(".cache/engine/registry/password");
    let answers = std::net::TcpStream::connect(REGISTRY).is_ok();
    match std::fs::read_to_string(&file) {
        Ok(password) if answers => Some(password.trim_end_matches('\n').to_owned()),
        _ => {
            eprintln!("skipped: no registry on {REGISTRY} with a password in {} (cargo xtask engine)", file.display());
            None
        }
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn docker(args: &[&str]) -> String {
    let output = docker_cli(args);
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The docker CLI with the registry's credentials (the docker config `cargo xtask engine` wrote).
fn docker_cli(args: &[&str]) -> Output {
    Command::new("docker")
        .env("DOCKER_CONFIG", workspace().join(".cache/engine/docker"))
        .args(args)
        .output()
        .expect("the docker CLI runs")
}

fn checked(args: &[&str]) -> String {
    let output = docker_cli(args);
    assert!(output.status.success(), "docker {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A command the test's setup needs to succeed.
fn run(program: &str, args: &[&str], dir: &Path) {
    let output =
        Command::new(program).args(args).current_dir(dir).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(output.status.success(), "{program} {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
}

/// apt-get waits for a lock another test holds instead of failing.
const APT_LOCK: [&str; 2] = ["-o", "DPkg::Lock::Timeout=600"];

/// Installs Debian's skopeo when missing (the registry is checked with it, not with trellis).
fn ensure_skopeo() {
    if Command::new("skopeo").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return;
    }
    let mut args = APT_LOCK.to_vec();
    args.extend(["install", "-y", "-q", "skopeo"]);
    run("apt-get", &args, Path::new("/"));
}

/// Debian's static busybox for arm64, fetched once into the target directory: `apt-get
/// download` (after `dpkg --add-architecture arm64` and `apt-get update` when dpkg has no arm64
/// packages yet) and `dpkg-deb -x`. A lock file keeps parallel tests from fetching it twice.
fn arm64_busybox() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("arm64-busybox");
    let busybox = dir.join("busybox");
    if busybox.exists() {
        return busybox;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let lock = std::fs::File::create(dir.join("lock")).unwrap();
    lock.lock().unwrap();
    if busybox.exists() {
        return busybox;
    }
    let work = tempfile::tempdir_in(&dir).unwrap();
    let foreign = Command::new("dpkg").arg("--print-foreign-architectures").output().unwrap();
    let mut update = APT_LOCK.to_vec();
    update.extend(["update", "-q"]);
    if !String::from_utf8_lossy(&foreign.stdout).lines().any(|a| a == "arm64") {
        run("dpkg", &["--add-architecture", "arm64"], work.path());
        run("apt-get", &update, work.path());
    }
    let download = ["download", "busybox-static:arm64"];
    let fetched = Command::new("apt-get").args(download).current_dir(work.path()).output().unwrap();
    if !fetched.status.success() {
        // The arm64 package lists are missing or stale.
        run("apt-get", &update, work.path());
        run("apt-get", &download, work.path());
    }
    let deb = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"));
    let tree = work.path().join("tree");
    run("dpkg-deb", &["-x", deb.expect("a .deb").to_str().unwrap(), tree.to_str().unwrap()], work.path());
    let inside = ["bin/busybox", "usr/bin/busybox"].map(|p| tree.join(p)).into_iter().find(|p| p.exists());
    std::fs::copy(inside.expect("busybox in the package"), work.path().join("busybox")).unwrap();
    std::fs::rename(work.path().join("busybox"), &busybox).unwrap();
    busybox
}

type Log = Arc<Mutex<Vec<String>>>;

fn log() -> (Log, impl FnMut(&str) + Send) {
    let log: Log = Arc::default();
    let sink = log.clone();
    (log, move |line: &str| sink.lock().unwrap().push(line.to_owned()))
}

/// A push as a run's first: gzip, nothing known, mounting from `mount_from`.
fn options<'a>(mount_from: &'a [String], known: &'a LayerMap) -> PushOptions<'a> {
    PushOptions { mount_from, compression: Compression::Gzip, known }
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let hex: String = sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The image's layers' diff IDs, as the engine reports them.
fn diff_ids(image: &str) -> Vec<String> {
    serde_json::from_str(&docker(&["image", "inspect", "-f", "{{json .RootFS.Layers}}", image])).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_platforms_are_pushed_by_digest_under_one_index_on_every_tag() {
    let Some(scene) = Scene::new("index").await else { return };
    let (amd64, arm64) = scene.two_platforms().await;
    let registry = scene.registry();
    let repository = scene.repository("index");
    let (lines, mut line) = log();
    let mut pushed = Vec::new();
    for image in [&amd64, &arm64] {
        let result =
            registry.push_image(&scene.client, image, &repository, options(&[], &LayerMap::new()), &mut line).await;
        pushed.push(result.unwrap_or_else(|e| panic!("{e}\n{:?}", lines.lock().unwrap())));
    }
    assert_eq!(pushed[0].platform.to_string(), "linux/amd64");
    assert_eq!(scene.client.platform(), docker(&["version", "-f", "{{.Server.Os}}/{{.Server.Arch}}"]));
    assert_eq!((pushed[1].platform.os.as_str(), pushed[1].platform.architecture.as_str()), ("linux", "arm64"));
    assert!(pushed.iter().all(|p| p.uploaded_bytes > 0), "{pushed:?}");
    let index = ImageIndex::of(&pushed);
    for tag in ["1.0", "latest"] {
        assert!(registry.put_index(&repository, tag, &index).await.unwrap(), "{tag} served nothing before");
        assert_eq!(registry.served(&repository, tag).await.unwrap().as_deref(), Some(index.digest.as_str()));
    }

    // From outside: both tags serve the index's very bytes, which name both platforms.
    for tag in ["1.0", "latest"] {
        let raw = scene.raw(&format!("{repository}:{tag}"));
        assert_eq!(raw.trim_end().as_bytes(), index.bytes.as_slice(), "{tag} serves the index");
    }
    let served: Value = serde_json::from_slice(&index.bytes).unwrap();
    assert_eq!(served["mediaType"], "application/vnd.oci.image.index.v1+json");
    let entries = served["manifests"].as_array().unwrap();
    let platforms: Vec<String> = entries
        .iter()
        .map(|e| {
            format!("{}/{}", e["platform"]["os"].as_str().unwrap(), e["platform"]["architecture"].as_str().unwrap())
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    // Each entry's manifest is the image: by config (classic store: the image ID is the
    // config's digest) or as stored (containerd store: the image ID is the manifest's digest);
    // its layers gzip, one per diff ID, each unpacking to exactly that diff ID.
    for ((entry, image), pushed) in entries.iter().zip([&amd64, &arm64]).zip(&pushed) {
        let digest = entry["digest"].as_str().unwrap();
        let manifest: Value = serde_json::from_str(&scene.raw(&format!("{repository}@{digest}"))).unwrap();
        match scene.client.store() {
            ImageStore::Classic => {
                assert_eq!(manifest["config"]["digest"].as_str(), Some(image.as_str()), "{manifest}")
            }
            ImageStore::Containerd => assert_eq!(digest, image.as_str()),
        }
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), diff_ids(image).len());
        assert!(layers.iter().all(|l| l["mediaType"].as_str().unwrap().ends_with("gzip")), "{manifest}");
        let unpacked: Vec<String> = pushed.layers.iter().map(|(diff_id, _)| diff_id.clone()).collect();
        assert_eq!(unpacked, diff_ids(image));
        let blob = scene.blob(&repository, layers[0]["digest"].as_str().unwrap());
        let mut tar = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(blob.as_slice()), &mut tar).unwrap();
        assert_eq!(sha256(&tar), diff_ids(image)[0], "the first layer unpacks to its diff ID");
    }
    // The images went by digest: no tag but the two.
    assert_eq!(scene.tags(&repository), BTreeSet::from(["1.0".to_owned(), "latest".to_owned()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_registry_holds_is_not_sent_again() {
    let Some(scene) = Scene::new("again").await else { return };
    let image = scene.image("linux/amd64").await;
    let repository = scene.repository("first");
    let (lines, mut line) = log();
    let nothing = LayerMap::new();
    let first = scene
        .registry()
        .push_image(&scene.client, &image, &repository, options(&[], &nothing), &mut line)
        .await
        .unwrap();
    assert!(first.uploaded_bytes > 0);
    let index = ImageIndex::of(std::slice::from_ref(&first));
    assert!(scene.registry().put_index(&repository, "v1", &index).await.unwrap());
    let blobs = 1 + diff_ids(&image).iter().collect::<BTreeSet<_>>().len() as u64;

    // A later run, knowing the layers as published (their record says): the same manifest
    // digest, no byte uploaded, no export, nothing compressed.
    let registry = scene.registry();
    let known: LayerMap = first.layers.iter().cloned().collect();
    lines.lock().unwrap().clear();
    let again = registry.push_image(&scene.client, &image, &repository, options(&[], &known), &mut line).await.unwrap();
    assert_eq!((again.digest.as_str(), again.size), (first.digest.as_str(), first.size));
    assert_eq!(again.uploaded_bytes, 0);
    let said = lines.lock().unwrap().clone();
    assert!(!said.iter().any(|l| l.starts_with("exporting") || l.starts_with("compressed")), "{said:?}");
    match scene.client.store() {
        // Settling the credentials (GET /v2/), a HEAD per blob, the manifest PUT.
        ImageStore::Classic => assert_eq!(registry.stats().requests, 1 + blobs + 1),
        // Settling the credentials, the manifest GET by the image ID: it is there.
        ImageStore::Containerd => assert_eq!(registry.stats().requests, 2),
    }
    // Without knowing the layers, the classic store's image is exported and compressed again:
    // to the same digests (the compressor is pinned), so nothing is uploaded.
    let again =
        registry.push_image(&scene.client, &image, &repository, options(&[], &nothing), &mut line).await.unwrap();
    assert_eq!((again.digest.as_str(), again.uploaded_bytes), (first.digest.as_str(), 0));
    // An alias already serving the index: one HEAD, no PUT.
    let before = registry.stats();
    assert!(!registry.put_index(&repository, "v1", &index).await.unwrap());
    assert_eq!(registry.stats().requests - before.requests, 1);
    // A new alias: the HEAD and the PUT.
    let before = registry.stats();
    assert!(registry.put_index(&repository, "v1.0", &index).await.unwrap());
    assert_eq!(registry.stats().requests - before.requests, 2);

    // Another repository mounts every blob from the first.
    let other = scene.repository("second");
    lines.lock().unwrap().clear();
    let before = registry.stats();
    let from = std::slice::from_ref(&repository);
    let mounted = registry.push_image(&scene.client, &image, &other, options(from, &known), &mut line).await.unwrap();
    assert_eq!(mounted.digest, first.digest);
    assert_eq!(mounted.uploaded_bytes, 0);
    assert_eq!(registry.stats().uploaded_bytes, 0);
    let mounts = lines.lock().unwrap().iter().filter(|l| l.starts_with("mounted")).count() as u64;
    assert_eq!(mounts, blobs, "{:?}", lines.lock().unwrap());
    let asked = registry.stats().requests - before.requests;
    match scene.client.store() {
        // Settling the new repository; per blob a HEAD in each repository and the mount; the PUT.
        ImageStore::Classic => assert_eq!(asked, 1 + 3 * blobs + 1),
        // The same, after asking each repository for the manifest by the image ID.
        ImageStore::Containerd => assert_eq!(asked, 1 + 2 + 3 * blobs + 1),
    }
    let manifest: Value = serde_json::from_str(&scene.raw(&format!("{other}@{}", mounted.digest))).unwrap();
    assert_eq!(manifest["config"]["digest"].as_str(), Some(first.config.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_pulls_each_platform_back_to_the_same_image() {
    let Some(scene) = Scene::new("round-trip").await else { return };
    let (amd64, arm64) = scene.two_platforms().await;
    let registry = scene.registry();
    let repository = scene.repository("round-trip");
    let (_, mut line) = log();
    let mut pushed = Vec::new();
    for image in [&amd64, &arm64] {
        let nothing = LayerMap::new();
        pushed.push(
            registry.push_image(&scene.client, image, &repository, options(&[], &nothing), &mut line).await.unwrap(),
        );
    }
    registry.put_index(&repository, "rt", &ImageIndex::of(&pushed)).await.unwrap();
    // Gone from the engine, so that the pulls download this test's own layers.
    checked(&["rmi", "-f", &amd64, &arm64]);

    let tag = format!("{REGISTRY}/{repository}:rt");
    let pulled = checked(&["pull", "--platform", "linux/arm64", &tag]);
    // (The containerd store keeps the blobs of a removed image until it collects them.)
    let downloaded =
        |pulled: &str| scene.client.store() == ImageStore::Containerd || !pulled.contains("Already exists");
    assert!(downloaded(&pulled), "{pulled}");
    let by_tag = checked(&["image", "inspect", "-f", "{{.Id}}", &tag]);
    match scene.client.store() {
        ImageStore::Classic => assert_eq!(by_tag, arm64, "the same config, the same image"),
        // The tag names the index there; its arm64 entry is the image pushed.
        ImageStore::Containerd => assert_eq!(pushed[1].digest, arm64, "the same manifest, the same image"),
    }
    let machine = checked(&["run", "--rm", "--platform", "linux/arm64", &tag, "uname", "-m"]);
    assert_eq!(machine, "aarch64");
    let id = checked(&["run", "--rm", "--platform", "linux/arm64", &tag, "cat", "/id"]);
    assert_eq!(id, format!("{} linux/arm64", scene.unique));

    let by_digest = format!("{REGISTRY}/{repository}@{}", pushed[0].digest);
    let pulled = checked(&["pull", &by_digest]);
    assert!(downloaded(&pulled), "{pulled}");
    assert_eq!(checked(&["image", "inspect", "-f", "{{.Id}}", &by_digest]), amd64);
    checked(&["rmi", &tag, &by_digest]);
}

#[tokio::test]
async fn unreachable_and_unauthorized_are_told_apart() {
    // A port nothing listens on any more.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let index = ImageIndex::of(&[]);
    let wrong = DockerCredentials {
        username: Some(USER.to_owned()),
        password: Some("not the password".to_owned()),
        ..Default::default()
    };
    for credentials in [None, Some(wrong.clone())] {
        let registry = Registry::new(&closed.to_string(), credentials);
        let served = registry.served("trellis-e2e/nowhere", "t").await;
        assert!(matches!(served, Err(EngineError::Unreachable(_))), "{served:?}");
        let put = registry.put_index("trellis-e2e/nowhere", "t", &index).await;
        assert!(matches!(put, Err(EngineError::Unreachable(_))), "{put:?}");
    }

    if registry_password().is_none() {
        return;
    }
    for credentials in [Some(wrong), None] {
        let registry = Registry::new(REGISTRY, credentials);
        let served = registry.served("trellis-e2e/refused", "t").await;
        assert!(matches!(served, Err(EngineError::Unauthorized(_))), "{served:?}");
        let put = registry.put_index("trellis-e2e/refused", "t", &index).await;
        assert!(matches!(put, Err(EngineError::Unauthorized(_))), "{put:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_is_published_on_request_and_deterministic() {
    let Some(scene) = Scene::new("zstd").await else { return };
    let image = scene.image("linux/amd64").await;
    let repository = scene.repository("zstd");
    let (lines, mut line) = log();
    let nothing = LayerMap::new();
    let zstd = PushOptions { mount_from: &[], compression: Compression::Zstd, known: &nothing };
    let registry = scene.registry();
    let pushed = registry.push_image(&scene.client, &image, &repository, zstd, &mut line).await;
    let pushed = pushed.unwrap_or_else(|e| panic!("{e}\n{:?}", lines.lock().unwrap()));
    // Compressed by trellis on either store (the containerd store keeps gzip: recompressed).
    assert_eq!(pushed.compressor, Some(Compression::Zstd.compressor()));
    let manifest: Value = serde_json::from_str(&scene.raw(&format!("{repository}@{}", pushed.digest))).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert!(layers.iter().all(|l| l["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"), "{manifest}");
    // An OCI manifest names an OCI config (the containerd store keeps a Docker one).
    assert_eq!(manifest["config"]["mediaType"], "application/vnd.oci.image.config.v1+json", "{manifest}");
    for (layer, diff_id) in layers.iter().zip(diff_ids(&image)) {
        let blob = scene.blob(&repository, layer["digest"].as_str().unwrap());
        assert_eq!(sha256(&zstd::decode_all(blob.as_slice()).unwrap()), diff_id, "each layer unpacks to its diff ID");
    }
    // Again, knowing nothing, into another repository: the same bytes, the same digests.
    let other = scene.repository("zstd-again");
    let again = registry.push_image(&scene.client, &image, &other, zstd, &mut line).await.unwrap();
    assert_eq!((again.digest.as_str(), &again.layers), (pushed.digest.as_str(), &pushed.layers));
}
