//! A workspace on the real Docker Engine for end-to-end tests, and the engine and registry
//! queries the tests check results with (the docker CLI and raw registry requests: nothing of
//! trellis's own).

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;

use serde_json::Value;

use super::Fixture;

/// A unique first layer keeps each test's image chain its own: identical steps would share
/// cached layers between tests, and one test's cleanup (which prunes untagged parents) could
/// delete layers another test is building on.
pub const BASE: &str = "FROM scratch\nLABEL e2e=NAME\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n";

/// A workspace on the engine, cleaned up on drop.
pub struct EngineWorkspace {
    pub fixture: Fixture,
    pub name: String,
    pub prefix: String,
}

/// `; builder "X"` when the suite runs under the builder `TRELLIS_E2E_BUILDER` names and the
/// workspace does not choose one itself.
pub fn builder_setting(matrix: &str) -> String {
    match std::env::var("TRELLIS_E2E_BUILDER") {
        Ok(builder) if !matrix.contains("builder \"") => format!("; builder \"{builder}\""),
        _ => String::new(),
    }
}

pub fn unique(label: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{label}{}{nanos:x}", std::process::id())
}

pub fn docker(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().expect("the docker CLI runs");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

pub fn image_id(reference: &str) -> Option<String> {
    let id = docker(&["image", "inspect", "-f", "{{.Id}}", reference]);
    (!id.is_empty()).then_some(id)
}

impl EngineWorkspace {
    /// `matrix` may use `NAME` and `PREFIX`; `files` likewise.
    pub fn new(label: &str, matrix: &str, files: &[(&str, &str)]) -> Self {
        let name = unique(&format!("e2e-{label}-"));
        let prefix = format!("trellis-e2e/{name}");
        let fill = |text: &str| {
            // Under `TRELLIS_E2E_BUILDER`, the settings choose that builder.
            let named = format!("name \"NAME\"{}", builder_setting(text));
            text.replacen("name \"NAME\"", &named, 1).replace("NAME", &name).replace("PREFIX", &prefix)
        };
        let mut all: Vec<(String, String)> = vec![("matrix.kdl".to_owned(), fill(matrix))];
        all.extend(files.iter().map(|(p, t)| ((*p).to_owned(), fill(t))));
        let refs: Vec<(&str, &str)> = all.iter().map(|(p, t)| (p.as_str(), t.as_str())).collect();
        let fixture = Fixture::new(&refs);
        std::fs::create_dir_all(fixture.path("busybox")).unwrap();
        std::fs::copy("/bin/busybox", fixture.path("busybox/busybox"))
            .expect("Debian's busybox-static (cargo xtask engine installs it)");
        Self { fixture, name, prefix }
    }

    /// A copy of the workspace in `dir` (its state directory left out), with each `(from, to)`
    /// replaced in every text file; `to` may use `NAME` and `PREFIX`.
    pub fn copy_of(label: &str, dir: &std::path::Path, replace: &[(&str, &str)]) -> Self {
        let ws = Self::new(label, "", &[]);
        // Exactly the copied files: the busybox `new` places would be build context.
        std::fs::remove_dir_all(ws.fixture.path("busybox")).unwrap();
        let replace: Vec<(String, String)> = replace
            .iter()
            .map(|(from, to)| ((*from).to_owned(), to.replace("NAME", &ws.name).replace("PREFIX", &ws.prefix)))
            .collect();
        copy_tree(dir, ws.fixture.root(), &replace);
        ws
    }

    pub fn trellis(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_trellis"));
        command.args(args).current_dir(self.fixture.root()).env("NO_COLOR", "1").env_remove("TRELLIS_ENGINE");
        command
    }

    pub fn build(&self, args: &[&str]) -> (Option<i32>, String) {
        let output = self.trellis(&[&["build"], args].concat()).output().unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
    }

    pub fn report(&self) -> Value {
        super::last_report(self.fixture.root())
    }

    /// Images labelled with this workspace, one ID per line.
    pub fn images(&self) -> String {
        docker(&["images", "-q", "--filter", &format!("label=dev.trellis.workspace={}", self.name)])
    }

    /// Test images of this workspace still in the engine (they inherit its labels).
    pub fn test_images(&self) -> String {
        docker(&[
            "images",
            "-q",
            "--filter",
            "label=dev.trellis.test=true",
            "--filter",
            &format!("label=dev.trellis.workspace={}", self.name),
        ])
    }

    pub fn reference(&self, repository: &str, tag: &str) -> String {
        format!("{}/{repository}:{tag}", self.prefix)
    }
}

impl Drop for EngineWorkspace {
    fn drop(&mut self) {
        // What a test pushed: delete its manifests from the shared registry, trellis's
        // records (`sha256-<digest>.trellis`) among them.
        for repository in ["/base", "/app", "/tool", "-ext/busybox"] {
            let name = format!("{}{repository}", self.prefix);
            for tag in all_tags(&name) {
                if let Some(digest) =
                    registry_request("HEAD", &name, &tag).and_then(|r| header(&r, "Docker-Content-Digest"))
                {
                    registry_request("DELETE", &name, &digest);
                }
            }
        }
        self.remove_images();
    }
}

impl EngineWorkspace {
    /// Removes every image of this workspace from the engine (its builds, and whatever its
    /// references or the registry's name).
    pub fn remove_images(&self) {
        let patterns = [format!("{}*/*", self.prefix), format!("127.0.0.1:5000/{}*/*", self.prefix)];
        super::remove::remove_workspace_images(&self.name, &patterns);
    }
}

pub fn action(report: &Value, id: &str) -> String {
    report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id)
        .map(|n| n["action"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("{id} not in report"))
}

pub fn status(report: &Value, id: &str) -> String {
    report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id)
        .map(|n| n["status"].as_str().unwrap().to_owned())
        .unwrap()
}

