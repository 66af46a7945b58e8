//! The library facade used the way another repository's xtask would: load, inspect, plan,
//! render. And the offline promises: deterministic keys, exact change propagation.

mod common;

use std::collections::BTreeMap;
use std::fs;

use common::{Fixture, family};
use trellis::{Action, Workspace};

fn keys(workspace: &Workspace) -> BTreeMap<String, String> {
    let graph = workspace.graph().unwrap();
    graph.dag.node_weights().map(|n| (n.id.clone(), n.key.to_hex())).collect()
}

#[test]
fn an_xtask_can_drive_the_facade() {
    let fixture = family();
    let workspace = fixture.load();
    let ids: Vec<&str> = workspace.variants().iter().map(|v| v.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "base/trixie",
            "base/bookworm",
            "app/2.0.0/trixie",
            "app/2.0.0/bookworm",
            "app/1.1.0/trixie",
            "app/1.1.0/bookworm",
            "app/1.0.0/trixie",
            "app/1.0.0/bookworm",
            "tool/trixie",
            "tool/bookworm"
        ]
    );
    let plan = workspace.plan(&[]).unwrap();
    // 10 variants × (render, build, tag, push) + 6 app tests.
    assert_eq!(plan.len(), 46);
    for node in plan.iter().filter(|n| n.kind != trellis::NodeKind::Render) {
        let expected = match node.kind {
            trellis::NodeKind::Build => "never built",
            trellis::NodeKind::Test => "never run",
            trellis::NodeKind::Tag => "never tagged",
            _ => "never pushed",
        };
        assert_eq!(node.reason, expected, "{}", node.id);
    }

    let report = workspace.render().unwrap();
    assert_eq!(report.written.len(), 10);
    let replanned = Workspace::load(fixture.path("matrix.kdl")).unwrap().plan(&[]).unwrap();
    assert!(replanned.iter().filter(|n| n.kind == trellis::NodeKind::Render).all(|n| n.action == Action::Skip));
}

#[test]
fn parents_come_from_from_lines_after_arg_substitution() {
    let workspace = family().load();
    let deps = workspace.dependencies();
    let id = |v: usize| workspace.variants()[v].id.clone();
    let app_trixie = workspace.variants().iter().position(|v| v.id == "app/2.0.0/trixie").unwrap();
    assert_eq!(deps.parents[app_trixie].iter().map(|p| id(*p)).collect::<Vec<_>>(), ["base/trixie"]);
    let tool = workspace.variants().iter().position(|v| v.id == "tool/trixie").unwrap();
    assert!(deps.parents[tool].is_empty());
    assert_eq!(deps.external_bases[tool], ["busybox:1.36"]);
}

#[test]
fn the_graph_orders_parents_tags_before_children_builds() {
    let fixture = family();
    let workspace = fixture.load();
    let graph = workspace.graph().unwrap();
    let order: Vec<&str> = graph.stable_order().into_iter().map(|i| graph.dag[i].id.as_str()).collect();
    let at = |id: &str| order.iter().position(|n| *n == id).unwrap();
    assert!(at("tag:base/trixie") < at("build:app/2.0.0/trixie"));
    assert!(at("test:app/2.0.0/trixie/runs") < at("tag:app/2.0.0/trixie"));
    assert!(at("push:base/trixie") < at("push:app/1.0.0/trixie"));
    // Deterministic: the same order every time.
    let again: Vec<&str> = graph.stable_order().into_iter().map(|i| graph.dag[i].id.as_str()).collect();
    assert_eq!(order, again);
}

#[test]
fn filters_select_variants_and_pull_in_parents() {
    let workspace = family().load();
    let tags = workspace.tags(&["app/1.0.0/*".to_owned()]).unwrap();
    let ids: Vec<&str> = tags.iter().map(|t| t.variant.as_str()).collect();
    assert_eq!(ids, ["base/trixie", "base/bookworm", "app/1.0.0/trixie", "app/1.0.0/bookworm"]);
    let by_axis = workspace.tags(&["os=book*".to_owned(), "tool".to_owned()]).unwrap();
    assert_eq!(by_axis.len(), 6);
    assert!(matches!(workspace.plan(&["nope".to_owned()]), Err(trellis::Error::Filter(_))));
}

