//! Settings reach the workspace as written, or as their defaults when left out.

use std::path::Path;

use trellis_model::{BuilderChoice, MemoryFiles, Model, compile};

fn workspace(settings: &str) -> Model {
    let matrix = format!(
        "settings {{\n    name \"t\"\n{settings}\n}}\naxis \"v\" \"1\"\nimage \"app\" {{\n    matrix \"v\"\n    repository \"acme/app\"\n    dockerfile \"Dockerfile.j2\"\n    tag \"{{{{ v }}}}\"\n}}\n"
    );
    let files = MemoryFiles::default().with("Dockerfile.j2", "FROM scratch\n");
    compile(Path::new("."), "matrix.kdl", &matrix, &files).unwrap_or_else(|d| panic!("{:?}", d.0))
}

#[test]
fn the_builder_is_left_to_the_engine_unless_chosen() {
    assert_eq!(workspace("").settings.builder, None);
    assert_eq!(workspace("    builder \"buildkit\"").settings.builder, Some(BuilderChoice::BuildKit));
    assert_eq!(workspace("    builder \"classic\"").settings.builder, Some(BuilderChoice::Classic));
}
