//! Both builders against the real engine (`DOCKER_HOST` or the default socket): every test runs
//! once per builder (`classic::…`, `buildkit::…`). Results are checked with the docker CLI,
//! not with trellis's own calls. Each test's images descend from a base carrying a label of
//! its own (`e2e=<unique>`), so "nothing is left" is judged on that label while other tests
//! share the engine; the test's images are removed when it ends.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use trellis_docker::{BuildRequest, BuildTrace, Builder, BuilderKind, DockerClient, EngineError, TestRequest, labels};
use trellis_graph::ContextWalk;

macro_rules! for_each_builder {
    ($($name:ident),* $(,)?) => {
        mod classic {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(trellis_docker::BuilderKind::Classic).await
            })*
        }
        mod buildkit {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(trellis_docker::BuilderKind::BuildKit).await
            })*
        }
    };
}

for_each_builder!(
    builds_with_args_labels_and_target,
    the_layer_cache_is_used_unless_no_cache,
    network_modes_reach_run_steps,
    a_failing_run_is_failed,
    a_missing_copy_source_is_refused,
    the_context_is_the_walk,
    tests_run_on_the_exact_image_and_leave_nothing,
    a_dockerfile_test_gets_the_image_as_arg,
    a_cancelled_test_leaves_nothing,
    cache_mounts_need_buildkit,
    own_builds_are_told_from_images_built_on_them,
);

/// A test's corner of the engine: its client, its unique label, and what it built.
struct Scene {
    client: DockerClient,
    unique: String,
    dirs: Mutex<Vec<tempfile::TempDir>>,
}

/// What a test's build sets beyond the Dockerfile and its context.
#[derive(Default)]
struct Options {
    args: Vec<(String, String)>,
    labels: HashMap<String, String>,
    network: Option<&'static str>,
    target: Option<&'static str>,
    no_cache: bool,
    platform: Option<&'static str>,
}

/// The lines a build or test wrote.
type Log = Arc<Mutex<Vec<String>>>;

impl Scene {
    /// `None` (and a note) when no engine answers: only then is a test skipped.
    async fn new(name: &str) -> Option<Self> {
        match DockerClient::connect().await {
            Ok(client) => {
                let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
                let unique = format!("{name}-{}-{nanos:x}", std::process::id()).replace('_', "-");
                Some(Self { client, unique, dirs: Mutex::new(Vec::new()) })
            }
            Err(EngineError::Unreachable(why)) => {
                eprintln!("skipped: no Docker engine answers (DOCKER_HOST or /var/run/docker.sock): {why}");
                None
            }
            Err(other) => panic!("the engine answered, wrongly: {other}"),
        }
    }

    fn builder(&self, kind: BuilderKind) -> Arc<dyn Builder> {
        let builder = self.client.builder(kind);
        assert_eq!(builder.kind(), kind);
        builder
    }

    /// A context directory with busybox and `files`, walked as trellis walks contexts.
    fn context(&self, files: &[(&str, &str)]) -> ContextWalk {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy("/bin/busybox", dir.path().join("busybox")).expect("Debian's busybox-static");
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let walk = ContextWalk::new(dir.path(), &Default::default()).unwrap();
        self.dirs.lock().unwrap().push(dir);
        walk
    }

    /// The first lines of every image of this test: busybox on scratch, under this test's label.
    fn base_dockerfile(&self) -> String {
        format!(
            "FROM scratch\nLABEL e2e={}\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n",
            self.unique
        )
    }

    async fn build(
        &self,
        kind: BuilderKind,
        dockerfile: &str,
        files: &[(&str, &str)],
        options: Options,
    ) -> (Result<String, EngineError>, Vec<String>) {
        let walk = self.context(files);
        let request = BuildRequest {
            dockerfile,
            context: Some(&walk),
            args: &options.args,
            labels: options.labels,
            network: options.network.unwrap_or("default"),
            target: options.target,
            no_cache: options.no_cache,
            platform: options.platform,
        };
        let (log, mut line) = log();
        let mut trace = BuildTrace::default();
        let builder = self.builder(kind);
        let result = builder.build(request, &mut trace, &mut line).await;
        assert!(trace.layers.is_empty() && trace.temporary_tag.is_none(), "a build records nothing to remove");
        let lines = log.lock().unwrap().clone();
        (result, lines)
    }

    /// The base image: `/id` holds this test's unique name.
    async fn base(&self, kind: BuilderKind) -> String {
        let dockerfile = format!("{}RUN echo {} > /id\n", self.base_dockerfile(), self.unique);
        let (result, lines) = self.build(kind, &dockerfile, &[], Options::default()).await;
        result.unwrap_or_else(|e| panic!("{e}\n{}", lines.join("\n")))
    }