/// The registry `cargo xtask engine` runs, and its password (with `+ / ? > ~` in it).
/// Every tag of `repository` in the test registry (none when it has no such repository).
fn all_tags(repository: &str) -> Vec<String> {
    let listed = Command::new("skopeo")
        .args(["list-tags", "--tls-verify=false", "--creds", &format!("trellis:{}", registry_password())])
        .arg(format!("docker://127.0.0.1:5000/{repository}"))
        .output();
    let listed: Value = listed.ok().and_then(|o| serde_json::from_slice(&o.stdout).ok()).unwrap_or_default();
    (listed["Tags"].as_array().into_iter().flatten()).filter_map(|t| t.as_str().map(str::to_owned)).collect()
}

pub fn registry_password() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.cache/engine/registry/password");
    std::fs::read_to_string(path).expect("the registry of `cargo xtask engine` (its password file)")
}

/// A docker config directory holding `auths` for the test registry.
pub fn docker_config(with_credentials: bool) -> tempfile::TempDir {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let auths = if with_credentials {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("trellis:{}", registry_password()));
        format!(r#"{{"auths": {{"127.0.0.1:5000": {{"auth": "{auth}"}}}}}}"#)
    } else {
        r#"{"auths": {}}"#.to_owned()
    };
    std::fs::write(dir.path().join("config.json"), auths).unwrap();
    dir
}

/// One request to the test registry's manifest endpoint, over plain HTTP with basic auth;
/// the raw response, or `None` when the registry is not there.
pub fn registry_request(method: &str, repository: &str, reference: &str) -> Option<String> {
    use base64::Engine as _;
    let password =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../.cache/engine/registry/password")).ok()?;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("trellis:{password}"));
    let mut stream = std::net::TcpStream::connect("127.0.0.1:5000").ok()?;
    write!(
        stream,
        "{method} /v2/{repository}/manifests/{reference} HTTP/1.0\r\nHost: 127.0.0.1:5000\r\nAuthorization: Basic {auth}\r\n\
         Accept: application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, \
         application/vnd.oci.image.manifest.v1+json\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

pub fn header(response: &str, name: &str) -> Option<String> {
    let prefix = format!("{name}: ");
    response.lines().find_map(|l| l.strip_prefix(prefix.as_str()).map(|d| d.trim().to_owned()))
}

/// The digest the registry serves for `repository:tag`.
pub fn served_digest(repository: &str, tag: &str) -> Option<String> {
    registry_request("HEAD", repository, tag).and_then(|r| header(&r, "Docker-Content-Digest"))
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path, replace: &[(String, String)]) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        if entry.file_name() == ".trellis" {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_tree(&source, &target, replace);
            continue;
        }
        std::fs::copy(&source, &target).unwrap(); // keeps the mode (executable scripts)
        if let Ok(text) = std::fs::read_to_string(&source) {
            let replaced = replace.iter().fold(text.clone(), |t, (a, b)| t.replace(a.as_str(), b));
            if replaced != text {
                std::fs::write(&target, replaced).unwrap();
            }
        }
    }
}

