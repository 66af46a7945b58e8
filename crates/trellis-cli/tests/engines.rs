//! The engine is selected as the docker CLI selects it: `DOCKER_HOST` (unix, tcp, ssh), else
//! `DOCKER_CONTEXT`, else the docker config's `currentContext`. Each case builds a tiny
//! workspace with a second dockerd of the test's own as the selected engine, and checks that
//! the image is in that engine and not in the machine's (`/var/run/docker.sock`, which every
//! case could reach just as well). Readiness is dockerd's "API listen on" and sshd's "Server
//! listening on" lines, never a sleep.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::engine::*;
use common::private_engine::PrivateEngine;

const MATRIX: &str = r#"
settings { name "NAME"; retries 0; }
image "tiny" {
    repository "PREFIX/tiny"
    dockerfile "tiny.j2"
    context "busybox"
    tag "latest"
}
"#;

/// A tiny workspace, built by `trellis build` as `configure` sets it up; then its image must be
/// in `engine` and nowhere in the machine's engine.
fn builds_in(engine: &PrivateEngine, label: &str, configure: impl FnOnce(Command) -> Command) {
    let ws = EngineWorkspace::new(label, MATRIX, &[("tiny.j2", BASE)]);
    let output = configure(ws.trellis(&["build"])).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{label}: {stderr}");
    assert_eq!(status(&ws.report(), "build:tiny"), "passed", "{label}");
    let reference = ws.reference("tiny", "latest");
    let there = engine.docker(&["image", "inspect", "-f", "{{.Id}}", &reference]);
    assert!(there.starts_with("sha256:"), "{label}: {reference} is not in the selected engine: {there:?}");
    let listed = engine.docker(&["images", "-q", "--filter", &format!("label=dev.trellis.workspace={}", ws.name)]);
    assert!(!listed.is_empty(), "{label}: the selected engine lists the workspace's image");
    assert_eq!(image_id(&reference), None, "{label}: the machine's engine has {reference}");
    assert_eq!(ws.images(), "", "{label}: the machine's engine lists images of the workspace");
}

/// A docker config directory of the test's own: the user's `~/.docker` never counts.
fn docker_config() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    dir
}

