//! Just enough of the Dockerfile grammar to find what an image is built from: `FROM` lines
//! (with `--platform`, `AS name`, multi-stage) and `COPY --from=`, after joining continuation
//! lines and substituting the global `ARG`s (defaults overridden by build args) the way the
//! builder does before the first `FROM`.

use std::collections::HashMap;

/// A reference to another image found in a Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUse {
    /// The reference after substitution, as written (not normalised).
    pub reference: String,
    /// 1-based line of the instruction.
    pub line: usize,
}

/// Every external image a Dockerfile uses, in order: `FROM` images that are not earlier stages
/// or `scratch`, and `COPY --from` images that are not stages.
pub fn image_uses(dockerfile: &str, build_args: &[(String, String)]) -> Vec<ImageUse> {
    scan(dockerfile, build_args).1.into_iter().map(|found| found.image_use).collect()
}

/// The Dockerfile with the images `replacement` maps (by their reference after substitution)
/// written in their place: the `FROM` operand or the `--from=` value. A rewritten instruction
/// is put on one line; the lines it continued on stay, empty, so line numbers hold.
pub fn replace_images(
    dockerfile: &str,
    build_args: &[(String, String)],
    replacement: impl Fn(&str) -> Option<String>,
) -> String {
    let (instructions, found) = scan(dockerfile, build_args);
    let mut rewritten: std::collections::BTreeMap<usize, Vec<String>> = Default::default();
    for found in found {
        let Some(new) = replacement(&found.image_use.reference) else { continue };
        let words = (rewritten.entry(found.instruction))
            .or_insert_with(|| instructions[found.instruction].text.split_whitespace().map(str::to_owned).collect());
        words[found.word] = match words[found.word].starts_with("--from=") {
            true => format!("--from={new}"),
            false => new,
        };
    }
    let mut lines: Vec<String> = dockerfile.lines().map(str::to_owned).collect();
    for (index, words) in rewritten {
        let instruction = &instructions[index];
        lines[instruction.first - 1] = words.join(" ");
        for line in &mut lines[instruction.first..instruction.last] {
            line.clear();
        }
    }
    let mut out = lines.join("\n");
    if dockerfile.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// One logical instruction: continuation lines joined, with the lines it spans (1-based).
struct Instruction {
    first: usize,
    last: usize,
    text: String,
}

/// An image use and where it was written: the instruction, and the word of it.
struct Found {
    image_use: ImageUse,
    instruction: usize,
    word: usize,
}

fn scan(dockerfile: &str, build_args: &[(String, String)]) -> (Vec<Instruction>, Vec<Found>) {
    let escape = escape_char(dockerfile);
    let mut global_args: HashMap<String, String> = HashMap::new();
    let mut stages: Vec<String> = Vec::new();
    let mut seen_from = false;
    let mut found = Vec::new();
    let instructions = instructions(dockerfile, escape);
    for (index, instruction) in instructions.iter().enumerate() {
        let line = instruction.first;
        let words: Vec<&str> = instruction.text.split_whitespace().collect();
        let Some(keyword) = words.first() else { continue };
        let rest = &words[1..];
        match keyword.to_ascii_uppercase().as_str() {
            "ARG" if !seen_from => {
                for declaration in rest {
                    let (name, default) = match declaration.split_once('=') {
                        Some((n, d)) => (n, Some(unquote(d))),
                        None => (*declaration, None),
                    };
                    let value = build_args
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                        .or(default.map(|d| substitute(&d, &global_args)))
                        .unwrap_or_default();
                    global_args.insert(name.to_owned(), value);
                }
            }
            "FROM" => {
                seen_from = true;
                let operands: Vec<(usize, &str)> =
                    rest.iter().enumerate().filter(|(_, w)| !w.starts_with("--")).map(|(i, w)| (i + 1, *w)).collect();
                let Some(&(word, image)) = operands.first() else { continue };
                let image = substitute(image, &global_args);
                if let (Some((_, as_kw)), Some((_, name))) = (operands.get(1), operands.get(2))
                    && as_kw.eq_ignore_ascii_case("as")
                {
                    stages.push(name.to_ascii_lowercase());
                } else {
                    stages.push(String::new());
                }
                let is_stage =
                    stages[..stages.len() - 1].iter().any(|s| !s.is_empty() && s.eq_ignore_ascii_case(&image));
                if !is_stage && !image.eq_ignore_ascii_case("scratch") && !image.is_empty() {
                    found.push(Found { image_use: ImageUse { reference: image, line }, instruction: index, word });
                }
            }
            "COPY" | "ADD" => {
                for (i, flag) in rest.iter().enumerate().take_while(|(_, w)| w.starts_with("--")) {
                    let Some(from) = flag.strip_prefix("--from=") else { continue };
                    let from = substitute(from, &global_args);
                    let is_stage = from.parse::<usize>().is_ok()
                        || stages.iter().any(|s| !s.is_empty() && s.eq_ignore_ascii_case(&from));
                    if !is_stage && !from.is_empty() {
                        let image_use = ImageUse { reference: from, line };
                        found.push(Found { image_use, instruction: index, word: i + 1 });
                    }
                }
            }
            _ => {}
        }
    }
    (instructions, found)
}

/// The `# escape=` parser directive, if any, else `\`.
fn escape_char(dockerfile: &str) -> char {
    for line in dockerfile.lines() {
        let Some(directive) = line.trim().strip_prefix('#') else { break };
        let Some((key, value)) = directive.split_once('=') else { break };
        if key.trim().eq_ignore_ascii_case("escape") {
            return if value.trim() == "`" { '`' } else { '\\' };
        }
    }
    '\\'
}

/// Logical instructions with the lines they span: continuation lines joined, comments and
/// blank lines dropped.
fn instructions(dockerfile: &str, escape: char) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current: Option<Instruction> = None;
    for (index, raw) in dockerfile.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_none()) {
            continue;
        }
        let (continues, body) = match trimmed.strip_suffix(escape) {
            Some(body) => (true, body),
            None => (false, trimmed),
        };
        let entry =
            current.get_or_insert_with(|| Instruction { first: index + 1, last: index + 1, text: String::new() });
        entry.last = index + 1;
        entry.text.push_str(body);
        entry.text.push(' ');
        if !continues {
            out.extend(current.take());
        }
    }
    out.extend(current);
    out
}

