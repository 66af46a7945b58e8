//! `cargo xtask engine`: the Docker Engines and the registry for the main job and the tests.
//! This file starts the machine's own engine (Debian bookworm's 20.10 on /var/run/docker.sock)
//! and the registry; `engines.rs` the newer engines beside it.
//!
//! When `docker info` does not answer, starts `dockerd` (overlay2, falling back to vfs);
//! when 127.0.0.1:5000 does not answer, starts Debian's `docker-registry` there with htpasswd
//! auth (user `trellis`, a password with `+ / ? > ~` in it, so that credential encoding is
//! exercised). Installs docker.io, docker-registry, apache2-utils, busybox-static and docker-compose
//! when missing and root; qemu-user-static + binfmt-support so that linux/arm64 images build
//! and run here (checking that the arm64 handler is enabled); and skopeo + jq, with which the
//! main job's verification reads the registry independently of trellis; openssh-server, whose
//! `sshd` the `ssh://` engine test runs on a loopback port of its own.
//! Idempotent; state, logs and pids under `.cache/engine/`.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::engines::Engine;
use crate::inputs::{apt_install, installed, is_root};
use crate::{Result, root};

pub const REGISTRY: &str = "127.0.0.1:5000";
pub const REGISTRY_USER: &str = "trellis";
/// Characters that break naive base64 or URL encoding of credentials.
pub const REGISTRY_PASSWORD: &str = "tr+ll/s?pass>w~rd";

fn dir() -> PathBuf {
    root().join(".cache/engine")
}

fn docker_answers() -> bool {
    Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output().is_ok_and(|o| o.status.success())
}

fn registry_answers() -> bool {
    std::net::TcpStream::connect_timeout(&REGISTRY.parse().expect("a socket address"), Duration::from_millis(300))
        .is_ok()
}

/// Waits for a service to come up; a daemon's start-up has no event to wait on.
pub(crate) fn wait_until(what: &str, timeout: Duration, ready: impl Fn() -> bool) -> Result {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("{what} did not come up within {}s", timeout.as_secs()))
}

/// Starts a long-running program detached from this process, logging to `log`.
pub(crate) fn spawn_daemon(program: &str, args: &[&str], log: &PathBuf, pid_file: &PathBuf) -> Result {
    let out = fs::File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let child = Command::new("setsid")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    fs::write(pid_file, child.id().to_string()).map_err(|e| e.to_string())?;
    Ok(())
}

/// Starts the machine's engine, the registry and every engine of `engines` that is not
/// running (see `engines.rs`).
pub fn start(engines: &[Engine]) -> Result {
    fs::create_dir_all(dir()).map_err(|e| e.to_string())?;
    // The end-to-end tests make their small images FROM scratch with Debian's static busybox;
    // the decoupled-runtime example runs its code and runtime images with docker-compose;
    // verify.rs reads image indexes from the registry with skopeo and jq; the ssh:// engine
    // test (crates/trellis-cli/tests/engines.rs) runs a throwaway sshd of its own.
    for package in ["busybox-static", "docker-compose", "skopeo", "jq", "openssh-server"] {
        if !installed(package) {
            apt_install(package)?;
        }
    }
    start_docker()?;
    start_registry()?;
    for engine in engines {
        crate::engines::start(*engine)?;
    }
    emulation()?;
    // The registry's credentials as a docker config, for `DOCKER_CONFIG` (the main job and the
    // tests that push as the family does).
    docker_config()?;
    let mut hosts = String::new();
    for engine in engines {
        hosts.push_str(&format!("\n  {:<18} {}  {}", engine.name(), engine.host(), engine.describe()));
    }
    println!(
        "engine: the engines answer (DOCKER_HOST for each):{hosts}\n\
         registry on {REGISTRY} (user {REGISTRY_USER}, password in .cache/engine/registry/password,\n\
         a docker config with it in .cache/engine/docker)\n\
         stop them with: cargo xtask engine --stop"
    );
    Ok(())
}

/// Foreign platforms (linux/arm64 on this amd64 machine) run under the kernel's binfmt_misc
/// with Debian's qemu-user-static, whose handlers carry the `F` flag (they then work inside
/// containers too). Installs the packages when missing, mounts binfmt_misc when it is not,
/// and checks that the arm64 handler is enabled. The arm64 rootfs needs it too (debootstrap's
/// second stage runs arm64 binaries).
pub(crate) fn emulation() -> Result {
    for package in ["qemu-user-static", "binfmt-support"] {
        if !installed(package) {
            apt_install(package)?;
        }
    }
    let binfmt = std::path::Path::new("/proc/sys/fs/binfmt_misc");
    if !binfmt.join("status").exists() && is_root() {
        let mut mount = Command::new("mount");
        mount.args(["-t", "binfmt_misc", "binfmt_misc"]).arg(binfmt);
        crate::run(mount)?;
    }
    let handler = binfmt.join("qemu-aarch64");
    if !handler.exists() && is_root() {
        // The package registers its handlers when binfmt_misc was mounted at install time.
        let mut import = Command::new("update-binfmts");
        import.args(["--import", "qemu-aarch64"]);
        let _ = crate::run(import);
        let mut enable = Command::new("update-binfmts");
        enable.args(["--enable", "qemu-aarch64"]);
        let _ = crate::run(enable);
    }
    match fs::read_to_string(&handler) {
        Ok(text) if text.lines().next() == Some("enabled") => Ok(()),
        Ok(text) => Err(format!("{}: {}", handler.display(), text.lines().next().unwrap_or("unreadable"))),
        Err(e) => Err(format!(
            "no arm64 emulation ({}: {e}): install qemu-user-static and binfmt-support as root",
            handler.display()
        )),
    }
}

