//! Property tests of floating-tag resolution: the winner is the first producer in variant
//! order, whatever order the axis was written in when it is sorted by version.

use std::path::Path;

use proptest::prelude::*;
use trellis_model::{MemoryFiles, Model, compile};

fn workspace(
    versions: &[String],
    oses: &[&str],
    sort: bool,
    extra_tags: &str,
) -> Result<Model, trellis_model::Diagnostics> {
    let values: Vec<String> = versions.iter().map(|v| format!("\"{v}\"")).collect();
    let oses: Vec<String> = oses.iter().map(|o| format!("\"{o}\"")).collect();
    let text = format!(
        r#"settings {{ name "p"; }}
axis "v" {sort} {values}
axis "os" {oses}
image "app" {{
    matrix "v" "os"
    repository "acme/app"
    dockerfile "D.j2"
    tag "{{{{ v }}}}-{{{{ os }}}}"
    tag "{{{{ v.major }}}}-{{{{ os }}}}" float=#true
    tag "{{{{ v.major }}}}.{{{{ v.minor }}}}" float=#true
    tag "latest" float=#true
{extra_tags}
}}
"#,
        sort = if sort { "sort=\"version\"" } else { "" },
        values = values.join(" "),
        oses = oses.join(" "),
    );
    compile(Path::new("."), "matrix.kdl", &text, &MemoryFiles::default().with("D.j2", "FROM scratch\n"))
}

fn owner<'w>(ws: &'w Model, reference: &str) -> Vec<&'w str> {
    ws.variants
        .iter()
        .filter(|v| v.references.iter().any(|r| r.to_string() == reference))
        .map(|v| v.id.as_str())
        .collect()
}

fn parse(v: &str) -> (u32, u32, u32) {
    let p: Vec<u32> = v.split('.').map(|x| x.parse().unwrap()).collect();
    (p[0], p[1], p[2])
}

fn versions() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::btree_set((1u32..4, 0u32..4, 0u32..4), 1..10)
        .prop_map(|set| set.into_iter().map(|(a, b, c)| format!("{a}.{b}.{c}")).collect::<Vec<_>>())
        .prop_shuffle()
}

proptest! {
    #[test]
    fn sorted_axis_gives_each_float_to_the_highest_version(versions in versions()) {
        let ws = workspace(&versions, &["trixie", "bookworm"], true, "").unwrap();
        let highest = |pred: &dyn Fn(&(u32, u32, u32)) -> bool| {
            versions.iter().filter(|v| pred(&parse(v))).max_by_key(|v| parse(v)).cloned().unwrap()
        };
        for v in &versions {
            let (major, minor, _) = parse(v);
            let top_major = highest(&|p| p.0 == major);
            prop_assert_eq!(owner(&ws, &format!("acme/app:{major}-bookworm")), vec![format!("app/{top_major}/bookworm")]);
            let top_minor = highest(&|p| p.0 == major && p.1 == minor);
            // The bare X.Y tag is produced by both OS variants: the first in variant order wins.
            prop_assert_eq!(owner(&ws, &format!("acme/app:{major}.{minor}")), vec![format!("app/{top_minor}/trixie")]);
            // Exact tags always stay with their own variant.
            prop_assert_eq!(owner(&ws, &format!("acme/app:{v}-trixie")), vec![format!("app/{v}/trixie")]);
        }
        let top = highest(&|_| true);
        prop_assert_eq!(owner(&ws, "acme/app:latest"), vec![format!("app/{top}/trixie")]);
    }

    #[test]
    fn variant_order_is_highest_first_whatever_the_written_order(versions in versions()) {
        let ws = workspace(&versions, &["trixie"], true, "").unwrap();
        let order: Vec<(u32, u32, u32)> = ws.variants.iter().map(|v| parse(&v.values["v"])).collect();
        let mut sorted = order.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        prop_assert_eq!(order, sorted);
    }

    #[test]
    fn unsorted_axis_gives_floats_to_the_first_written(versions in versions()) {
        let ws = workspace(&versions, &["trixie"], false, "").unwrap();
        prop_assert_eq!(owner(&ws, "acme/app:latest"), vec![format!("app/{}/trixie", versions[0])]);
        for v in &versions {
            let major = parse(v).0;
            let first = versions.iter().find(|w| parse(w).0 == major).unwrap();
            prop_assert_eq!(owner(&ws, &format!("acme/app:{major}-trixie")), vec![format!("app/{first}/trixie")]);
        }
    }

    #[test]
    fn every_reference_has_exactly_one_owner(versions in versions()) {
        let ws = workspace(&versions, &["trixie", "bookworm"], true, "").unwrap();
        let mut seen = std::collections::HashSet::new();
        for variant in &ws.variants {
            for reference in &variant.references {
                prop_assert!(seen.insert(reference.to_string()), "{} owned twice", reference);
            }
        }
    }

    #[test]
    fn a_shared_non_floating_tag_is_always_an_error(versions in versions()) {
        let result = workspace(&versions, &["trixie", "bookworm"], true, "    tag \"stable\"");
        let diagnostics = result.expect_err("two variants share a non-floating tag").0;
        prop_assert!(diagnostics.iter().any(|d| d.code() == "trellis::tag::collision"));
    }
}
