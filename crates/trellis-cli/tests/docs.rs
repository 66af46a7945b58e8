//! The docs cannot drift from the code: every ```kdl block of README.md, docs/*.md and
//! examples/*/README.md is checked with the real binary.
//!
//! What a block's info string says:
//! - ```` ```kdl ```` (or ```` ```kdl title="matrix.kdl" ````): a complete matrix.kdl. It is
//!   checked (`trellis check` exits 0) together with the files its section shows — fenced
//!   blocks whose info string names a path, e.g. ```` ```dockerfile title="Dockerfile.j2" ````,
//!   up to the next heading. A file it names that the docs do not show gets a stand-in (a
//!   template or an included file: `FROM scratch`; a test Dockerfile: `ARG IMAGE` /
//!   `FROM ${IMAGE}`; a context: an empty folder): the docs make no claim about those. When
//!   nothing had to be stood in and every FROM and `COPY --from` names scratch, a stage or an
//!   image of the workspace, the workspace is also built on the engine (`trellis build`), and
//!   every reference must then name an image.
//! - ```` ```kdl fragment ````: a deliberate excerpt. It must parse as KDL 2 and, merged into
//!   the docs' running example (FRAME below: `node` × `os`), pass `trellis check`: `settings`,
//!   `axis` and `image` nodes replace the frame's node of the same name and first argument (or
//!   join the frame), `value` nodes join the `node` axis, and any other node joins (or
//!   replaces the same-named one among) the children of `image "node"`.

mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use harness::{Sandbox, image_id};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// The docs' running example: what a fragment is merged into.
const FRAME: &str = r#"
settings {
    name "docs"
}
axis "node" sort="version" {
    value "24.11.1" codename="krypton" lts=#true
    value "22.20.0" codename="jod" lts=#true
    value "20.19.5" codename="iron" lts=#true
}
axis "os" {
    value "trixie" default=#true
    value "bookworm" default=#false
    value "alpine" default=#false
}
image "node" {
    matrix "node" "os"
    repository "docs/node-{{ os }}"
    dockerfile "Dockerfile.j2"
    tag "{{ node }}"
}
"#;

const STAND_IN_TEMPLATE: &str = "FROM scratch\n";
const STAND_IN_TEST: &str = "ARG IMAGE\nFROM ${IMAGE}\n";

/// One fenced block of a Markdown file.
#[derive(Debug, Clone)]
struct Block {
    /// `file:line` of the opening fence.
    place: String,
    language: String,
    title: Option<String>,
    fragment: bool,
    /// Blocks under the same heading share a section number.
    section: usize,
    text: String,
}

/// The fenced blocks of a Markdown text (indented fences too, e.g. in list items).
fn blocks(markdown: &str, file: &str) -> Vec<Block> {
    let mut found = Vec::new();
    let mut section = 0;
    let mut open: Option<(Block, usize, String)> = None; // block, indent, fence
    for (index, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some((block, block_indent, fence)) = &mut open {
            if trimmed.trim_end() == fence.as_str() {
                let (block, _, _) = open.take().unwrap();
                found.push(block);
                continue;
            }
            let strip = line.len().min(*block_indent).min(line.len() - line.trim_start().len());
            block.text.push_str(&line[strip..]);
            block.text.push('\n');
            continue;
        }
        if trimmed.starts_with('#') && indent == 0 {
            section += 1;
            continue;
        }
        let ticks = trimmed.chars().take_while(|c| *c == '`').count();
        let tildes = trimmed.chars().take_while(|c| *c == '~').count();
        if ticks >= 3 || tildes >= 3 {
            let fence = if ticks >= 3 { "`".repeat(ticks) } else { "~".repeat(tildes) };
            let info = trimmed[fence.len()..].trim();
            let (language, title, fragment) = parse_info(info);
            let block = Block {
                place: format!("{file}:{}", index + 1),
                language,
                title,
                fragment,
                section,
                text: String::new(),
            };
            open = Some((block, indent, fence));
        }
    }
    found
}

