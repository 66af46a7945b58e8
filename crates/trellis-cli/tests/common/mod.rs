//! A workspace on disk for tests: files written into a temp dir, loaded through the facade.
#![allow(dead_code)]

pub mod engine;
pub mod private_engine;
pub mod remove;

use std::fs;
use std::path::{Path, PathBuf};

pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new(files: &[(&str, &str)]) -> Self {
        let fixture = Self { dir: tempfile::tempdir().unwrap() };
        for (path, text) in files {
            fixture.write(path, text);
        }
        fixture
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, relative: &str, text: &str) {
        let full = self.path(relative);
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        fs::write(full, text).unwrap();
    }

    pub fn load(&self) -> trellis::Workspace {
        trellis::Workspace::load(self.path("matrix.kdl")).unwrap_or_else(|e| match e {
            trellis::Error::Invalid(d) => panic!("{}", trellis_cli::output::diagnostics(&d.0, false)),
            other => panic!("{other}"),
        })
    }
}

/// A family: a base image per OS, an app image per version × OS built FROM the base, and an
/// unrelated tool image.
pub const FAMILY: &str = r#"
settings {
    name "family"
    registry "localhost:5000"
}
axis "os" "trixie" "bookworm"
axis "version" sort="version" "1.1.0" "2.0.0" "1.0.0"
image "base" {
    matrix "os"
    repository "acme/base"
    dockerfile "templates/base.j2"
    context "contexts/base/{{ os }}"
    tag "{{ os }}"
}
image "app" {
    matrix "version" "os"
    repository "acme/app"
    dockerfile "templates/app.j2"
    context "contexts/app"
    arg "VERSION" "{{ version }}"
    tag "{{ version }}-{{ os }}"
    tag "{{ version.major }}-{{ os }}" float=#true
    test "runs" {
        run "app --version | grep {{ version }}"
    }
}
image "tool" {
    matrix "os"
    repository "acme/tool"
    dockerfile "templates/tool.j2"
    context "contexts/tool"
    tag "{{ os }}"
}
"#;

pub fn family() -> Fixture {
    Fixture::new(&[
        ("matrix.kdl", FAMILY),
        ("templates/base.j2", "FROM scratch\nCOPY rootfs /\n"),
        ("templates/app.j2", "ARG OS={{ os }}\nFROM acme/base:${OS}\nARG VERSION\nCOPY app /usr/bin/app\n"),
        ("templates/tool.j2", "FROM busybox:1.36\nCOPY tool /tool\n"),
        ("contexts/base/trixie/rootfs/etc/os-release", "trixie"),
        ("contexts/base/bookworm/rootfs/etc/os-release", "bookworm"),
        ("contexts/app/app", "#!/bin/sh\necho app\n"),
        ("contexts/app/.dockerignore", "*.log\n"),
        ("contexts/tool/tool", "tool"),
    ])
}

/// The report.json of the newest run under `<root>/.trellis/runs`.
pub fn last_report(root: &Path) -> serde_json::Value {
    let runs = root.join(".trellis/runs");
    let mut ids: Vec<String> =
        fs::read_dir(&runs).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    ids.sort();
    let text = fs::read_to_string(runs.join(ids.last().expect("a run happened")).join("report.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}