#[test]
fn floating_tags_go_to_the_highest_version() {
    let workspace = family().load();
    let owner = |reference: &str| {
        workspace
            .tags(&[])
            .unwrap()
            .into_iter()
            .find(|t| t.references.iter().any(|r| r == reference))
            .map(|t| t.variant)
    };
    assert_eq!(owner("acme/app:1-trixie").as_deref(), Some("app/1.1.0/trixie"));
    assert_eq!(owner("acme/app:2-bookworm").as_deref(), Some("app/2.0.0/bookworm"));
    assert_eq!(owner("acme/app:1.0.0-trixie").as_deref(), Some("app/1.0.0/trixie"));
}

/// Keys are a function of content, not of where or when the checkout was made.
#[test]
fn keys_are_identical_across_checkouts() {
    let first = family();
    let second = family();
    // A different umask and newer mtimes in the second checkout change nothing.
    let app = second.path("contexts/app/app");
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(&app).unwrap().permissions().mode();
    fs::set_permissions(&app, fs::Permissions::from_mode(mode | 0o020)).unwrap();
    second.write("contexts/app/debug.log", "ignored by .dockerignore");
    assert_eq!(keys(&first.load()), keys(&second.load()));
}

/// What changed → exactly which build keys change.
fn changed_builds(edit: impl FnOnce(&Fixture)) -> Vec<String> {
    let fixture = family();
    let before = keys(&fixture.load());
    edit(&fixture);
    let after = keys(&fixture.load());
    let mut changed: Vec<String> = before
        .iter()
        .filter(|(id, key)| id.starts_with("build:") && after.get(*id) != Some(key))
        .map(|(id, _)| id.clone())
        .collect();
    changed.sort();
    changed
}

#[test]
fn a_base_context_change_rebuilds_the_base_and_its_children_only() {
    let changed = changed_builds(|f| f.write("contexts/base/bookworm/rootfs/etc/os-release", "bookworm 12.8"));
    assert_eq!(
        changed,
        ["build:app/1.0.0/bookworm", "build:app/1.1.0/bookworm", "build:app/2.0.0/bookworm", "build:base/bookworm"]
    );
}

#[test]
fn a_template_change_rebuilds_exactly_its_variants() {
    let changed = changed_builds(|f| f.write("templates/tool.j2", "FROM busybox:1.36\nCOPY tool /usr/bin/tool\n"));
    assert_eq!(changed, ["build:tool/bookworm", "build:tool/trixie"]);
}

#[test]
fn an_ignored_file_changes_nothing() {
    assert!(changed_builds(|f| f.write("contexts/app/build.log", "noise")).is_empty());
}

#[test]
fn a_new_axis_value_adds_variants_without_changing_others() {
    let changed = changed_builds(|f| {
        let text = fs::read_to_string(f.path("matrix.kdl")).unwrap();
        f.write("matrix.kdl", &text.replace("\"1.0.0\"", "\"1.0.0\" \"0.9.0\""));
    });
    assert!(changed.is_empty(), "{changed:?}");
}

#[test]
fn a_moved_external_base_rebuilds_its_dependents_only() {
    let fixture = family();
    let before = keys(&fixture.load());
    let mut ids = trellis::BaseImageIds::default();
    ids.ids.insert("busybox:1.36".to_owned(), "sha256:1111".to_owned());
    let inputs = trellis::GraphInputs { base_images: ids, ..Default::default() };
    let after = keys(&Workspace::load_with(fixture.path("matrix.kdl"), inputs).unwrap());
    let changed: Vec<&String> =
        before.keys().filter(|id| id.starts_with("build:") && before[*id] != after[*id]).collect();
    assert_eq!(changed, ["build:tool/bookworm", "build:tool/trixie"]);
}