fn unquote(s: &str) -> String {
    let t = s.trim();
    for q in ['"', '\''] {
        if t.len() >= 2 && t.starts_with(q) && t.ends_with(q) {
            return t[1..t.len() - 1].to_owned();
        }
    }
    t.to_owned()
}

/// `$NAME`, `${NAME}`, `${NAME:-default}`, `${NAME:+alternative}`; unknown names are empty.
fn substitute(text: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '$' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        if chars.get(i + 1) == Some(&'{') {
            let Some(close) = chars[i + 2..].iter().position(|c| *c == '}') else {
                out.extend(&chars[i..]);
                break;
            };
            let inner: String = chars[i + 2..i + 2 + close].iter().collect();
            i += close + 3;
            let value = if let Some((name, default)) = inner.split_once(":-") {
                vars.get(name).filter(|v| !v.is_empty()).cloned().unwrap_or_else(|| default.to_owned())
            } else if let Some((name, alternative)) = inner.split_once(":+") {
                if vars.get(name).is_some_and(|v| !v.is_empty()) { alternative.to_owned() } else { String::new() }
            } else {
                vars.get(&inner).cloned().unwrap_or_default()
            };
            out.push_str(&value);
        } else {
            let name: String = chars[i + 1..].iter().take_while(|c| c.is_ascii_alphanumeric() || **c == '_').collect();
            if name.is_empty() {
                out.push('$');
                i += 1;
                continue;
            }
            i += 1 + name.len();
            out.push_str(vars.get(&name).map(String::as_str).unwrap_or(""));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(dockerfile: &str, args: &[(&str, &str)]) -> Vec<String> {
        let args: Vec<(String, String)> = args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        image_uses(dockerfile, &args).into_iter().map(|u| u.reference).collect()
    }

    #[test]
    fn plain_from() {
        assert_eq!(refs("FROM debian:bookworm\nRUN true\n", &[]), ["debian:bookworm"]);
    }

    #[test]
    fn scratch_and_stages_are_not_images() {
        let file = "FROM scratch AS base\nFROM golang:1.22 AS build\nFROM base\nCOPY --from=build /x /x\nCOPY --from=0 /y /y\nCOPY --from=busybox:1 /bin/sh /sh\n";
        assert_eq!(refs(file, &[]), ["golang:1.22", "busybox:1"]);
    }

    #[test]
    fn global_args_substitute_with_build_args_winning() {
        let file = "ARG OS=bookworm\nARG TAG\nFROM trellis/debian:${OS}\nFROM node:$TAG-slim\n";
        assert_eq!(refs(file, &[("TAG", "22")]), ["trellis/debian:bookworm", "node:22-slim"]);
        assert_eq!(refs(file, &[("OS", "trixie"), ("TAG", "24")]), ["trellis/debian:trixie", "node:24-slim"]);
        assert_eq!(refs("ARG X\nFROM img:${X:-fallback}\n", &[]), ["img:fallback"]);
    }

    #[test]
    fn continuation_lines_comments_and_flags() {
        let file = "# escape=`\nFROM `\n  --platform=linux/amd64 `\n  # a comment\n  base:1 AS b\n";
        assert_eq!(refs(file, &[]), ["base:1"]);
        assert_eq!(refs("from --platform=$BUILDPLATFORM x:1\n", &[]), ["x:1"]);
    }

    #[test]
    fn images_are_replaced_where_written_and_stages_are_left_alone() {
        let file = "ARG OS=trixie\nFROM trellis/busybox:latest AS unpack\nRUN true\nFROM \\\n  trellis/debian:${OS}\nCOPY --from=unpack /out/ /usr/local/\nCOPY --chown=1 --from=trellis/busybox:latest /bin/sh /sh\n";
        let replaced = replace_images(file, &[], |r| r.starts_with("trellis/").then(|| format!("tmp/{}", r.len())));
        assert_eq!(
            replaced,
            "ARG OS=trixie\nFROM tmp/22 AS unpack\nRUN true\nFROM tmp/21\n\nCOPY --from=unpack /out/ /usr/local/\nCOPY --chown=1 --from=tmp/22 /bin/sh /sh\n"
        );
        assert_eq!(refs(&replaced, &[]), ["tmp/22", "tmp/21", "tmp/22"]);
        assert_eq!(replace_images(file, &[], |_| None), file);
    }

    #[test]
    fn args_after_from_do_not_apply_to_from() {
        assert_eq!(refs("FROM a:1\nARG V=2\nFROM b:$V\n", &[]), ["a:1", "b:"]);
    }
}