/// `kdl fragment`, `dockerfile title="x/Dockerfile.j2"` → (language, title, fragment).
fn parse_info(info: &str) -> (String, Option<String>, bool) {
    let (language, mut rest) = info.split_once(char::is_whitespace).unwrap_or((info, ""));
    let (mut title, mut fragment) = (None, false);
    while !rest.trim().is_empty() {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix("title=\"") {
            let end = after.find('"').expect("a closing quote in the info string");
            title = Some(after[..end].to_owned());
            rest = &after[end + 1..];
        } else {
            let (word, after) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            match word {
                "fragment" => fragment = true,
                other => panic!("unknown word `{other}` in the info string `{info}`"),
            }
            rest = after;
        }
    }
    (language.to_owned(), title, fragment)
}

/// What checking a block did.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// `trellis check` passed (with these files stood in).
    Checked { stood_in: BTreeSet<String> },
    /// `trellis check` passed, the workspace was built, and its `references` all name images.
    Built { references: usize },
}

/// Checks every kdl block of one Markdown text; one message per block that fails.
fn check_markdown(markdown: &str, file: &str) -> (usize, Vec<String>, Vec<Verdict>) {
    let all = blocks(markdown, file);
    let mut failures = Vec::new();
    let mut verdicts = Vec::new();
    let mut count = 0;
    for block in all.iter().filter(|b| b.language == "kdl") {
        count += 1;
        let companions: BTreeMap<String, String> = all
            .iter()
            .filter(|b| b.section == block.section && b.language != "kdl" && b.title.is_some())
            .map(|b| (b.title.clone().unwrap(), b.text.clone()))
            .collect();
        let result = if block.fragment { check_fragment(block) } else { check_complete(block, companions) };
        match result {
            Ok(verdict) => verdicts.push(verdict),
            Err(why) => failures.push(format!("{}: {why}", block.place)),
        }
    }
    (count, failures, verdicts)
}

fn check_fragment(block: &Block) -> Result<Verdict, String> {
    let fragment = kdl::KdlDocument::parse_v2(&block.text)
        .map_err(|e| format!("a fragment that is not KDL 2: {e:?}\n{}", block.text))?;
    let merged = merge(FRAME, &fragment);
    let files = BTreeMap::from([
        ("matrix.kdl".to_owned(), merged.clone()),
        ("Dockerfile.j2".to_owned(), STAND_IN_TEMPLATE.to_owned()),
    ]);
    match check_files(&files) {
        Ok((stood_in, _)) => Ok(Verdict::Checked { stood_in }),
        Err(why) => {
            Err(format!("merged into the docs' running example, it does not check:\n{why}\n--- merged ---\n{merged}"))
        }
    }
}

fn check_complete(block: &Block, companions: BTreeMap<String, String>) -> Result<Verdict, String> {
    let manifest = block.title.clone().unwrap_or_else(|| "matrix.kdl".to_owned());
    if manifest != "matrix.kdl" {
        return Err(format!("a complete block is a matrix.kdl (title=\"{manifest}\"); mark excerpts `fragment`"));
    }
    let mut files = companions;
    files.insert(manifest, block.text.clone());
    let (stood_in, dir) = check_files(&files).map_err(|why| format!("it does not check:\n{why}"))?;
    if !stood_in.is_empty() || !local_only(dir.path())? {
        return Ok(Verdict::Checked { stood_in });
    }
    build(&files).map(|references| Verdict::Built { references })
}

