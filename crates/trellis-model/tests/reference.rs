//! The fast path for common references gives oci-spec's answers: whenever it accepts a
//! string, oci-spec accepts it too and splits and normalises it the same way; and the shapes
//! a workspace uses every day do take the fast path.

use oci_spec::distribution::Reference;
use proptest::prelude::*;
use trellis_model::reference::{Parts, common};

fn oci(reference: &str) -> Option<Parts> {
    let parsed = Reference::try_from(reference).ok()?;
    Some(Parts {
        registry: parsed.registry().to_owned(),
        repository: parsed.repository().to_owned(),
        tag: parsed.tag()?.to_owned(),
    })
}

/// Reference-like strings: hosts, ports, path components with every separator, tags, and
/// the characters that break them.
fn reference_like() -> impl Strategy<Value = String> {
    let host = prop_oneof![
        3 => Just(String::new()),
        1 => Just("localhost/".to_owned()),
        1 => Just("index.docker.io/".to_owned()),
        3 => "[a-z0-9]{1,5}(\\.[a-z0-9]{1,4}){0,2}(:[0-9]{1,4})?/",
        1 => "[a-zA-Z0-9-]{1,8}(\\.[a-zA-Z0-9-]{0,6}){0,2}(:[0-9a-z]{0,5})?/",
    ];
    let component = prop_oneof![
        4 => "[a-z0-9]{1,4}((\\.|_|__|-{1,3})[a-z0-9]{1,4}){0,2}",
        1 => "[a-zA-Z0-9_.:-]{1,6}",
    ];
    let path = prop::collection::vec(component, 1..4).prop_map(|c| c.join("/"));
    let tag = prop_oneof![
        2 => Just(String::new()),
        4 => ":[A-Za-z0-9_][A-Za-z0-9_.-]{0,8}",
        1 => ":[\\w.-]{0,4}",
        1 => Just(":".to_owned()),
    ];
    (host, path, tag).prop_map(|(h, p, t)| format!("{h}{p}{t}"))
}

#[test]
fn the_fast_path_agrees_with_oci_spec() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = prop_oneof![4 => reference_like(), 1 => "\\PC{0,40}"];
    let (mut fast, mut cases) = (0, 0);
    for _ in 0..6000 {
        let reference = strategy.new_tree(&mut runner).expect("strategies always generate").current();
        cases += 1;
        if let Some(parts) = common(&reference) {
            fast += 1;
            assert_eq!(Some(parts), oci(&reference), "{reference:?}");
        }
    }
    // Not a vacuous property: a good share of the generated strings take the fast path.
    assert!(fast * 4 > cases, "only {fast} of {cases} took the fast path");
}

#[test]
fn everyday_references_take_the_fast_path() {
    for reference in [
        "debian",
        "debian:bookworm",
        "trellis/node:24.11.1-trixie",
        "127.0.0.1:5000/trellis/node:24.11.1",
        "localhost:5000/a/b",
        "registry.example.com/team/app__x:1.0_rc-2",
        "index.docker.io/library/busybox:1.36",
        "acme/my--app:latest",
    ] {
        assert_eq!(common(reference), oci(reference), "{reference}");
        assert!(common(reference).is_some(), "{reference}");
    }
}

#[test]
fn everything_else_is_left_to_oci_spec() {
    for reference in [
        "",
        "UPPER/case:1",
        "a:",
        "a::b",
        "a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "node:ünïcode",
        "a..b",
        "a/-b",
        "host:port/x",
    ] {
        if let Some(fast) = common(reference) {
            assert_eq!(Some(fast), oci(reference), "{reference}");
        }
    }
    assert!(common("a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef").is_none());
}
