//! Faults on the real engine: trellis killed with SIGKILL mid-test, and the engine itself
//! restarted mid-build. Either way the next run converges: what finished is kept, what did
//! not is redone, and a run after that has nothing to do. Synchronisation is by a loopback
//! gate the builds call (it holds the first request until released) and by dockerd's own
//! "API listen on" line, never by sleeping.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use common::engine::*;
use common::private_engine::PrivateEngine;

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
    let (port, started, release) = gate_service(engine_netns().as_deref());
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