/// Writes `files` into a temp dir and runs `trellis check` there, standing in for the files
/// it names that are not given, until it passes; the stood-in paths and the dir.
fn check_files(files: &BTreeMap<String, String>) -> Result<(BTreeSet<String>, tempfile::TempDir), String> {
    let dir = tempfile::Builder::new().prefix("trellis-docs-").tempdir().unwrap();
    for (path, text) in files {
        let full = dir.path().join(path);
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        fs::write(full, text).unwrap();
    }
    let mut stood_in = BTreeSet::new();
    for _ in 0..20 {
        let (code, stderr) = trellis(dir.path(), &["check"]);
        if code == Some(0) {
            return Ok((stood_in, dir));
        }
        let wanted = missing_files(&stderr);
        let new: Vec<(String, Kind)> = wanted.into_iter().filter(|(path, _)| !stood_in.contains(path)).collect();
        if new.is_empty() {
            return Err(stderr);
        }
        for (path, kind) in new {
            let full = dir.path().join(&path);
            assert!(!path.contains("..") && !path.starts_with('/'), "a stand-in outside the workspace: {path}");
            match kind {
                Kind::Context => fs::create_dir_all(&full).unwrap(),
                Kind::Template | Kind::Test => {
                    fs::create_dir_all(full.parent().unwrap()).unwrap();
                    let text = if kind == Kind::Test { STAND_IN_TEST } else { STAND_IN_TEMPLATE };
                    fs::write(&full, text).unwrap();
                }
            }
            stood_in.insert(path);
        }
    }
    Err("still failing after 20 rounds of stand-ins".to_owned())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Template,
    Test,
    Context,
}

/// The files `trellis check` says are missing: `(path, kind)`.
fn missing_files(stderr: &str) -> Vec<(String, Kind)> {
    // One line, without the gutter miette draws in front of a wrapped message.
    let flat = stderr.split_whitespace().filter(|w| *w != "│").collect::<Vec<_>>().join(" ");
    let mut found: Vec<(String, Kind)> = Vec::new();
    for (marker, kind, says) in [
        ("cannot read template `", Kind::Template, "No such file or directory"),
        ("cannot read the Dockerfile `", Kind::Test, "No such file or directory"),
        ("build context `", Kind::Context, "does not exist"),
    ] {
        let mut rest = flat.as_str();
        while let Some(at) = rest.find(marker) {
            rest = &rest[at + marker.len()..];
            let Some(end) = rest.find('`') else { break };
            let path = rest[..end].to_owned();
            rest = &rest[end..];
            // The rest of this diagnostic's message line.
            let message: String = rest.split('×').next().unwrap_or_default().chars().take(160).collect();
            if message.contains(says) && !found.iter().any(|(p, _)| *p == path) {
                found.push((path, kind));
            }
        }
    }
    found
}

fn trellis(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("TRELLIS_ENGINE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code(), text)
}

/// Whether every image the rendered Dockerfiles start from or copy from is scratch, an earlier
/// stage or an image of the workspace (after the `ARG` defaults before the first FROM).
fn local_only(dir: &Path) -> Result<bool, String> {
    let (code, out) = trellis(dir, &["tags", "--json"]);
    if code != Some(0) {
        return Err(format!("tags --json failed:\n{out}"));
    }
    let json_start = out.find('[').ok_or_else(|| format!("tags --json printed no JSON:\n{out}"))?;
    let tags: serde_json::Value = serde_json::Deserializer::from_str(&out[json_start..])
        .into_iter()
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| format!("tags --json printed no JSON:\n{out}"))?;
    let references: BTreeSet<String> = tags
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["references"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_owned()))
        .collect();
    let (code, out) = trellis(dir, &["render"]);
    if code != Some(0) {
        return Err(format!("render failed:\n{out}"));
    }
    for line in out.lines() {
        let Some(path) = line.strip_prefix("wrote").map(str::trim) else { continue };
        let text = fs::read_to_string(dir.join(path)).map_err(|e| format!("{path}: {e}"))?;
        if !dockerfile_is_local(&text, &references) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn dockerfile_is_local(text: &str, references: &BTreeSet<String>) -> bool {
    let mut args: BTreeMap<String, String> = BTreeMap::new();
    let mut stages: BTreeSet<String> = BTreeSet::new();
    let mut seen_from = false;
    let substitute = |value: &str, args: &BTreeMap<String, String>| {
        args.iter().fold(value.to_owned(), |v, (name, default)| {
            v.replace(&format!("${{{name}}}"), default).replace(&format!("${name}"), default)
        })
    };
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(instruction) = words.first().map(|w| w.to_ascii_uppercase()) else { continue };
        match instruction.as_str() {
            "ARG" if !seen_from => {
                if let Some((name, default)) = words.get(1).and_then(|w| w.split_once('=')) {
                    args.insert(name.to_owned(), default.trim_matches('"').to_owned());
                }
            }
            "FROM" => {
                seen_from = true;
                let rest: Vec<&str> = words[1..].iter().copied().filter(|w| !w.starts_with("--")).collect();
                let Some(base) = rest.first() else { return false };
                let base = substitute(base, &args);
                let local =
                    base.eq_ignore_ascii_case("scratch") || stages.contains(&base) || references.contains(&base);
                if !local {
                    return false;
                }
                if rest.len() >= 3 && rest[1].eq_ignore_ascii_case("as") {
                    stages.insert(rest[2].to_owned());
                }
            }
            "COPY" | "ADD" => {
                for word in &words[1..] {
                    if let Some(from) = word.strip_prefix("--from=") {
                        let from = substitute(from, &args);
                        let local = stages.contains(&from)
                            || from.chars().all(|c| c.is_ascii_digit())
                            || references.contains(&from);
                        if !local {
                            return false;
                        }
                    }
                }
            }
            _ => {}
        }
    }
    true
}