    /// Images (with their references) and containers of this test, as the engine lists them.
    fn leftovers(&self) -> BTreeSet<String> {
        let filter = format!("label=e2e={}", self.unique);
        let images = docker(&[
            "images",
            "-a",
            "--no-trunc",
            "--filter",
            &filter,
            "--format",
            "{{.ID}} {{.Repository}}:{{.Tag}}",
        ]);
        let containers = docker(&["ps", "-a", "-q", "--no-trunc", "--filter", &filter]);
        images.lines().chain(containers.lines()).map(str::to_owned).collect()
    }

    async fn run_test(
        &self,
        kind: BuilderKind,
        request: TestRequest<'_>,
    ) -> (Result<(), EngineError>, Vec<String>, BuildTrace) {
        let builder = self.builder(kind);
        let (log, mut line) = log();
        let mut trace = BuildTrace::default();
        let result = builder.test(request, &mut trace, &mut line).await;
        builder.clean_up(&trace).await;
        let lines = log.lock().unwrap().clone();
        (result, lines, trace)
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        // Children before parents: repeat while anything goes.
        let filter = format!("label=e2e={}", self.unique);
        for _ in 0..5 {
            let ids = docker(&["images", "-a", "-q", "--no-trunc", "--filter", &filter]);
            let ids: BTreeSet<&str> = ids.lines().collect();
            if ids.is_empty() {
                break;
            }
            let mut args = vec!["rmi", "-f"];
            args.extend(ids);
            docker(&args);
        }
    }
}

fn log() -> (Log, impl FnMut(&str) + Send) {
    let log: Log = Arc::default();
    let sink = log.clone();
    (log, move |line: &str| sink.lock().unwrap().push(line.to_owned()))
}