/// The docker CLI with `config` as its configuration directory: it writes the contexts the
/// way trellis must read them.
fn docker_with_config(config: &Path, args: &[&str]) {
    let output =
        Command::new("docker").env("DOCKER_CONFIG", config).env_remove("DOCKER_HOST").args(args).output().unwrap();
    assert!(output.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn docker_host_selects_the_engine_by_unix_socket_and_by_tcp() {
    // A fresh network namespace: nothing else listens on its loopback.
    let engine = PrivateEngine::start_with_tcp(2375);
    let config = docker_config();
    builds_in(&engine, "unix", |mut command| {
        command.env("DOCKER_HOST", engine.host()).env("DOCKER_CONFIG", config.path());
        command
    });
    // dockerd listens on its namespace's loopback, so trellis runs there (the machine's engine
    // stays reachable through its socket).
    builds_in(&engine, "tcp", |mut command| {
        command.env("DOCKER_HOST", engine.tcp_host()).env("DOCKER_CONFIG", config.path());
        engine.inside(&command)
    });
}

#[test]
fn the_current_context_and_docker_context_select_the_engine() {
    let engine = PrivateEngine::start();
    let config = docker_config();
    let host = format!("host={}", engine.host());
    docker_with_config(config.path(), &["context", "create", "second", "--docker", &host]);
    docker_with_config(
        config.path(),
        &["context", "create", "machine", "--docker", "host=unix:///var/run/docker.sock"],
    );

    docker_with_config(config.path(), &["context", "use", "second"]);
    builds_in(&engine, "current-context", |mut command| {
        command.env_remove("DOCKER_HOST").env_remove("DOCKER_CONTEXT").env("DOCKER_CONFIG", config.path());
        command
    });

    // The config's current context is the machine's engine; DOCKER_CONTEXT overrides it.
    docker_with_config(config.path(), &["context", "use", "machine"]);
    builds_in(&engine, "docker-context", |mut command| {
        command.env_remove("DOCKER_HOST").env("DOCKER_CONTEXT", "second").env("DOCKER_CONFIG", config.path());
        command
    });
}

#[test]
fn docker_host_over_ssh_selects_the_engine_on_the_far_side() {
    let engine = PrivateEngine::start();
    // The far side's `docker system dial-stdio` reaches the second engine, as a remote
    // machine's docker reaches its own.
    let sshd = Sshd::start(&engine.host());
    let config = docker_config();
    builds_in(&engine, "ssh", |mut command| {
        command
            .env("DOCKER_HOST", format!("ssh://{}@127.0.0.1:{}", sshd.user, sshd.port))
            .env("DOCKER_CONFIG", config.path())
            .env("PATH", sshd.path_with_client());
        command
    });
    // trellis ended its ssh processes (bollard's pooled connections, the BuildKit build's) as
    // it exited; they are killed synchronously, so only their exit is waited for.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !ssh_clients(sshd.port).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(ssh_clients(sshd.port), Vec::<String>::new(), "ssh processes outlived trellis");
}

/// The command lines of the `ssh … dial-stdio` processes to this port (a zombie's is empty).
fn ssh_clients(port: u16) -> Vec<String> {
    let needle = format!(" -p {port} -- 127.0.0.1 docker system dial-stdio");
    (std::fs::read_dir("/proc").unwrap().flatten())
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .filter(|command| command.contains(&needle))
        .collect()
}

#[test]
fn an_engine_that_cannot_be_selected_is_named() {
    let fixture = common::Fixture::new(&[
        (
            "matrix.kdl",
            "settings { name \"unselected\"; }\nimage \"a\" {\n    repository \"x/a\"\n    dockerfile \"a.j2\"\n    context \"ctx\"\n    tag \"latest\"\n}\n",
        ),
        ("a.j2", "FROM scratch\nCOPY f /f\n"),
        ("ctx/f", "f"),
    ]);
    let config = docker_config();
    let build = |env: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_trellis"));
        command.arg("build").current_dir(fixture.root()).env("NO_COLOR", "1").env_remove("TRELLIS_ENGINE");
        command.env_remove("DOCKER_HOST").env_remove("DOCKER_CONTEXT").env("DOCKER_CONFIG", config.path());
        let output = command.envs(env.iter().copied()).output().unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
    };

    let (code, stderr) = build(&[("DOCKER_HOST", "npipe:////./pipe/docker_engine")]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("not npipe://"), "{stderr}");

    let (code, stderr) = build(&[("DOCKER_CONTEXT", "nowhere")]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("context \"nowhere\" (DOCKER_CONTEXT=nowhere) does not exist"), "{stderr}");

    std::fs::write(config.path().join("config.json"), r#"{"currentContext": "gone"}"#).unwrap();
    let (code, stderr) = build(&[]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("current context \"gone\" is not found"), "{stderr}");
}

/// A throwaway sshd on a free port of 127.0.0.1 that lets the current user in with a key made
/// for the test, and an `ssh` for the client side that uses that key and knows the host key.
/// OpenSSH reads `~/.ssh/config` from the passwd entry's home, not `$HOME`, so the client's
/// options cannot come from a config under a temporary `HOME`: a wrapper named `ssh` first on
/// `PATH` adds `-F <config>`, the options a user's `~/.ssh/config` would hold, while trellis
/// runs `ssh` exactly as the docker CLI does.
struct Sshd {
    dir: tempfile::TempDir,
    daemon: Child,
    port: u16,
    user: String,
}

impl Sshd {
    fn start(engine_host: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        for key in ["host_key", "client_key"] {
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "trellis-e2e", "-f"])
                .arg(path(key))
                .status()
                .expect("ssh-keygen (openssh-client)");
            assert!(status.success());
        }
        std::fs::copy(path("client_key.pub"), path("authorized_keys")).unwrap();
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap().trim().to_owned();
        // sshd's privilege separation directory, which the service (not the package) makes.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let sshd = Path::new("/usr/sbin/sshd");
        assert!(sshd.exists(), "sshd (cargo xtask engine installs openssh-server)");
        for _ in 0..5 {
            let port = free_port();
            let config = format!(
                "ListenAddress 127.0.0.1:{port}\nHostKey {}\nAuthorizedKeysFile {}\n\
                 # The temp dir's parents (/tmp) are world-writable.\nStrictModes no\n\
                 UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nPidFile none\nSetEnv DOCKER_HOST={engine_host}\n",
                path("host_key").display(),
                path("authorized_keys").display(),
            );
            std::fs::write(path("sshd_config"), config).unwrap();
            let mut daemon = Command::new(sshd)
                .args(["-D", "-e", "-f"])
                .arg(path("sshd_config"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let (tx, listening) = mpsc::channel();
            let log = daemon.stderr.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(log).lines().map_while(Result::ok) {
                    if line.contains("Server listening on") {
                        let _ = tx.send(());
                    }
                }
            });
            // The channel closes without a message when sshd exits (the port was taken since).
            if listening.recv_timeout(Duration::from_secs(60)).is_ok() {
                let host_key = std::fs::read_to_string(path("host_key.pub")).unwrap();
                std::fs::write(path("known_hosts"), format!("[127.0.0.1]:{port} {host_key}")).unwrap();
                let client = format!(
                    "Host *\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  \
                     StrictHostKeyChecking yes\n  BatchMode yes\n",
                    path("client_key").display(),
                    path("known_hosts").display()
                );
                std::fs::write(path("ssh_config"), client).unwrap();
                let real =
                    String::from_utf8(Command::new("sh").args(["-c", "command -v ssh"]).output().unwrap().stdout)
                        .unwrap()
                        .trim()
                        .to_owned();
                assert!(!real.is_empty(), "ssh (openssh-client)");
                std::fs::create_dir_all(path("bin")).unwrap();
                let wrapper = format!("#!/bin/sh\nexec {real} -F {} \"$@\"\n", path("ssh_config").display());
                std::fs::write(path("bin/ssh"), wrapper).unwrap();
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(path("bin/ssh"), std::fs::Permissions::from_mode(0o755)).unwrap();
                return Self { dir, daemon, port, user };
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        panic!("no sshd would start on a loopback port");
    }

    /// `PATH` with the client wrapper first.
    fn path_with_client(&self) -> std::ffi::OsString {
        let mut paths = vec![self.dir.path().join("bin")];
        paths.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect::<Vec<PathBuf>>());
        std::env::join_paths(paths).unwrap()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// A port of 127.0.0.1 nothing listens on now (sshd reports it if another takes it first).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