#[test]
fn render_writes_only_changed_files_and_check_finds_stale_missing_orphaned() {
    let fixture = family();
    let workspace = fixture.load();
    let clean = workspace.check_rendered().unwrap();
    assert_eq!(clean.missing.len(), 10);
    workspace.render().unwrap();
    assert!(workspace.check_rendered().unwrap().is_clean());

    let tool = fixture.path("dockerfiles/tool/trixie/Dockerfile");
    let mtime = fs::metadata(&tool).unwrap().modified().unwrap();
    let again = workspace.render().unwrap();
    assert!(again.written.is_empty());
    assert_eq!(fs::metadata(&tool).unwrap().modified().unwrap(), mtime, "unchanged files are not touched");

    fixture.write("dockerfiles/tool/trixie/Dockerfile", "FROM edited\n");
    let orphan = "dockerfiles/app/0.1.0/trixie/Dockerfile";
    fixture.write(orphan, "# Generated by trellis from templates/app.j2 for app/0.1.0/trixie.\nFROM x\n");
    fixture.write("dockerfiles/notes/Dockerfile", "# hand-written, not ours\nFROM x\n");
    fs::remove_file(fixture.path("dockerfiles/base/bookworm/Dockerfile")).unwrap();
    let check = workspace.check_rendered().unwrap();
    assert_eq!(check.stale, [std::path::PathBuf::from("dockerfiles/tool/trixie/Dockerfile")]);
    assert_eq!(check.missing, [std::path::PathBuf::from("dockerfiles/base/bookworm/Dockerfile")]);
    assert_eq!(check.orphaned, [std::path::PathBuf::from(orphan)]);

    let report = workspace.render().unwrap();
    assert_eq!(report.written.len(), 2);
    assert_eq!(report.removed, [std::path::PathBuf::from(orphan)]);
    assert!(fixture.path("dockerfiles/notes/Dockerfile").exists(), "files trellis did not generate stay");
    assert!(workspace.check_rendered().unwrap().is_clean());
}

#[test]
fn rendered_dockerfiles_carry_a_header_after_parser_directives() {
    let fixture = family();
    fixture.write("templates/tool.j2", "# escape=`\nFROM busybox:1.36\n");
    let workspace = fixture.load();
    let tool = workspace.variants().iter().find(|v| v.id == "tool/trixie").unwrap();
    assert!(tool.dockerfile.starts_with("# escape=`\n# Generated by trellis from templates/tool.j2 for tool/trixie."));
}

#[test]
fn the_official_node_tag_scheme_needs_no_code() {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/official-node/matrix.kdl");
    let workspace = Workspace::load(manifest).unwrap();
    let tags = workspace.tags(&[]).unwrap();
    let owner = |reference: &str| {
        let owners: Vec<&str> =
            tags.iter().filter(|t| t.references.iter().any(|r| r == reference)).map(|t| t.variant.as_str()).collect();
        assert_eq!(owners.len(), 1, "{reference} has exactly one owner: {owners:?}");
        owners[0]
    };
    assert_eq!(owner("node:latest"), "node/25.2.1/trixie");
    assert_eq!(owner("node:current"), "node/25.2.1/trixie");
    assert_eq!(owner("node:lts"), "node/24.11.1/trixie");
    assert_eq!(owner("node:lts-alpine"), "node/24.11.1/alpine3.22");
    assert_eq!(owner("node:lts-bookworm-slim"), "node/24.11.1/bookworm-slim");
    assert_eq!(owner("node:22"), "node/22.21.1/trixie");
    assert_eq!(owner("node:jod-alpine"), "node/22.21.1/alpine3.22");
    assert_eq!(owner("node:24-slim"), "node/24.11.1/trixie-slim");
    assert_eq!(owner("node:24.11.0"), "node/24.11.0/trixie");
    assert_eq!(owner("node:iron-bookworm"), "node/20.19.5/bookworm");
    assert_eq!(owner("node:slim"), "node/25.2.1/trixie-slim");
    assert_eq!(owner("node:alpine"), "node/25.2.1/alpine3.22");
    // Every variant V has its exact X.Y.Z-V tag.
    for entry in &tags {
        let exact = format!("node:{}-{}", entry.values["node"], entry.values["variant"]);
        assert!(entry.references.contains(&exact), "{} lacks {exact}", entry.variant);
    }
    let table: String = tags.iter().map(|t| format!("{}\n    {}\n", t.variant, t.references.join("\n    "))).collect();
    insta::assert_snapshot!("official_node_tag_table", table);
}