/// Builds the files as a personalised workspace on the engine; the number of references,
/// each of which must then name an image.
fn build(files: &BTreeMap<String, String>) -> Result<usize, String> {
    let sandbox = Sandbox::from_files(files, "docs");
    let run = sandbox.trellis(".", &["build"]);
    if run.code != Some(0) {
        return Err(format!("it checks, names only local images, but does not build:\n{}", run.show()));
    }
    let tags = sandbox.trellis(".", &["tags", "--json"]);
    let mut references = 0;
    for entry in tags.json().as_array().unwrap() {
        for reference in entry["references"].as_array().unwrap() {
            let reference = reference.as_str().unwrap();
            if image_id(reference).is_none() {
                return Err(format!("built, but {reference} names no image"));
            }
            references += 1;
        }
    }
    Ok(references)
}

fn first_argument(node: &kdl::KdlNode) -> Option<String> {
    node.entries().iter().find(|e| e.name().is_none()).and_then(|e| e.value().as_string()).map(str::to_owned)
}

/// Puts `node` into `document`, in place of a node with its name and first argument.
fn place(document: &mut kdl::KdlDocument, node: &kdl::KdlNode) {
    let key = (node.name().value().to_owned(), first_argument(node));
    let nodes = document.nodes_mut();
    match nodes.iter_mut().find(|n| (n.name().value().to_owned(), first_argument(n)) == key) {
        Some(existing) => *existing = node.clone(),
        None => nodes.push(node.clone()),
    }
}

/// The frame with the fragment's nodes put where they belong (see the module docs).
fn merge(frame: &str, fragment: &kdl::KdlDocument) -> String {
    let mut document = kdl::KdlDocument::parse_v2(frame).unwrap();
    for node in fragment.nodes() {
        let (parent, argument) = match node.name().value() {
            "settings" | "axis" | "image" => {
                place(&mut document, node);
                continue;
            }
            "value" => ("axis", "node"),
            _ => ("image", "node"),
        };
        let owner = document
            .nodes_mut()
            .iter_mut()
            .find(|n| n.name().value() == parent && first_argument(n).as_deref() == Some(argument))
            .unwrap_or_else(|| panic!("the frame has no {parent} \"{argument}\""));
        place(owner.ensure_children(), node);
    }
    document.autoformat();
    document.to_string()
}

/// README.md, docs/*.md and examples/*/README.md.
fn documents() -> Vec<PathBuf> {
    let root = Path::new(ROOT);
    let mut found = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    found.extend(docs);
    let mut examples: Vec<PathBuf> = fs::read_dir(root.join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path().join("README.md"))
        .filter(|p| p.is_file())
        .collect();
    examples.sort();
    found.extend(examples);
    found
}

#[test]
fn every_kdl_block_of_the_docs_checks() {
    let mut failures = Vec::new();
    let mut counted = Vec::new();
    for path in documents() {
        let markdown = fs::read_to_string(&path).unwrap();
        let shown = path.strip_prefix(ROOT).unwrap_or(&path).display().to_string();
        let (count, mut failed, _) = check_markdown(&markdown, &shown);
        counted.push(format!("{shown}: {count}"));
        failures.append(&mut failed);
    }
    assert!(counted.iter().any(|c| !c.ends_with(": 0")), "no kdl block found at all: {counted:?}");
    assert!(failures.is_empty(), "{} kdl block(s) of the docs fail:\n\n{}", failures.len(), failures.join("\n\n"));
}