fn docker(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().expect("the docker CLI runs");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Polls `condition` (a process list, not an event anyone sends) for up to 20 s.
async fn wait_until(condition: impl Fn() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "waited 20 s for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn exists(reference: &str) -> bool {
    Command::new("docker").args(["image", "inspect", reference]).output().unwrap().status.success()
}

fn has_line(lines: &[String], wanted: &str) -> bool {
    lines.iter().any(|l| l.contains(wanted))
}

/// What a step printed after `prefix` (on a line that is not the step's own `echo`).
fn printed_after(lines: &[String], prefix: &str) -> Option<String> {
    lines
        .iter()
        .filter(|l| !l.contains("echo"))
        .find_map(|l| l.split_once(prefix).map(|(_, rest)| rest.trim().to_owned()))
}

/// Whether a step printed `marker` (a line ending in it that is not the step's own `echo`).
fn printed(lines: &[String], marker: &str) -> bool {
    lines.iter().any(|l| l.ends_with(marker) && !l.contains("echo"))
}

async fn builds_with_args_labels_and_target(kind: BuilderKind) {
    let Some(scene) = Scene::new("args").await else { return };
    let dockerfile = format!(
        "{}ARG GREETING=unset\nRUN echo \"marker-$GREETING\" > /stage && cat /stage\n\
         FROM scratch AS later\nCOPY busybox /later\n",
        scene.base_dockerfile().replacen("FROM scratch", "FROM scratch AS wanted", 1)
    );
    // Unique output: BuildKit's cache ignores the base's label, and a cached step prints nothing.
    let options = Options {
        args: vec![("GREETING".to_owned(), format!("hello-{}", scene.unique))],
        labels: HashMap::from([("probe.label".to_owned(), "probe value".to_owned())]),
        target: Some("wanted"),
        platform: Some("linux/amd64"),
        ..Default::default()
    };
    let (result, lines) = scene.build(kind, &dockerfile, &[], options).await;
    let id = result.unwrap_or_else(|e| panic!("{e}\n{}", lines.join("\n")));
    assert_eq!(docker(&["image", "inspect", "-f", "{{.Id}}", &id]), id, "the ID names the image the engine holds");
    assert!(
        printed(&lines, &format!("marker-hello-{}", scene.unique)),
        "the step's output is logged:\n{}",
        lines.join("\n")
    );
    let label = docker(&["image", "inspect", "-f", "{{index .Config.Labels \"probe.label\"}}", &id]);
    assert_eq!(label, "probe value");
    // The target stage was built: the image has /stage, not the later stage's /later.
    let history = docker(&["image", "history", "--no-trunc", "--format", "{{.CreatedBy}}", &id]);
    assert!(history.contains("marker-$GREETING") && !history.contains("/later"), "{history}");
}

async fn the_layer_cache_is_used_unless_no_cache(kind: BuilderKind) {
    let Some(scene) = Scene::new("cache").await else { return };
    let dockerfile =
        format!("{}RUN echo {} > /dev/null && echo marker-cached-step\n", scene.base_dockerfile(), scene.unique);
    let (first, lines) = scene.build(kind, &dockerfile, &[], Options::default()).await;
    assert!(printed(&lines, "marker-cached-step"), "{}", lines.join("\n"));
    let (again, lines) = scene.build(kind, &dockerfile, &[], Options::default()).await;
    assert_eq!(first.unwrap(), again.unwrap(), "an identical build is the same image");
    let cached = match kind {
        BuilderKind::Classic => "Using cache",
        BuilderKind::BuildKit => "CACHED",
    };
    assert!(has_line(&lines, cached) && !printed(&lines, "marker-cached-step"), "{}", lines.join("\n"));
    let (_, lines) = scene.build(kind, &dockerfile, &[], Options { no_cache: true, ..Default::default() }).await;
    assert!(printed(&lines, "marker-cached-step"), "{}", lines.join("\n"));
}

async fn network_modes_reach_run_steps(kind: BuilderKind) {
    let Some(scene) = Scene::new("network").await else { return };
    let dockerfile =
        format!("{}RUN echo \"interfaces: $(ls /sys/class/net | tr '\\n' ' ')\"\n", scene.base_dockerfile());
    let mut seen = HashMap::new();
    for network in ["default", "none", "host"] {
        let options = Options { network: Some(network), no_cache: true, ..Default::default() };
        let (result, lines) = scene.build(kind, &dockerfile, &[], options).await;
        result.unwrap_or_else(|e| panic!("{network}: {e}\n{}", lines.join("\n")));
        let interfaces = printed_after(&lines, "interfaces: ");
        seen.insert(
            network,
            interfaces.unwrap_or_else(|| panic!("{network}: no interfaces line\n{}", lines.join("\n"))),
        );
    }
    assert_eq!(seen["none"], "lo");
    assert!(seen["default"].contains("eth0") && seen["default"].split(' ').count() == 2, "{seen:?}");
    // The default bridge is the host's, never inside a container's own network namespace.
    assert!(seen["host"].split(' ').any(|i| i == "docker0"), "host networking shows the host's interfaces: {seen:?}");
}

async fn a_failing_run_is_failed(kind: BuilderKind) {
    let Some(scene) = Scene::new("failing").await else { return };
    let dockerfile = format!("{}RUN echo marker-before-failing && exit 3\n", scene.base_dockerfile());
    let (result, lines) = scene.build(kind, &dockerfile, &[], Options::default()).await;
    assert!(
        matches!(&result, Err(EngineError::Failed(m)) if m.contains("exit code: 3") || m.contains("returned a non-zero code: 3")),
        "{result:?}"
    );
    assert!(has_line(&lines, "marker-before-failing"), "{}", lines.join("\n"));
    assert!(lines.last().is_some_and(|l| l.starts_with("error: ")), "{}", lines.join("\n"));
    assert!(docker(&["ps", "-a", "-q", "--filter", &format!("label=e2e={}", scene.unique)]).is_empty());
}

async fn a_missing_copy_source_is_refused(kind: BuilderKind) {
    let Some(scene) = Scene::new("missing").await else { return };
    let dockerfile = format!("{}COPY not-in-context.txt /x\n", scene.base_dockerfile());
    let (result, lines) = scene.build(kind, &dockerfile, &[], Options::default()).await;
    assert!(matches!(result, Err(EngineError::Refused(_))), "{result:?}\n{}", lines.join("\n"));
}

async fn the_context_is_the_walk(kind: BuilderKind) {
    let Some(scene) = Scene::new("context").await else { return };
    // A glob source too: BuildKit's front end asks the session for `glob/a-*.whl` as written.
    let dockerfile = format!(
        "{}COPY glob/a-*.whl /globbed/\nRUN echo \"globbed: $(ls /globbed)\"\n\
         COPY . /ctx\nRUN echo \"listed: $(ls -A /ctx | tr '\\n' ' ')\"\n",
        scene.base_dockerfile()
    );
    let files = [
        (".dockerignore", "ignored.txt\n"),
        ("ignored.txt", "no"),
        ("kept.txt", "yes"),
        ("glob/a-1.whl", "1"),
        ("glob/b-1.whl", "2"),
    ];
    let (result, lines) =
        scene.build(kind, &dockerfile, &files, Options { no_cache: true, ..Default::default() }).await;
    result.unwrap_or_else(|e| panic!("{e}\n{}", lines.join("\n")));
    let context = printed_after(&lines, "listed: ").unwrap_or_else(|| panic!("{}", lines.join("\n")));
    // The walk applied .dockerignore, and the rendered Dockerfile is not part of the context:
    // the classic builder's tar lists it in its .dockerignore, BuildKit's session serves it
    // apart from the context.
    assert_eq!(context, ".dockerignore busybox glob kept.txt", "{kind}");
    assert_eq!(printed_after(&lines, "globbed: ").as_deref(), Some("a-1.whl"), "{}", lines.join("\n"));
}

async fn tests_run_on_the_exact_image_and_leave_nothing(kind: BuilderKind) {
    let Some(scene) = Scene::new("tests").await else { return };
    let image = scene.base(kind).await;
    let before = scene.leftovers();
    let passing = [format!("grep -q {} /id", scene.unique), "echo marker-test-ran".to_owned()];
    let request =
        TestRequest { image_id: &image, run: Some(&passing), dockerfile: None, network: "default", platform: None };
    let (result, lines, trace) = scene.run_test(kind, request).await;
    result.unwrap_or_else(|e| panic!("{e}\n{}", lines.join("\n")));
    assert!(has_line(&lines, "marker-test-ran"), "{}", lines.join("\n"));
    assert!(!trace.layers.is_empty(), "the test's image was recorded: {trace:?}");
    assert_eq!(scene.leftovers(), before, "a passed test leaves nothing");
    assert!(exists(&image), "the image under test stays");
    assert!(trace.temporary_tag.iter().all(|tag| !exists(tag)), "{trace:?}");

    let failing = ["test -f /not-there".to_owned()];
    let request =
        TestRequest { image_id: &image, run: Some(&failing), dockerfile: None, network: "none", platform: None };
    let (result, lines, trace) = scene.run_test(kind, request).await;
    assert!(matches!(result, Err(EngineError::Failed(_))), "{result:?}\n{}", lines.join("\n"));
    assert_eq!(scene.leftovers(), before, "a failed test leaves nothing");
    assert!(exists(&image), "the image under test stays");
    assert!(trace.temporary_tag.iter().all(|tag| !exists(tag)), "{trace:?}");
    assert_eq!(trace.temporary_tag.is_some(), kind == BuilderKind::BuildKit);
}

async fn a_dockerfile_test_gets_the_image_as_arg(kind: BuilderKind) {
    let Some(scene) = Scene::new("dockerfile-test").await else { return };
    let image = scene.base(kind).await;
    let before = scene.leftovers();
    let walk = scene.context(&[("expected", &scene.unique)]);
    let text = "ARG IMAGE\nFROM $IMAGE\nCOPY expected /expected\nRUN grep -qf /expected /id && echo marker-on-image\n";
    let request = TestRequest {
        image_id: &image,
        run: None,
        dockerfile: Some((text, &walk)),
        network: "default",
        platform: None,
    };
    let (result, lines, _) = scene.run_test(kind, request).await;
    result.unwrap_or_else(|e| panic!("{e}\n{}", lines.join("\n")));
    assert!(has_line(&lines, "marker-on-image"), "{}", lines.join("\n"));
    assert_eq!(scene.leftovers(), before);
    assert!(exists(&image));
}

async fn a_cancelled_test_leaves_nothing(kind: BuilderKind) {
    let Some(scene) = Scene::new("cancel").await else { return };
    let image = scene.base(kind).await;
    let before = scene.leftovers();
    // A sleep no other test runs: its process is how the test sees the step end.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let seconds = format!("29.{:06}", nanos % 1_000_000);
    let run = [format!("echo marker-started-{} && sleep {seconds}", scene.unique)];
    let request =
        TestRequest { image_id: &image, run: Some(&run), dockerfile: None, network: "default", platform: None };
    let builder = scene.builder(kind);
    let started = Arc::new(tokio::sync::Notify::new());
    let marker = format!("marker-started-{}", scene.unique);
    let (log, mut sink) = log();
    let notify = started.clone();
    let mut line = move |l: &str| {
        sink(l);
        if l.ends_with(&marker) {
            notify.notify_one();
        }
    };
    let sleeping = || {
        let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
        String::from_utf8_lossy(&ps.stdout).lines().any(|l| l.trim() == format!("sleep {seconds}"))
    };
    let mut trace = BuildTrace::default();
    {
        let test = builder.test(request, &mut trace, &mut line);
        tokio::pin!(test);
        tokio::select! {
            result = &mut test => panic!("the test ended: {result:?}\n{:?}", log.lock().unwrap()),
            () = started.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(60)) => panic!("the step never started: {:?}", log.lock().unwrap()),
        }
        // The step runs on (the echo before it printed); then the test's future is dropped.
        wait_until(&sleeping, "the step's sleep to run").await;
    }
    builder.clean_up(&trace).await;
    assert_eq!(trace.containers.is_empty(), kind == BuilderKind::BuildKit, "{trace:?}");
    wait_until(|| !sleeping(), "the cancelled step to end").await;
    assert_eq!(scene.leftovers(), before, "a cancelled test leaves no container and no image");
    assert!(exists(&image), "the image under test stays");
    assert!(trace.temporary_tag.iter().all(|tag| !exists(tag)), "{trace:?}");
}