/// A loopback HTTP/1.0 service on 127.0.0.1 — in the network namespace at `netns` when given —
/// that answers request `n` (from 0) with the body `respond(n)` (which may block, holding the
/// request) and announces every answered request on the returned channel. The builds under
/// test call it with host networking: it is how a test synchronises with a running step.
pub fn loopback_service(
    netns: Option<&Path>,
    mut respond: impl FnMut(usize) -> &'static str + Send + 'static,
) -> (u16, mpsc::Receiver<usize>) {
    let (answered_tx, answered) = mpsc::channel();
    let (port_tx, port) = mpsc::channel();
    let netns = netns.map(Path::to_path_buf);
    std::thread::spawn(move || {
        if let Some(netns) = netns {
            enter_netns(&netns);
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        port_tx.send(listener.local_addr().unwrap().port()).unwrap();
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { break };
            let mut buffer = [0u8; 1024];
            let _ = stream.read(&mut buffer);
            let body = respond(n);
            let _ = write!(stream, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            let _ = answered_tx.send(n);
        }
    });
    (port.recv().unwrap(), answered)
}

/// Whether the engine under test keeps images in the containerd image store, where an image ID
/// is its manifest's digest (the classic store's is its config's).
pub fn containerd_store() -> bool {
    static STORE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *STORE.get_or_init(|| {
        let output = std::process::Command::new("docker")
            .args(["info", "--format", "{{json .DriverStatus}}"])
            .output()
            .expect("the docker CLI runs");
        String::from_utf8_lossy(&output.stdout).contains("io.containerd.snapshotter")
    })
}

/// The network namespace of the engine under test, where its host-network builds see their
/// 127.0.0.1 (`cargo xtask test` runs each newer engine in one of its own and says which in
/// `TRELLIS_E2E_NETNS`); `None`: the machine's own.
pub fn engine_netns() -> Option<std::path::PathBuf> {
    std::env::var_os("TRELLIS_E2E_NETNS").map(std::path::PathBuf::from)
}

/// Moves the calling thread (only) into the network namespace at `path`.
pub fn enter_netns(path: &Path) {
    use std::os::fd::AsRawFd;
    let namespace = std::fs::File::open(path).unwrap();
    // SAFETY: setns(2) with a namespace file descriptor that is open for the whole call; it
    // changes the network namespace of this thread alone.
    let rc = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// A base for two-platform fixtures: the busybox of the platform being built, picked by the
/// platform build args.
pub const PLATFORM_BASE: &str = "FROM scratch\nARG TARGETARCH\nLABEL e2e=NAME\nCOPY busybox-${TARGETARCH} /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n";

/// A workspace of `base.j2` ([`PLATFORM_BASE`]) and `app.j2` with Debian's static busybox for
/// both platforms in its `busybox/` context.
pub fn two_platform_workspace(label: &str, matrix: &str, app: &str) -> EngineWorkspace {
    let ws = EngineWorkspace::new(label, matrix, &[("base.j2", PLATFORM_BASE), ("app.j2", app)]);
    let dir = ws.fixture.path("busybox");
    std::fs::rename(dir.join("busybox"), dir.join("busybox-amd64")).unwrap();
    let arm64 = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.cache/busybox/busybox-arm64");
    std::fs::copy(arm64, dir.join("busybox-arm64"))
        .expect("Debian's arm64 busybox-static (`cargo xtask test` fetches it into .cache/busybox)");
    ws
}
