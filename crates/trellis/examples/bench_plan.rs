//! `cargo xtask bench plan`: one synthetic workspace of N variants (5 nodes each: render,
//! build, one test, tag, push), timed phase by phase; prints one table row with peak RSS.
//! Run one size per process so that the peak RSS is that size's own.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

fn main() {
    let variants: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let dir = tempfile::tempdir().expect("temp dir");
    write_workspace(dir.path(), variants);
    let text = std::fs::read_to_string(dir.path().join("matrix.kdl")).unwrap();

    let start = Instant::now();
    let parsed = kdl_parse(&text);
    let parse = start.elapsed();

    let t = Instant::now();
    let files = trellis_model::DiskFiles { root: dir.path().to_path_buf() };
    let model = trellis_model::compile(dir.path(), "matrix.kdl", &text, &files).expect("valid workspace");
    let expand = t.elapsed().saturating_sub(parse);
    assert_eq!(model.variants.len(), variants);

    let t = Instant::now();
    let deps = trellis_graph::Dependencies::new(&model).expect("no cycles");
    let deps_time = t.elapsed();

    let t = Instant::now();
    let graph = trellis_graph::Graph::build(&model, &deps, &trellis_graph::GraphInputs::default()).expect("graph");
    let keys = t.elapsed();
    assert_eq!(graph.dag.node_count(), variants * 5);

    let t = Instant::now();
    let selection = trellis_graph::Selection::all(&model);
    let plan = trellis_graph::plan(&model, &graph, &selection, &trellis_graph::NoState);
    let plan_time = t.elapsed();
    assert_eq!(plan.len(), variants * 5);
    let total = start.elapsed();
    assert!(parsed > 0);

    let ms = |d: std::time::Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    let mut line = String::new();
    let _ = write!(
        line,
        "| {:>8} | {:>9} | {:>9} | {:>9} | {:>9} | {:>9} | {:>9} | {:>10} | {:>11.1} |",
        variants,
        ms(parse),
        ms(expand),
        ms(deps_time),
        ms(keys),
        ms(plan_time),
        ms(total),
        peak_rss(),
        total.as_secs_f64() * 1e6 / variants as f64
    );
    println!("{line}");
}

/// Parse-only timing uses the kdl crate directly: the phase trellis-model starts with.
fn kdl_parse(text: &str) -> usize {
    text.parse::<kdl::KdlDocument>().map(|d| d.nodes().len()).unwrap_or(0)
}

fn peak_rss() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or_else(|| "n/a".to_owned(), |kb| format!("{:.1} MiB", kb / 1024.0))
}

/// N variants = 10 × 10 × N/100 over three axes; a few contexts, an external base.
fn write_workspace(dir: &Path, variants: usize) {
    let c = (variants / 100).max(1);
    let a: Vec<String> = (0..10).map(|i| format!("\"{}.{}.0\"", 30 - i, i)).collect();
    let b: Vec<String> = (0..10).map(|i| format!("\"os{i}\"")).collect();
    let cs: Vec<String> = (0..c).map(|i| format!("\"f{i}\"")).collect();
    let matrix = format!(
        r#"settings {{
    name "bench"
    registry "localhost:5000"
}}
axis "a" sort="version" {a}
axis "b" {b}
axis "c" {c}
image "app" {{
    matrix "a" "b" "c"
    repository "bench/app-{{{{ c }}}}"
    dockerfile "templates/Dockerfile.j2"
    context "contexts/{{{{ b }}}}"
    arg "VERSION" "{{{{ a }}}}"
    label "org.opencontainers.image.version" "{{{{ a }}}}"
    tag "{{{{ a }}}}-{{{{ b }}}}"
    tag "{{{{ a.major }}}}-{{{{ b }}}}" float=#true
    tag "latest-{{{{ b }}}}" float=#true
    test "version" {{
        run "app --version | grep -qx '{{{{ a }}}}'"
    }}
}}
"#,
        a = a.join(" "),
        b = b.join(" "),
        c = cs.join(" ")
    );
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(dir.join("matrix.kdl"), matrix).unwrap();
    std::fs::write(
        dir.join("templates/Dockerfile.j2"),
        "ARG BASE=debian:{{ b }}\nFROM ${BASE}\nARG VERSION\nCOPY app /usr/local/bin/app\n\
         RUN echo {{ a }} {{ c }} > /version\nLABEL variant={{ image }}-{{ axes.c }}\nCMD [\"app\"]\n",
    )
    .unwrap();
    for i in 0..10 {
        let context = dir.join(format!("contexts/os{i}"));
        std::fs::create_dir_all(&context).unwrap();
        std::fs::write(context.join("app"), vec![b'x'; 64 * 1024]).unwrap();
        std::fs::write(context.join(".dockerignore"), "*.log\n").unwrap();
    }
}