/// The checker can fail: a block the code does not accept is reported with its place.
#[test]
fn a_block_that_drifted_from_the_code_is_reported() {
    let markdown = "# Doc\n\n```kdl\nsettings { name \"x\" }\nimage \"a\" {\n    repository \"acme/a\"\n    \
                    dockerfile \"Dockerfile.j2\"\n    tags \"latest\"\n}\n```\n\n## Fragment\n\n```kdl fragment\n\
                    tag \"lts\" float=true\n```\n\n```kdl fragment\ntag \"{{ node.codenam }}\"\n```\n";
    let (count, failures, _) = check_markdown(markdown, "drift.md");
    assert_eq!(count, 3);
    assert_eq!(failures.len(), 3, "{failures:#?}");
    assert!(
        failures[0].starts_with("drift.md:3:") && failures[0].contains("trellis::schema::unknown_node"),
        "{}",
        failures[0]
    );
    assert!(failures[1].contains("not KDL 2"), "{}", failures[1]);
    assert!(failures[2].contains("trellis::template::undefined"), "{}", failures[2]);
}

/// A complete example whose section shows every file it needs, and which starts from scratch,
/// is built on the engine; one that names a file the docs do not show is checked only.
#[test]
fn a_complete_local_example_is_built_and_one_with_stand_ins_is_checked() {
    let marker = harness::unique("docs-self-test");
    let markdown = format!(
        "## Local\n\n```kdl title=\"matrix.kdl\"\nsettings {{\n    name \"docs-local\"\n}}\nimage \"hello\" {{\n    \
         repository \"docsdemo/hello\"\n    dockerfile \"Dockerfile.j2\"\n    tag \"latest\"\n}}\n```\n\n\
         ```dockerfile title=\"Dockerfile.j2\"\nFROM scratch AS files\nCOPY hello.txt /hello.txt\n\nFROM scratch\n\
         COPY hello.txt /hello.txt\nCOPY --from=files /hello.txt /copy.txt\n```\n\n```text title=\"hello.txt\"\nhello from {marker}\n```\n\n\
         ## Not local\n\n```kdl\nsettings {{\n    name \"docs-remote\"\n}}\nimage \"app\" {{\n    repository \"docsdemo/app\"\n    \
         dockerfile \"app/Dockerfile.j2\"\n    context \"app/context\"\n    tag \"latest\"\n}}\n```\n"
    );
    let (count, failures, verdicts) = check_markdown(&markdown, "self.md");
    assert_eq!(count, 2);
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(verdicts[0], Verdict::Built { references: 1 });
    assert_eq!(
        verdicts[1],
        Verdict::Checked { stood_in: ["app/Dockerfile.j2".to_owned(), "app/context".to_owned()].into() }
    );
}

#[test]
fn fragments_join_the_running_example_where_they_belong() {
    let fragment = kdl::KdlDocument::parse_v2(
        "value \"25.0.0\"\ntag \"{{ node }}\" float=#true\ntest \"t\" { run \"true\"; }\naxis \"os\" \"trixie\"\n",
    )
    .unwrap();
    let merged = kdl::KdlDocument::parse_v2(&merge(FRAME, &fragment)).unwrap();
    let node_axis = merged.nodes().iter().find(|n| first_argument(n).as_deref() == Some("node")).unwrap();
    assert_eq!(node_axis.children().unwrap().nodes().len(), 4, "the value joins the node axis");
    let image = merged.get("image").unwrap().children().unwrap();
    assert_eq!(image.nodes().iter().filter(|n| n.name().value() == "tag").count(), 1, "the same tag is replaced");
    assert!(image.get("test").is_some(), "other nodes join the image");
    let os = merged.nodes().iter().find(|n| first_argument(n).as_deref() == Some("os")).unwrap();
    assert!(os.children().is_none(), "a top-level node replaces the frame's: {os}");
}