/// docs/matrix.md's complete example does what the page says it does.
#[test]
fn the_documented_example_behaves_as_documented() {
    let doc = include_str!("../../../docs/matrix.md");
    let start = doc.find("```kdl\nsettings {\n    name \"nodesource\"\n    registry").expect("example present") + 7;
    let example = &doc[start..start + doc[start..].find("```").unwrap()];
    let fixture = Fixture::new(&[
        ("matrix.kdl", example),
        ("dockerfiles/node/Dockerfile.j2", "FROM debian:{{ os }}\n"),
        ("dockerfiles/node/context/.keep", ""),
    ]);
    let workspace = fixture.load();
    let ids: Vec<&str> = workspace.variants().iter().map(|v| v.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "node/24.11.1/trixie",
            "node/24.11.1/bookworm",
            "node/22.20.0/trixie",
            "node/22.20.0/bookworm",
            "node/20.19.5/bookworm"
        ]
    );
    let tags = workspace.tags(&[]).unwrap();
    let has = |variant: &str, reference: &str| {
        tags.iter().any(|t| t.variant == variant && t.references.iter().any(|r| r == reference))
    };
    assert!(has("node/22.20.0/bookworm", "nodesource/bookworm:22"));
    assert!(has("node/24.11.1/trixie", "nodesource/trixie:lts"));
    assert_eq!(workspace.graph().unwrap().dag.node_count(), 25);
}

/// The decoupled-runtime pattern: a code-only image and a runtime per version, the runtimes
/// tested with the code image by a Dockerfile test.
fn decoupled() -> Fixture {
    Fixture::new(&[
        (
            "matrix.kdl",
            r#"settings { name "decoupled"; }
axis "node" "24.1.0" "22.2.0"
image "code" {
    repository "acme/code"
    dockerfile "code.j2"
    context "app"
    tag "1.0.0"
}
image "runtime" {
    matrix "node"
    repository "acme/runtime"
    dockerfile "runtime.j2"
    context "runtime"
    arg "NODE_VERSION" "{{ node }}"
    tag "{{ node }}"
    test "app" dockerfile="tests/app.Dockerfile" context="tests"
}
"#,
        ),
        ("code.j2", "FROM scratch\nCOPY . /app\nVOLUME /app\n"),
        ("runtime.j2", "FROM scratch\nARG NODE_VERSION\nENV NODE_VERSION=${NODE_VERSION}\n"),
        ("app/index.js", "console.log(process.version)\n"),
        ("runtime/README", "the runtime's context\n"),
        (
            "tests/app.Dockerfile",
            "ARG IMAGE\nARG CODE=acme/code:1.0.0\nFROM ${CODE} AS code\nFROM ${IMAGE}\nCOPY --from=code /app /app\n",
        ),
    ])
}

#[test]
fn a_test_dockerfile_naming_a_workspace_image_depends_on_it() {
    let fixture = decoupled();
    let workspace = fixture.load();
    let deps = workspace.dependencies();
    let position = |id: &str| workspace.variants().iter().position(|v| v.id == id).unwrap();
    let (code, runtime) = (position("code"), position("runtime/24.1.0"));
    assert!(deps.parents[runtime].is_empty(), "the runtime is not built on the code");
    assert_eq!(deps.test_parents[runtime], [vec![code]]);
    assert!(deps.test_bases[runtime][0].is_empty(), "${{IMAGE}} is the image under test, not a base");

    let graph = workspace.graph().unwrap();
    let edge = |from: &str, to: &str| graph.dag.contains_edge(graph.index(from).unwrap(), graph.index(to).unwrap());
    assert!(edge("tag:code", "test:runtime/24.1.0/app"), "the test runs on the tested code image");
    assert!(!edge("tag:code", "build:runtime/24.1.0"));
    // Selecting a runtime pulls in the code image its test needs.
    let ids: Vec<String> =
        workspace.tags(&["runtime/22.*".to_owned()]).unwrap().into_iter().map(|t| t.variant).collect();
    assert_eq!(ids, ["code", "runtime/22.2.0"]);
}

