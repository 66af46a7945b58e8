//! A dockerd of the test's own, beside the machine's engine: restarting it cannot disturb the
//! tests sharing the machine's engine, and what is built in it is told apart from what is
//! built in the machine's. Its data, exec root and socket are in a temp dir, and it runs in its
//! own network namespace (its docker0 and iptables rules are its own; host networking in its
//! builds, and a `tcp://127.0.0.1` listener, mean that namespace's loopback).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct PrivateEngine {
    dir: tempfile::TempDir,
    netns: String,
    /// A TCP port it also listens on, on its namespace's loopback.
    tcp_port: Option<u16>,
    daemon: Option<Child>,
}

impl PrivateEngine {
    pub fn start() -> Self {
        Self::start_listening(None)
    }

    /// Also listening on `tcp://127.0.0.1:<port>` in its network namespace (plain HTTP, as
    /// `dockerd -H tcp://…` without TLS): reach it from there ([`PrivateEngine::inside`]).
    pub fn start_with_tcp(port: u16) -> Self {
        Self::start_listening(Some(port))
    }

    fn start_listening(tcp_port: Option<u16>) -> Self {
        // Unique per engine, not only per process: `cargo test` runs a file's tests as threads.
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let netns = format!("trellis-e2e-{}-{n}", std::process::id());
        let ip = |args: &[&str]| {
            let status = Command::new("ip").args(args).status().expect("iproute2's ip");
            assert!(status.success(), "ip {args:?}");
        };
        ip(&["netns", "add", &netns]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        let mut engine = Self { dir: tempfile::tempdir().unwrap(), netns, tcp_port, daemon: None };
        engine.up();
        engine
    }

    pub fn netns_path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.netns)
    }

    /// Its unix socket, as `DOCKER_HOST` spells it.
    pub fn host(&self) -> String {
        format!("unix://{}", self.dir.path().join("docker.sock").display())
    }

    /// Its TCP address (in its network namespace), as `DOCKER_HOST` spells it.
    pub fn tcp_host(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.tcp_port.expect("started with a TCP port"))
    }

    /// `command` run in the engine's network namespace (its program, arguments, environment
    /// and directory kept), where its TCP listener is.
    pub fn inside(&self, command: &Command) -> Command {
        let mut wrapped = Command::new("nsenter");
        wrapped
            .arg(format!("--net={}", self.netns_path().display()))
            .arg(command.get_program())
            .args(command.get_args());
        for (name, value) in command.get_envs() {
            match value {
                Some(value) => wrapped.env(name, value),
                None => wrapped.env_remove(name),
            };
        }
        if let Some(dir) = command.get_current_dir() {
            wrapped.current_dir(dir);
        }
        wrapped
    }

    /// Starts dockerd on the same data root (overlay2, else vfs) and returns once it listens
    /// on every address it was given. It is the kind of engine the tests run on: with
    /// `TRELLIS_E2E_DOCKERD_PATH` and `TRELLIS_E2E_DAEMON_CONFIG` (`cargo xtask test` sets
    /// them for the newer engines), that dockerd with that daemon.json, its image store and
    /// storage driver the daemon's default.
    pub fn up(&mut self) {
        let mut hosts = vec![self.host()];
        hosts.extend(self.tcp_port.map(|_| self.tcp_host()));
        let config = std::env::var_os("TRELLIS_E2E_DAEMON_CONFIG");
        let drivers: &[Option<&str>] = match config {
            Some(_) => &[None],
            None => &[Some("overlay2"), Some("vfs")],
        };
        for driver in drivers {
            let dir = self.dir.path();
            // nsenter, not `ip netns exec`: that one also remounts /sys, hiding the cgroups.
            let mut command = Command::new("nsenter");
            command.arg(format!("--net={}", self.netns_path().display())).arg("dockerd");
            if let Some(driver) = driver {
                command.args(["--storage-driver", driver]);
            }
            if let Some(config) = &config {
                command.arg("--config-file").arg(config);
            }
            if let Some(path) = std::env::var_os("TRELLIS_E2E_DOCKERD_PATH") {
                command.env("PATH", path);
            }
            command
                .arg("--data-root")
                .arg(dir.join("data"))
                .arg("--exec-root")
                .arg(dir.join("exec"))
                .arg("--pidfile")
                .arg(dir.join("dockerd.pid"));
            for host in &hosts {
                command.args(["-H", host]);
            }
            let mut daemon = command
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("dockerd (cargo xtask engine installs docker.io)");
            let (tx, listening) = mpsc::channel();
            let log = daemon.stderr.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(log).lines().map_while(Result::ok) {
                    if line.contains("API listen on") {
                        let _ = tx.send(());
                    }
                }
            });
            // The channel closes without a message when dockerd exits (a driver it cannot use).
            if hosts.iter().all(|_| listening.recv_timeout(Duration::from_secs(120)).is_ok()) {
                self.daemon = Some(daemon);
                return;
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        panic!("no private dockerd would start");
    }

    /// SIGTERM, as `systemctl restart docker` sends: dockerd stops its containers and exits.
    pub fn down(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            Command::new("kill").args(["-TERM", &daemon.id().to_string()]).status().unwrap();
            daemon.wait().unwrap();
        }
    }

    /// The docker CLI against this engine; its trimmed stdout.
    pub fn docker(&self, args: &[&str]) -> String {
        let output = Command::new("docker").args(["-H", &self.host()]).args(args).output().unwrap();
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        self.down();
        let _ = Command::new("ip").args(["netns", "delete", &self.netns]).status();
    }
}
