//! An axis variable behaves as its value string in every template and `when` (DESIGN §3), with
//! `.major` and the attributes on top; an attribute some values lack is `none` on them.

use std::path::Path;

use trellis_model::{MemoryFiles, Model, compile};

const MATRIX: &str = r#"settings { name "t"; }
axis "os" "trixie" "bookworm"
axis "variant" "full" "slim"
axis "py" {
    value "3.13" default=#true
    value "3.12"
}
image "app" {
    matrix "py" "os" "variant"
    exclude variant="slim" when="os == 'trixie'"
    repository "acme/app"
    dockerfile "Dockerfile.j2"
    tag "{{ py }}-{{ os }}-{{ variant }}"
    tag "latest" float=#true when="os == 'bookworm' and variant == 'full' and py.default"
    tag "{{ os | upper }}-{{ py.major }}" float=#true when="py in ['3.12', '3.13'] and variant != 'slim'"
    tag "{{ os ~ '-' ~ variant }}-{{ py }}" when="variant == 'slim'"
    test "slim" when="variant == 'slim'" {
        run "test {{ os }} = bookworm"
    }
}
"#;

const TEMPLATE: &str = "FROM scratch\n{% if variant == \"slim\" %}LABEL slim=yes\n{% endif %}\
{% if py.default is none %}LABEL default=none\n{% endif %}\
{% include \"common.j2\" %}";

fn workspace() -> Model {
    let files = MemoryFiles::default()
        .with("Dockerfile.j2", TEMPLATE)
        .with("common.j2", "LABEL os={{ os }}{% if os.startswith('book') %} old{% endif %}\n");
    compile(Path::new("."), "matrix.kdl", MATRIX, &files).unwrap_or_else(|d| panic!("{:?}", d.0))
}

fn variant<'w>(ws: &'w Model, id: &str) -> &'w trellis_model::Variant {
    ws.variants.iter().find(|v| v.id == id).unwrap_or_else(|| panic!("no variant {id}"))
}

fn tags(ws: &Model, id: &str) -> Vec<String> {
    variant(ws, id).references.iter().map(|r| r.tag.clone()).collect()
}

#[test]
fn comparisons_in_when_hold_on_the_plain_value() {
    let ws = workspace();
    let ids: Vec<&str> = ws.variants.iter().map(|v| v.id.as_str()).collect();
    // The exclude's `when` compared `os` with a string: trixie/slim is gone, bookworm/slim stays.
    assert_eq!(
        ids,
        [
            "app/3.13/trixie/full",
            "app/3.13/bookworm/full",
            "app/3.13/bookworm/slim",
            "app/3.12/trixie/full",
            "app/3.12/bookworm/full",
            "app/3.12/bookworm/slim"
        ]
    );
    assert_eq!(tags(&ws, "app/3.13/bookworm/full"), ["3.13-bookworm-full", "latest", "BOOKWORM-3"]);
    assert_eq!(tags(&ws, "app/3.13/trixie/full"), ["3.13-trixie-full", "TRIXIE-3"]);
    assert_eq!(tags(&ws, "app/3.13/bookworm/slim"), ["3.13-bookworm-slim", "bookworm-slim-3.13"]);
    assert_eq!(tags(&ws, "app/3.12/bookworm/full"), ["3.12-bookworm-full"]);
}

#[test]
fn tests_and_templates_see_the_plain_value_and_none_for_missing_attributes() {
    let ws = workspace();
    let slim = variant(&ws, "app/3.12/bookworm/slim");
    assert_eq!(slim.tests.len(), 1);
    assert!(variant(&ws, "app/3.12/bookworm/full").tests.is_empty());
    assert!(slim.dockerfile.contains("LABEL slim=yes\n"), "{}", slim.dockerfile);
    assert!(slim.dockerfile.contains("LABEL default=none\n"), "{}", slim.dockerfile);
    assert!(slim.dockerfile.contains("LABEL os=bookworm old\n"), "{}", slim.dockerfile);
    let full = variant(&ws, "app/3.13/trixie/full");
    assert!(!full.dockerfile.contains("slim"), "{}", full.dockerfile);
    assert!(!full.dockerfile.contains("default=none"), "{}", full.dockerfile);
    assert!(full.dockerfile.contains("LABEL os=trixie\n"), "{}", full.dockerfile);
}