fn start_docker() -> Result {
    if docker_answers() {
        return Ok(());
    }
    if !is_root() {
        return Err("no Docker engine answers and starting one needs root (or set DOCKER_HOST)".to_owned());
    }
    if !installed("docker.io") {
        apt_install("docker.io")?;
    }
    // BuildKit keeps every context it received and every layer it built in its cache; the
    // family sends hundreds of MB per build (both rootfs tarballs), and the test suites build
    // hundreds of images: without a cap the cache fills the disk within one `cargo xtask test`.
    let config = dir().join("daemon.json");
    let settings = r#"{ "builder": { "gc": { "enabled": true, "defaultKeepStorage": "6GB" } } }"#;
    fs::write(&config, settings).map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    let config = format!("--config-file={}", config.display());
    for driver in ["overlay2", "vfs"] {
        let log = dir().join(format!("dockerd-{driver}.log"));
        let pid = dir().join("dockerd.pid");
        spawn_daemon("dockerd", &[&format!("--storage-driver={driver}"), &config], &log, &pid)?;
        if wait_until("dockerd", Duration::from_secs(30), docker_answers).is_ok() {
            eprintln!("xtask: started dockerd with the {driver} storage driver (log: {})", log.display());
            return Ok(());
        }
        stop_pid(&pid);
        eprintln!("xtask: dockerd with {driver} did not come up; see {}", log.display());
    }
    Err("dockerd did not start with overlay2 nor vfs".to_owned())
}

fn start_registry() -> Result {
    let registry = dir().join("registry");
    fs::create_dir_all(registry.join("data")).map_err(|e| e.to_string())?;
    // The tests read the password here, also when another checkout started the registry.
    fs::write(registry.join("password"), REGISTRY_PASSWORD).map_err(|e| e.to_string())?;
    if registry_answers() {
        return Ok(());
    }
    if !is_root() {
        return Err(format!("no registry answers on {REGISTRY} and starting one needs root"));
    }
    for package in ["docker-registry", "apache2-utils"] {
        if !installed(package) {
            apt_install(package)?;
        }
    }
    let htpasswd = registry.join("htpasswd");
    // Not through `run`, which echoes the command: the password stays out of every log.
    let made = Command::new("htpasswd")
        .args(["-Bbc"])
        .arg(&htpasswd)
        .args([REGISTRY_USER, REGISTRY_PASSWORD])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run htpasswd: {e}"))?;
    if !made.success() {
        return Err("htpasswd failed".to_owned());
    }
    let config = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n\
         http:\n  addr: {REGISTRY}\nauth:\n  htpasswd:\n    realm: trellis\n    path: {htpasswd}\n",
        data = registry.join("data").display(),
        htpasswd = htpasswd.display()
    );
    let config_path = registry.join("config.yml");
    fs::write(&config_path, config).map_err(|e| e.to_string())?;
    let config_arg = config_path.to_string_lossy().into_owned();
    spawn_daemon(
        "docker-registry",
        &["serve", &config_arg],
        &registry.join("registry.log"),
        &registry.join("registry.pid"),
    )?;
    wait_until("the registry", Duration::from_secs(30), registry_answers)?;
    eprintln!("xtask: started the registry on {REGISTRY}");
    Ok(())
}

/// SIGTERM, then waits for the process to be gone: a dockerd still shutting down holds its
/// pid file and containerd, and a new one started meanwhile fails (and would fall back to vfs).
pub(crate) fn stop_pid(pid_file: &PathBuf) {
    let Ok(pid) = fs::read_to_string(pid_file) else { return };
    let pid = pid.trim().to_owned();
    let _ = Command::new("kill").arg(&pid).status();
    let alive = || Command::new("kill").args(["-0", &pid]).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if wait_until("the process to exit", Duration::from_secs(60), || !alive()).is_err() {
        eprintln!("xtask: process {pid} did not exit within 60s");
    }
    let _ = fs::remove_file(pid_file);
}

pub fn stop() -> Result {
    for engine in crate::engines::ALL {
        crate::engines::stop(engine);
    }
    stop_pid(&dir().join("registry/registry.pid"));
    stop_pid(&dir().join("dockerd.pid"));
    println!("engine: stopped what `cargo xtask engine` started");
    Ok(())
}

/// A docker config directory holding the local registry's credentials, for `DOCKER_CONFIG`.
pub fn docker_config() -> Result<PathBuf> {
    use base64::Engine as _;
    let config = dir().join("docker");
    fs::create_dir_all(&config).map_err(|e| e.to_string())?;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}"));
    let json = format!("{{\"auths\": {{\"{REGISTRY}\": {{\"auth\": \"{auth}\"}}}}}}\n");
    fs::write(config.join("config.json"), json).map_err(|e| e.to_string())?;
    Ok(config)
}