#[test]
fn new_code_reruns_the_runtime_tests_and_a_new_runtime_leaves_the_code_alone() {
    let changed = |edit: &dyn Fn(&Fixture)| {
        let fixture = decoupled();
        let before = keys(&fixture.load());
        edit(&fixture);
        let after = keys(&fixture.load());
        let mut changed: Vec<String> = before
            .iter()
            .filter(|(id, key)| !id.starts_with("render:") && after.get(*id) != Some(key))
            .map(|(id, _)| id.clone())
            .collect();
        changed.extend(
            after
                .keys()
                .filter(|id| !id.starts_with("render:") && !before.contains_key(*id))
                .map(|id| format!("{id} (new)")),
        );
        changed.sort();
        changed
    };
    let code_edit = changed(&|f| f.write("app/index.js", "console.log('v' + process.versions.node)\n"));
    // The runtimes' pushes re-run to record their tests' new keys in the registry (their
    // images, and what their references serve, stay).
    assert_eq!(
        code_edit,
        [
            "build:code",
            "push:code",
            "push:runtime/22.2.0",
            "push:runtime/24.1.0",
            "tag:code",
            "test:runtime/22.2.0/app",
            "test:runtime/24.1.0/app",
        ]
    );
    let bump = changed(&|f| {
        let text = fs::read_to_string(f.path("matrix.kdl")).unwrap();
        f.write("matrix.kdl", &text.replace("\"22.2.0\"", "\"22.3.0\""));
    });
    assert_eq!(
        bump,
        [
            "build:runtime/22.2.0",
            "build:runtime/22.3.0 (new)",
            "push:runtime/22.2.0",
            "push:runtime/22.3.0 (new)",
            "tag:runtime/22.2.0",
            "tag:runtime/22.3.0 (new)",
            "test:runtime/22.2.0/app",
            "test:runtime/22.3.0/app (new)",
        ]
    );
}

/// A scripted history: every node up to date except the ones named.
struct Except(Vec<&'static str>);

impl trellis_graph::StateView for Except {
    fn judge(&self, node: &trellis_graph::Node) -> Result<String, String> {
        if self.0.contains(&node.id.as_str()) { Err("scripted".to_owned()) } else { Ok("up to date".to_owned()) }
    }
}

#[test]
fn a_rebuilt_image_reruns_what_uses_it_and_a_retag_reruns_nothing_else() {
    let fixture = family();
    let workspace = fixture.load();
    fixture.load().render().unwrap();
    let graph = workspace.graph().unwrap();
    let running = |view: &Except| {
        let selection = workspace.select(&[]).unwrap();
        let plan = trellis_graph::plan(workspace.model(), graph, &selection, view);
        plan.into_iter().filter(|n| n.action == trellis::Action::Run).map(|n| (n.id, n.reason)).collect::<Vec<_>>()
    };
    // The base's tag was moved by someone: re-pointing it changes no image.
    assert_eq!(running(&Except(vec!["tag:base/trixie"])), [("tag:base/trixie".to_owned(), "scripted".to_owned())]);
    // The base is rebuilt under the same key (--refresh, or its image was removed): a new
    // image ID, so its children are rebuilt on it and everything after them runs too.
    let rebuilt = running(&Except(vec!["build:base/trixie"]));
    let ids: Vec<&str> = rebuilt.iter().map(|(id, _)| id.as_str()).collect();
    for id in ["build:base/trixie", "tag:base/trixie", "build:app/2.0.0/trixie", "test:app/2.0.0/trixie/runs"] {
        assert!(ids.contains(&id), "{id} in {ids:?}");
    }
    assert!(!ids.iter().any(|id| id.contains("bookworm") || id.contains("tool")), "{ids:?}");
    let reason = &rebuilt.iter().find(|(id, _)| id == "build:app/2.0.0/trixie").unwrap().1;
    assert_eq!(reason, "build:base/trixie re-runs");
}
