//! Fuzzing parse + compile + dependency analysis: no input may panic. A time-bounded run of
//! random and mutated inputs; `TRELLIS_FUZZ_SECONDS` sets the budget (CI runs it longer).
//! cargo-fuzz needs a nightly toolchain this project cannot assume, so the harness is
//! proptest's generators driven by hand.

use std::path::Path;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use trellis_model::{MemoryFiles, compile};

const SEEDS: &[&str] = &[
    include_str!("../../../matrix.kdl"),
    include_str!("../../../examples/official-node/matrix.kdl"),
    r#"settings { name "t"; }
axis "v" sort="version" { value "1.0" codename="a" lts=#true; value "2.0" codename="b" lts=#false; }
axis "os" "x" "y"
image "app" {
    matrix "v" "os"
    exclude v="1.*" os="y" when="v.lts"
    repository "acme/{{ image }}"
    dockerfile "D.j2"
    path "{{ v }}/{{ os }}"
    arg "A" "{{ v.major }}"
    label "l" "{{ axes.os }}"
    tag "{{ v }}-{{ os }}"
    tag "{{ v.major }}" float=#true when="axes.os == 'x'"
    tag "{{ os | upper }}-{{ v.codename }}" float=#true when="os == 'y' and v in ['1.0', '2.0'] and v.codename != 'b'"
    test "t" { run "true {{ v }}"; }
    test "d" dockerfile="T.Dockerfile" context="."
}
"#,
];

const TEMPLATES: &[&str] = &[
    "FROM scratch\n",
    "ARG B=acme/app:{{ v }}\nFROM ${B} AS s\nCOPY --from=s / /\n",
    "FROM acme/app:{{ v.major }}\n",
    "{% for x in range(3) %}FROM b{{ x }}\n{% endfor %}",
    "# escape=`\nFROM `\n x:1\n",
    "FROM scratch\n{% if os == 'x' %}{% include \"inc.j2\" %}{% endif %}{{ v['codename'] ~ os.startswith('x') }}\n",
];

/// Characters that matter to KDL, minijinja and Dockerfiles.
const ALPHABET: &[char] = &[
    '{', '}', '"', '#', '=', ';', '\\', '/', '*', '\n', ' ', '%', '(', ')', '.', '-', '_', 'a', 'v', '1', '\'', 'r',
    '$', 'é', '\u{feff}', '\0',
];

fn mutated() -> impl Strategy<Value = String> {
    let edits =
        proptest::collection::vec((any::<prop::sample::Index>(), 0u8..4, prop::sample::select(ALPHABET)), 1..12);
    (prop::sample::select(SEEDS), edits).prop_map(|(seed, edits)| {
        let mut chars: Vec<char> = seed.chars().collect();
        for (at, op, c) in edits {
            let i = at.index(chars.len().max(1)).min(chars.len());
            match op {
                0 => chars.insert(i, c),
                1 if i < chars.len() => {
                    chars.remove(i);
                }
                2 if i < chars.len() => chars[i] = c,
                _ => {
                    // Duplicate a slice: repeats nodes, properties and blocks.
                    let end = (i + 40).min(chars.len());
                    let slice: Vec<char> = chars[i..end].to_vec();
                    chars.splice(i..i, slice);
                }
            }
        }
        chars.into_iter().collect()
    })
}

fn arbitrary_text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[{}\"#=;a-z0-9 \n\\\\]{0,200}"]
}

fn one_case(matrix: &str, template: &str) {
    let files = MemoryFiles::default()
        .with("D.j2", template)
        .with("dockerfiles/node/Dockerfile.j2", template)
        .with("dockerfiles/debian/Dockerfile.j2", template)
        .with("dockerfiles/busybox/Dockerfile.j2", template)
        // Included by templates (and including itself: a cycle must not hang).
        .with("inc.j2", template)
        // A test Dockerfile is not a template: its raw text is read for the images it names.
        .with("T.Dockerfile", template);
    if let Ok(workspace) = compile(Path::new("."), "matrix.kdl", matrix, &files) {
        let _ = trellis_graph::Dependencies::new(&workspace);
        for variant in &workspace.variants {
            let _ = trellis_graph::dockerfile::image_uses(&variant.dockerfile, &variant.args);
        }
    }
    let _ = trellis_graph::dockerignore::DockerIgnore::parse(matrix).map(|i| i.excludes(template));
    let _ = trellis_graph::dockerfile::image_uses(matrix, &[]);
}

#[test]
fn parse_and_compile_never_panic() {
    let seconds: u64 = std::env::var("TRELLIS_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut runner = TestRunner::new(Config::default());
    let strategy = (
        prop_oneof![3 => mutated(), 1 => arbitrary_text()],
        prop_oneof![prop::sample::select(TEMPLATES).prop_map(String::from), arbitrary_text()],
    );
    let mut cases = 0u64;
    while Instant::now() < deadline {
        let (matrix, template) = strategy.new_tree(&mut runner).expect("strategies always generate").current();
        let outcome = std::panic::catch_unwind(|| one_case(&matrix, &template));
        assert!(outcome.is_ok(), "panic on input:\n--- matrix.kdl ---\n{matrix}\n--- template ---\n{template}");
        cases += 1;
    }
    eprintln!("fuzz: {cases} cases in {seconds}s, 0 panics");
    assert!(cases > 0);
}

#[test]
fn the_seeds_themselves_compile() {
    // A seed that no longer compiles would make the mutations far less interesting.
    let files = MemoryFiles::default()
        .with("D.j2", TEMPLATES[0])
        .with("dockerfiles/node/Dockerfile.j2", TEMPLATES[0])
        .with("dockerfiles/debian/Dockerfile.j2", TEMPLATES[0])
        .with("dockerfiles/busybox/Dockerfile.j2", TEMPLATES[0])
        .with("T.Dockerfile", TEMPLATES[0]);
    for seed in SEEDS {
        if let Err(d) = compile(Path::new("."), "matrix.kdl", seed, &files) {
            panic!("{:?}", d.0);
        }
    }
}
