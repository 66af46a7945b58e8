//! Faults on the real engine: trellis killed with SIGKILL mid-test, and the engine itself
//! restarted mid-build. Either way the next run converges: what finished is kept, what did
//! not is redone, and a run after that has nothing to do. Synchronisation is by a loopback
//! gate the builds call (it holds the first request until released) and by dockerd's own
//! "API listen on" line, never by sleeping.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::engine::*;

/// A loopback HTTP service whose first request is held until `release` is sent (or dropped)
/// and then answered "fail"; every later request is answered "ok". `started` fires when the
/// first request arrives. With `netns`, it listens on that network namespace's loopback.
fn gate_service(netns: Option<&Path>) -> (u16, mpsc::Receiver<()>, mpsc::Sender<()>) {
    let (started_tx, started) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    let (port, _) = loopback_service(netns, move |n| {
        if n > 0 {
            return "ok";
        }
        let _ = started_tx.send(());
        let _ = released.recv();
        "fail"
    });
    (port, started, release)
}

#[test]
fn kill_9_during_a_test_then_the_next_run_converges() {
    let (port, started, release) = gate_service(None);
    let matrix = r#"
settings { name "NAME"; retries 0; }
image "gated" {
    repository "PREFIX/gated"
    dockerfile "gated.j2"
    context "busybox"
    tag "latest"
    test "gate" network="host" {
        run "wget -qO- http://127.0.0.1:PORT/ | grep -qx ok"
    }
}
"#
    .replace("PORT", &port.to_string());
    let ws = EngineWorkspace::new("kill9", &matrix, &[("gated.j2", BASE)]);
    let mut child = ws.trellis(&["build"]).spawn().unwrap();
    started.recv_timeout(Duration::from_secs(300)).expect("the test layer reached the gate");
    child.kill().unwrap(); // SIGKILL: no cleanup, no report, the journal as it was
    child.wait().unwrap();
    // The orphaned test step goes on in the daemon: it gets "fail" and ends there.
    drop(release);

    let (code, stderr) = ws.build(&[]);
    assert_eq!(code, Some(0), "{stderr}");
    let report = ws.report();
    assert_eq!(action(&report, "build:gated"), "skip", "the build finished before the kill and is kept");
    assert_eq!(status(&report, "test:gated/gate"), "passed");
    assert_eq!(status(&report, "tag:gated"), "passed");
    let tested = report["nodes"].as_array().unwrap().iter().find(|n| n["id"] == "test:gated/gate").unwrap()["image"]
        .as_str()
        .map(str::to_owned);
    assert_eq!(image_id(&ws.reference("gated", "latest")), tested, "the tag names the tested image");
    assert_eq!(ws.test_images(), "", "no test image is left");

    let (code, stderr) = ws.build(&[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("0 passed, 0 flaky, 0 failed, 0 blocked, 4 up to date"), "{stderr}");
}

/// A dockerd of the test's own, so that restarting it cannot disturb the tests sharing the
/// machine's engine: its data, exec root and socket in a temp dir, and its own network
/// namespace (its docker0 and iptables rules are its own; host networking in its builds means
/// that namespace's loopback).
struct PrivateEngine {
    dir: tempfile::TempDir,
    netns: String,
    daemon: Option<Child>,
}

impl PrivateEngine {
    fn start() -> Self {
        let netns = format!("trellis-e2e-{}", std::process::id());
        let ip = |args: &[&str]| {
            let status = Command::new("ip").args(args).status().expect("iproute2's ip");
            assert!(status.success(), "ip {args:?}");
        };
        ip(&["netns", "add", &netns]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        let mut engine = Self { dir: tempfile::tempdir().unwrap(), netns, daemon: None };
        engine.up();
        engine
    }

    fn netns_path(&self) -> std::path::PathBuf {
        Path::new("/var/run/netns").join(&self.netns)
    }

    fn host(&self) -> String {
        format!("unix://{}", self.dir.path().join("docker.sock").display())
    }

    /// Starts dockerd on the same data root (overlay2, else vfs) and returns once it listens.
    fn up(&mut self) {
        for driver in ["overlay2", "vfs"] {
            let dir = self.dir.path();
            // nsenter, not `ip netns exec`: that one also remounts /sys, hiding the cgroups.
            let mut daemon = Command::new("nsenter")
                .arg(format!("--net={}", self.netns_path().display()))
                .args(["dockerd", "--storage-driver", driver])
                .arg("--data-root")
                .arg(dir.join("data"))
                .arg("--exec-root")
                .arg(dir.join("exec"))
                .arg("--pidfile")
                .arg(dir.join("dockerd.pid"))
                .args(["-H", &self.host()])
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
            if listening.recv_timeout(Duration::from_secs(120)).is_ok() {
                self.daemon = Some(daemon);
                return;
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        panic!("no private dockerd would start");
    }

    /// SIGTERM, as `systemctl restart docker` sends: dockerd stops its containers and exits.
    fn down(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            Command::new("kill").args(["-TERM", &daemon.id().to_string()]).status().unwrap();
            daemon.wait().unwrap();
        }
    }

    fn docker(&self, args: &[&str]) -> String {
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

#[test]
fn the_engine_restarted_mid_build_then_the_next_run_converges() {
    let mut engine = PrivateEngine::start();
    let (port, started, release) = gate_service(Some(&engine.netns_path()));
    let matrix = r#"
settings { name "NAME"; retries 0; }
image "base" {
    repository "PREFIX/base"
    dockerfile "base.j2"
    context "busybox"
    tag "latest"
}
image "app" {
    repository "PREFIX/app"
    dockerfile "app.j2"
    context "busybox"
    network "host"
    tag "latest"
}
"#;
    let app = format!("FROM PREFIX/base:latest\nRUN wget -qO- http://127.0.0.1:{port}/ | grep -qx ok\n");
    let ws = EngineWorkspace::new("restart", matrix, &[("base.j2", BASE), ("app.j2", &app)]);
    let host = engine.host();
    let build = |ws: &EngineWorkspace| {
        let output = ws.trellis(&["build"]).env("DOCKER_HOST", &host).output().unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
    };

    let child = ws.trellis(&["build"]).env("DOCKER_HOST", &host).stderr(Stdio::piped()).spawn().unwrap();
    started.recv_timeout(Duration::from_secs(300)).expect("the app's build reached the gate");
    engine.down();
    let interrupted = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&interrupted.stderr);
    assert_ne!(interrupted.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("FAIL build:app"), "{stderr}");
    drop(release);

    engine.up();
    let (code, stderr) = build(&ws);
    assert_eq!(code, Some(0), "{stderr}");
    let report = ws.report();
    assert_eq!(action(&report, "build:base"), "skip", "the base built before the restart is kept");
    assert_eq!(status(&report, "build:app"), "passed");
    let app_id = engine.docker(&["image", "inspect", "-f", "{{.Id}}", &ws.reference("app", "latest")]);
    assert!(app_id.starts_with("sha256:"), "{app_id}");
    assert_eq!(engine.docker(&["ps", "-a", "-q"]), "", "no container is left");

    let (code, stderr) = build(&ws);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("0 passed, 0 flaky, 0 failed, 0 blocked, 6 up to date"), "{stderr}");
}
