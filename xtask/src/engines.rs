//! The three engines trellis is tested on (DESIGN §12), all started by `cargo xtask engine`:
//!
//! - `bookworm`: Debian bookworm's Docker 20.10, the machine's own daemon
//!   (`/var/run/docker.sock`, classic image store), started by `engine.rs`;
//! - `trixie`: Debian trixie's Docker 26.1.5 with the classic image store;
//! - `trixie-containerd`: the same with the containerd image store (`containerd-snapshotter`),
//!   what Docker Engine 29 gives every new install and Docker Desktop uses.
//!
//! Trixie's packages (docker.io, docker-cli, containerd, docker-buildx, cosign) are fetched
//! with an apt state of their own under `.cache/trixie/` (the machine's apt state stays
//! bookworm's) and unpacked there; their `runc` needs a newer glibc than bookworm's and is left
//! out (bookworm's runc runs their containers). Each trixie daemon runs in a network namespace
//! of its own (`trellis-<name>`): two daemons in one namespace fight over `docker0`. Its socket,
//! exec root and pid file are under `/run/trellis/<name>/` (short paths: unix sockets have a
//! 108-byte limit), its data under `.cache/engines/<name>/`. The registry on the machine's
//! 127.0.0.1:5000 is reached from inside the namespace through a pair of `socat` processes
//! (a TCP listener on the namespace's loopback → a unix socket → the machine's loopback), so
//! image references name the same registry on every engine.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::engine::{spawn_daemon, stop_pid, wait_until};
use crate::inputs::{apt_install, installed, is_root};
use crate::{Result, root};

/// The engines, in the order `cargo xtask test` runs its passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Bookworm,
    Trixie,
    TrixieContainerd,
}

pub const ALL: [Engine; 3] = [Engine::TrixieContainerd, Engine::Bookworm, Engine::Trixie];

/// The engine the main job publishes from and the whole test suite runs on: what new users
/// have (Engine 29 and Docker Desktop default to the containerd image store).
pub const DEFAULT: Engine = Engine::TrixieContainerd;

/// Trixie's packages: the engine, its CLI (for tests that run `docker`), containerd, buildx,
/// compose (v2: bookworm's 1.29 reads `ContainerConfig`, which Docker 25+ no longer reports)
/// and cosign (the independent verifier of signatures).
const TRIXIE_PACKAGES: &[&str] =
    &["docker.io", "docker-cli", "containerd", "docker-buildx", "docker-compose", "cosign"];

/// A binary of each package that must be unpacked: an older unpack lacking one is redone.
const TRIXIE_BINARIES: &[&str] = &["usr/sbin/dockerd", "usr/bin/docker", "usr/bin/docker-compose", "usr/bin/cosign"];

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Bookworm => "bookworm",
            Engine::Trixie => "trixie",
            Engine::TrixieContainerd => "trixie-containerd",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        ALL.into_iter().find(|engine| engine.name() == name)
    }

    /// What the engine is, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Engine::Bookworm => "Debian bookworm's Docker 20.10 (classic image store)",
            Engine::Trixie => "Debian trixie's Docker 26.1.5 (classic image store)",
            Engine::TrixieContainerd => "Debian trixie's Docker 26.1.5 (containerd image store)",
        }
    }

    /// `DOCKER_HOST` for it.
    pub fn host(self) -> String {
        match self {
            Engine::Bookworm => "unix:///var/run/docker.sock".to_owned(),
            _ => format!("unix://{}", self.run_dir().join("docker.sock").display()),
        }
    }

    fn run_dir(self) -> PathBuf {
        Path::new("/run/trellis").join(self.name())
    }

    fn data_dir(self) -> PathBuf {
        root().join(".cache/engines").join(self.name())
    }

    fn netns(self) -> String {
        format!("trellis-{}", self.name())
    }

    /// Its network namespace, where its host networking and published ports are (`None`: the
    /// machine's own).
    pub fn netns_path(self) -> Option<PathBuf> {
        match self {
            Engine::Bookworm => None,
            _ => Some(Path::new("/var/run/netns").join(self.netns())),
        }
    }

    /// The daemon's settings: BuildKit's cache capped (see `engine.rs`), and the image store.
    fn daemon_json(self) -> &'static str {
        match self {
            Engine::TrixieContainerd => {
                r#"{ "features": { "containerd-snapshotter": true }, "builder": { "gc": { "enabled": true, "defaultKeepStorage": "6GB" } } }"#
            }
            _ => r#"{ "builder": { "gc": { "enabled": true, "defaultKeepStorage": "6GB" } } }"#,
        }
    }

    /// The PATH a dockerd of this engine runs with, and the tests run with: trixie's binaries
    /// first (the daemon starts its own containerd; `docker` and `docker-compose` are the
    /// versions that go with the engine). For the tests' private engines too.
    pub fn dockerd_path(self) -> Option<String> {
        match self {
            Engine::Bookworm => None,
            _ => {
                let unpacked = trixie_root();
                let path = std::env::var("PATH").unwrap_or_default();
                Some(format!("{}:{}:{path}", unpacked.join("usr/bin").display(), unpacked.join("usr/sbin").display()))
            }
        }
    }

    /// The daemon.json a private dockerd of this engine's kind takes (the tests' own engines).
    pub fn config_file(self) -> Result<PathBuf> {
        let dir = root().join(".cache/engines");
        fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let path = dir.join(format!("{}.json", self.name()));
        fs::write(&path, self.daemon_json()).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    }
}