async fn cache_mounts_need_buildkit(kind: BuilderKind) {
    let Some(scene) = Scene::new("cache-mount").await else { return };
    let dockerfile = format!(
        "{}RUN --mount=type=cache,target=/cache echo x >> /cache/runs && echo \"runs: $(wc -l < /cache/runs)\"\n",
        scene.base_dockerfile()
    );
    let (result, lines) = scene.build(kind, &dockerfile, &[], Options { no_cache: true, ..Default::default() }).await;
    match kind {
        BuilderKind::BuildKit => {
            result.unwrap_or_else(|e| panic!("{e}\n{}", lines.join("\n")));
            assert!(has_line(&lines, "runs: "), "{}", lines.join("\n"));
        }
        // The classic builder does not know the flag: the same input fails the same way.
        BuilderKind::Classic => assert!(matches!(result, Err(EngineError::Refused(_))), "{result:?}"),
    }
}

async fn own_builds_are_told_from_images_built_on_them(kind: BuilderKind) {
    let Some(scene) = Scene::new("own").await else { return };
    let key = |name: &str| HashMap::from([(labels::KEY.to_owned(), format!("{name}-{}", scene.unique))]);
    let dockerfile = scene.base_dockerfile();
    let (parent, lines) =
        scene.build(kind, &dockerfile, &[], Options { labels: key("parent"), ..Default::default() }).await;
    let parent = parent.unwrap_or_else(|e| panic!("{e}\n{}", lines.join("\n")));
    let parent_key = &key("parent")[labels::KEY];
    assert!(scene.client.labelled_last(&parent, labels::KEY, parent_key).await.unwrap(), "the build's own image");
    // BuildKit looks `FROM` up by name: a tag of the parent (removed with the scene).
    let tag = format!("trellis-e2e/{}:parent", scene.unique);
    scene.client.tag(&parent, &tag).await.unwrap();
    for child_kind in [BuilderKind::Classic, BuilderKind::BuildKit] {
        let child_file = format!("FROM {tag}\nRUN echo child > /child\n");
        let (child, lines) = scene.build(child_kind, &child_file, &[], Options::default()).await;
        let child = child.unwrap_or_else(|e| panic!("{e}\n{}", lines.join("\n")));
        let inherited =
            docker(&["image", "inspect", "-f", &format!("{{{{index .Config.Labels \"{}\"}}}}", labels::KEY), &child]);
        assert_eq!(&inherited, parent_key, "the child inherits the key label");
        let own = scene.client.labelled_last(&child, labels::KEY, parent_key).await.unwrap();
        assert!(!own, "a {child_kind} image built on a {kind} image is not that build's");
        // A child with a key of its own is its build's own image.
        let (labelled, _) =
            scene.build(child_kind, &child_file, &[], Options { labels: key("child"), ..Default::default() }).await;
        let labelled = labelled.unwrap();
        assert!(scene.client.labelled_last(&labelled, labels::KEY, &key("child")[labels::KEY]).await.unwrap());
        assert!(!scene.client.labelled_last(&labelled, labels::KEY, parent_key).await.unwrap());
    }
    docker(&["rmi", &tag]);
}

#[tokio::test]
async fn the_engine_offers_buildkit() {
    let Some(scene) = Scene::new("offers").await else { return };
    // dockerd 20.10 (API 1.41, Linux) embeds BuildKit 0.8.4.
    let version = docker(&["version", "-f", "{{.Server.APIVersion}} {{.Server.Os}}"]);
    let expected = version.split_once(' ').is_some_and(|(api, os)| {
        let minor = api.strip_prefix("1.").and_then(|m| m.parse::<u32>().ok()).unwrap_or(0);
        os == "linux" && (minor >= 39 || !api.starts_with("1."))
    });
    assert_eq!(scene.client.offers_buildkit(), expected, "{version}");
}