/// Whether `host`'s engine answers.
pub fn answers(host: &str) -> bool {
    Command::new("docker")
        .args(["-H", host, "info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Starts a trixie engine (the bookworm one is `engine.rs`'s) when it does not answer.
pub fn start(engine: Engine) -> Result {
    if engine == Engine::Bookworm {
        return Ok(());
    }
    // Unpacked also when the engine runs (another checkout started it): the tests start
    // private engines of its kind from this checkout's copy.
    let unpacked = trixie()?;
    if answers(&engine.host()) {
        return Ok(());
    }
    if !is_root() {
        return Err(format!("{} is not running and starting it needs root", engine.describe()));
    }
    if !installed("socat") {
        apt_install("socat")?;
    }
    let (run, data) = (engine.run_dir(), engine.data_dir());
    for dir in [&run, &data] {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let netns = engine.netns();
    let netns_path = engine.netns_path().unwrap_or_default();
    if !netns_path.exists() {
        crate::run(ip(&["netns", "add", &netns]))?;
    }
    crate::run(ip(&["-n", &netns, "link", "set", "lo", "up"]))?;
    let config = engine.config_file()?;
    let log = data.join("dockerd.log");
    let pid = run.join("dockerd.pid");
    // nsenter, not `ip netns exec`: that one also remounts /sys, hiding the cgroups.
    let net = format!("--net={}", netns_path.display());
    let dockerd = unpacked.join("usr/sbin/dockerd");
    let args = [
        net.as_str(),
        "env",
        &format!("PATH={}", engine.dockerd_path().unwrap_or_default()),
        &dockerd.to_string_lossy(),
        &format!("--config-file={}", config.display()),
        &format!("--data-root={}", data.join("data").display()),
        &format!("--exec-root={}", run.join("exec").display()),
        &format!("--pidfile={}", run.join("dockerd.real.pid").display()),
        "-H",
        &engine.host(),
    ];
    spawn_daemon("nsenter", &args, &log, &pid)?;
    let host = engine.host();
    wait_until(engine.describe(), Duration::from_secs(60), || answers(&host))
        .map_err(|e| format!("{e}; see {}", log.display()))?;
    forward_registry(engine, &netns_path)?;
    eprintln!("xtask: started {} on {host} (log: {})", engine.describe(), log.display());
    Ok(())
}

/// The machine's registry, 127.0.0.1:5000, on the namespace's loopback too.
fn forward_registry(engine: Engine, netns_path: &Path) -> Result {
    let run = engine.run_dir();
    let socket = run.join("registry.sock");
    let _ = fs::remove_file(&socket);
    spawn_daemon(
        "socat",
        &[&format!("UNIX-LISTEN:{},fork", socket.display()), &format!("TCP:{}", crate::engine::REGISTRY)],
        &engine.data_dir().join("registry-outside.log"),
        &run.join("registry-outside.pid"),
    )?;
    wait_until("the registry forwarder", Duration::from_secs(10), || socket.exists())?;
    let port = crate::engine::REGISTRY.rsplit_once(':').map_or("5000", |(_, port)| port);
    spawn_daemon(
        "nsenter",
        &[
            &format!("--net={}", netns_path.display()),
            "socat",
            &format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr"),
            &format!("UNIX-CONNECT:{}", socket.display()),
        ],
        &engine.data_dir().join("registry-inside.log"),
        &run.join("registry-inside.pid"),
    )?;
    let inside = |_: ()| {
        Command::new("nsenter")
            .arg(format!("--net={}", netns_path.display()))
            .args(["socat", "-u", "OPEN:/dev/null", &format!("TCP:127.0.0.1:{port}")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    wait_until("the registry inside the engine's namespace", Duration::from_secs(10), || inside(()))
}

pub fn stop(engine: Engine) {
    if engine == Engine::Bookworm {
        return;
    }
    let run = engine.run_dir();
    for pid in ["registry-inside.pid", "registry-outside.pid"] {
        stop_pid(&run.join(pid));
    }
    // The daemon itself (nsenter execs it: the spawned pid is dockerd's).
    stop_pid(&run.join("dockerd.pid"));
}

fn ip(args: &[&str]) -> Command {
    let mut command = Command::new("ip");
    command.args(args);
    command
}

fn trixie_root() -> PathBuf {
    root().join(".cache/trixie/root")
}

/// Trixie's packages, fetched and unpacked once under `.cache/trixie/`; the unpacked tree.
pub fn trixie() -> Result<PathBuf> {
    let dir = root().join(".cache/trixie");
    let unpacked = trixie_root();
    if TRIXIE_BINARIES.iter().all(|binary| unpacked.join(binary).exists()) {
        return Ok(unpacked);
    }
    for package in ["apt", "dpkg"] {
        if !installed(package) {
            return Err(format!("Debian's {package} is needed to fetch trixie's Docker"));
        }
    }
    let (lists, archives, debs) = (dir.join("lists"), dir.join("archives"), dir.join("debs"));
    for d in [lists.join("partial"), archives.join("partial"), debs.clone()] {
        fs::create_dir_all(&d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    let sources = dir.join("sources.list");
    fs::write(
        &sources,
        format!("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {} trixie main\n", debian_mirror()),
    )
    .map_err(|e| e.to_string())?;
    let apt = |args: &[&str]| {
        let mut command = Command::new("apt-get");
        command
            .arg(format!("-o=Dir::Etc::sourcelist={}", sources.display()))
            .arg("-o=Dir::Etc::sourceparts=-")
            .arg(format!("-o=Dir::State::Lists={}", lists.display()))
            .arg(format!("-o=Dir::Cache::archives={}", archives.display()))
            .arg("-o=Dir::State::status=/dev/null")
            .arg("-o=Debug::NoLocking=1")
            .arg("-q")
            .args(args)
            .current_dir(&debs);
        command
    };
    crate::run(apt(&["update"]))?;
    crate::run(apt(&[&["download"], TRIXIE_PACKAGES].concat()))?;
    let partial = dir.join("root.partial");
    let _ = fs::remove_dir_all(&partial);
    for entry in fs::read_dir(&debs).map_err(|e| e.to_string())? {
        let deb = entry.map_err(|e| e.to_string())?.path();
        let mut unpack = Command::new("dpkg-deb");
        unpack.arg("-x").arg(&deb).arg(&partial);
        crate::run(unpack)?;
    }
    // trixie's runc needs glibc 2.38; bookworm's (docker.io's dependency here) runs containers.
    for runc in ["usr/sbin/runc", "usr/bin/runc"] {
        let _ = fs::remove_file(partial.join(runc));
    }
    let _ = fs::remove_dir_all(&unpacked);
    fs::rename(&partial, &unpacked).map_err(|e| e.to_string())?;
    Ok(unpacked)
}

/// The machine's Debian mirror, as its apt sources name it.
fn debian_mirror() -> String {
    let sources = ["/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"];
    for text in sources.iter().filter_map(|path| fs::read_to_string(path).ok()) {
        for line in text.lines().map(str::trim) {
            if let Some(uri) = line.strip_prefix("URIs:").map(str::trim).and_then(|u| u.split_whitespace().next())
                && !uri.contains("security")
            {
                return uri.to_owned();
            }
            if let Some(rest) = line.strip_prefix("deb ") {
                let uri = rest.split_whitespace().find(|word| word.contains("://"));
                if let Some(uri) = uri.filter(|uri| !uri.contains("security")) {
                    return uri.to_owned();
                }
            }
        }
    }
    "http://deb.debian.org/debian".to_owned()
}
