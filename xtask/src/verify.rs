//! The main job's last word, checked from the outside: the registry serves, under every
//! reference, the images trellis built and tested. Asked without trellis's code — over plain
//! HTTP (the registry's v2 API) for a variant built for the engine's own platform, with skopeo
//! and jq (which `cargo xtask engine` installs) for one built for `platforms`.
//!
//! A variant without `platforms` (today's family): all its references name one manifest, and
//! it is the one the engine recorded when it pushed the image the variant's local tags name —
//! tags that moved only after every test of the variant passed.
//!
//! A variant with `platforms`: every reference is an image index of exactly those platforms;
//! all its references name one index; each entry's config digest (the image ID) is the image
//! trellis recorded building for that platform (`build:<variant>@<platform>` in its state
//! store), on which every test of the variant for that platform recorded a pass — or, when
//! another checkout or CI runner sharing the registry built it, the image the trellis record
//! beside the index names with a pass of every such test (docs/ci.md). Last, for each
//! platform, the Node.js image tagged `latest` is pulled as a user would pull it, runs, and says
//! the machine and the Node.js version it promises; what the pull added is removed again.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};

use trellis::{Outcome, StateStore, Variant};

use crate::engine::{REGISTRY, REGISTRY_PASSWORD, REGISTRY_USER};
use crate::inputs::architecture;
use crate::{Result, root};

/// The media types of an image index: OCI's, and Docker's manifest list.
const INDEX_TYPES: &[&str] =
    &["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];

/// The checks that fit the family: one manifest per variant today, an image index per
/// variant built for `platforms`.
pub fn family() -> Result {
    let workspace = trellis::Workspace::load(root().join("matrix.kdl")).map_err(|e| e.to_string())?;
    let variants = workspace.variants();
    let references: usize = variants.iter().map(|v| v.references.len()).sum();
    if variants.iter().all(|v| v.platforms.is_empty()) {
        let registry = Registry::from_engine()?;
        for variant in variants {
            one_manifest(variant, &registry)?;
        }
        println!(
            "verified: {references} references of {} variants in {REGISTRY}; each variant's references are one manifest, its tested image",
            variants.len()
        );
        return Ok(());
    }
    let state = StateStore::read(&workspace.state_dir()).map_err(|e| e.to_string())?;
    let registry = Registry::from_engine()?;
    let latest = latest_node(&workspace)?;
    let (mut latest_images, mut latest_index) = (Vec::new(), String::new());
    for variant in variants {
        match variant.platforms.is_empty() {
            true => one_manifest(variant, &registry)?,
            false => {
                let images = registry.one_index(variant, &state)?;
                if variant.id == latest.id {
                    latest_images = images;
                    latest_index = registry.variant_index(variant)?.digest;
                }
            }
        }
    }
    println!(
        "verified: {references} references of {} variants in {REGISTRY}; each variant's references are one image \
         index of its platforms, each entry the image trellis built and tested for that platform",
        variants.len()
    );
    let node = latest.values.get("node").ok_or(format!("{} has no node value", latest.id))?;
    let reference = format!("{REGISTRY}/{}:latest", latest.repository);
    for (platform, image) in &latest_images {
        runs_as_promised(&reference, platform, (image, &latest_index), node)?;
    }
    if !latest.platforms.is_empty() {
        println!("verified: {reference} runs Node.js v{node} on {}", latest.platforms.join(", "));
    }
    Ok(())
}

/// All references of a variant built for one platform serve one manifest, the one the engine
/// recorded pushing the image the variant's first local tag names.
fn one_manifest(variant: &Variant, registry: &Registry) -> Result {
    let references: Vec<String> = variant.references.iter().map(ToString::to_string).collect();
    let mut digests = BTreeSet::new();
    for reference in &references {
        digests.insert(served_digest(reference)?);
    }
    let [digest] = Vec::from_iter(digests).try_into().map_err(|found: Vec<String>| {
        format!("{}: its references resolve to {} manifests: {}", variant.id, found.len(), found.join(", "))
    })?;
    let local = references.first().ok_or(format!("{} has no references", variant.id))?;
    let output = Command::new("docker")
        .args(["image", "inspect", "-f", "{{.Id}}", local])
        .output()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    let image = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    // The image ID is the config's digest (classic store) or the manifest's (containerd).
    let config = registry.config_digest(&variant.repository, &digest)?;
    if image != digest && image != config {
        return Err(format!("{}: the registry serves {digest}, which is not the image {local} names", variant.id));
    }
    Ok(())
}

/// The manifest digest the registry serves for `repository:tag`.
fn served_digest(reference: &str) -> Result<String> {
    use base64::Engine as _;
    let (repository, tag) = reference.rsplit_once(':').ok_or(format!("{reference} has no tag"))?;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}"));
    let mut stream = TcpStream::connect(REGISTRY).map_err(|e| format!("the registry on {REGISTRY}: {e}"))?;
    write!(
        stream,
        "HEAD /v2/{repository}/manifests/{tag} HTTP/1.0\r\nHost: {REGISTRY}\r\nAuthorization: Basic {auth}\r\n\
         Accept: application/vnd.docker.distribution.manifest.v2+json\r\n\
         Accept: application/vnd.oci.image.manifest.v1+json\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    response
        .lines()
        .find_map(|line| line.strip_prefix("Docker-Content-Digest: ").map(|d| d.trim().to_owned()))
        .ok_or_else(|| {
            format!("{REGISTRY} does not serve {reference}: {}", response.lines().next().unwrap_or("no answer"))
        })
}

/// The variant of the `node` image that the `latest` tag names.
fn latest_node(workspace: &trellis::Workspace) -> Result<&Variant> {
    let model = workspace.model();
    (model.variants.iter())
        .find(|v| model.image_of(v).name == "node" && v.references.iter().any(|r| r.tag == "latest"))
        .ok_or("no variant of the node image is tagged latest".to_owned())
}

/// The image trellis recorded building for a variant on `platform` (`None`: the engine's own,
/// named in no node id), provided the build and every test of it on that platform recorded a
/// success on that very image.
fn tested_image(state: &StateStore, variant: &Variant, platform: Option<&str>) -> Result<String> {
    let at = platform.map(|p| format!("@{p}")).unwrap_or_default();
    let succeeded = |id: &str| {
        state
            .get(id)
            .filter(|record| record.outcome == Outcome::Succeeded)
            .ok_or(format!("trellis recorded no success of {id}"))
    };
    let build_id = format!("build:{}{at}", variant.id);
    let image =
        succeeded(&build_id)?.details.image.clone().ok_or(format!("trellis recorded no image of {build_id}"))?;
    for test in &variant.tests {
        let test_id = format!("test:{}/{}{at}", variant.id, test.name);
        let tested = succeeded(&test_id)?.details.image.as_deref();
        if tested != Some(image.as_str()) {
            return Err(format!(
                "{test_id} passed on {}, not on {image}, the image {build_id} built",
                tested.unwrap_or("no image")
            ));
        }
    }
    Ok(image)
}

/// An image index as the registry serves it.
struct Index {
    /// `sha256:…` of the bytes served.
    digest: String,
    /// (platform, manifest digest) per entry, platforms as the index writes them.
    entries: Vec<(String, String)>,
}

impl Index {
    /// The manifest of each platform, in the order given; an error unless the index holds
    /// exactly these platforms, once each.
    fn entries_for<'p>(&self, platforms: &'p [String]) -> Result<Vec<(&'p str, String)>> {
        let served: Vec<String> = self.entries.iter().map(|(p, _)| normalized(p)).collect();
        let wanted: Vec<String> = platforms.iter().map(|p| normalized(p)).collect();
        let (mut sorted_served, mut sorted_wanted) = (served.clone(), wanted.clone());
        sorted_served.sort();
        sorted_wanted.sort();
        if sorted_served != sorted_wanted {
            return Err(format!("index {} holds {}, not {}", self.digest, served.join(", "), wanted.join(", ")));
        }
        let manifest = |p: &String| self.entries[served.iter().position(|s| s == p).expect("compared")].1.clone();
        Ok(platforms.iter().zip(&wanted).map(|(p, n)| (p.as_str(), manifest(n))).collect())
    }
}

/// A platform as containerd compares them: arm64's default variant (v8) is no variant.
fn normalized(platform: &str) -> String {
    platform.strip_suffix("/v8").filter(|p| p.ends_with("/arm64")).unwrap_or(platform).to_owned()
}

/// The registry, read with skopeo as the family's user `trellis`.
struct Registry {
    credentials: String,
}

impl Registry {
    /// With the credentials `cargo xtask engine` gave the registry.
    fn from_engine() -> Result<Self> {
        let file = root().join(".cache/engine/registry/password");
        let password = std::fs::read_to_string(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        Ok(Self { credentials: format!("{REGISTRY_USER}:{}", password.trim_end_matches('\n')) })
    }

    /// What the registry serves for `image` (`repository:tag` or `repository@digest`), byte for
    /// byte. Not echoed as `run` does: the command line holds the password.
    fn raw(&self, image: &str) -> Result<Vec<u8>> {
        let output = Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false", "--creds", &self.credentials])
            .arg(format!("docker://{REGISTRY}/{image}"))
            .output()
            .map_err(|e| format!("cannot run skopeo: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "skopeo inspect {REGISTRY}/{image}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(output.stdout)
    }

    /// All references of a variant built for `platforms` serve one image index of exactly
    /// those platforms, each entry the image trellis built and tested for its platform: as
    /// this checkout's state store recorded it, or — when another checkout or CI runner
    /// sharing the registry built it — as the trellis record beside the index says. The
    /// tested image of each platform.
    fn one_index(&self, variant: &Variant, state: &StateStore) -> Result<Vec<(String, String)>> {
        let index = self.variant_index(variant)?;
        let entries = index.entries_for(&variant.platforms).map_err(|e| format!("{}: {e}", variant.id))?;
        let mut tested = Vec::new();
        for (platform, manifest) in entries {
            let config = self.config_digest(&variant.repository, &manifest)?;
            // An image ID is its config's digest on the classic image store, its manifest's
            // on the containerd store (where trellis pushes the manifest as stored).
            let is_entry = |image: &String| *image == config || *image == manifest;
            let here = tested_image(state, variant, Some(platform));
            if let Some(image) = here.as_ref().ok().filter(|image| is_entry(image)) {
                tested.push((platform.to_owned(), image.clone()));
                continue;
            }
            let elsewhere = self.recorded_tested_image(variant, &index.digest, platform);
            if let Some(image) = elsewhere.as_ref().ok().filter(|image| is_entry(image)) {
                tested.push((platform.to_owned(), image.clone()));
                continue;
            }
            let said = |found: Result<String>| found.unwrap_or_else(|e| format!("nothing ({e})"));
            return Err(format!(
                "{}: the {platform} image of {} is {config}, but this checkout's trellis built and tested {} and the registry's record names {}",
                variant.id,
                index.digest,
                said(here),
                said(elsewhere)
            ));
        }
        Ok(tested)
    }

    /// The image the trellis record of `index` (the OCI artifact a push writes beside it,
    /// tagged `sha256-<hex>.trellis` in the first reference's repository) names for
    /// `platform`, provided it lists a pass of every test of the variant on that platform.
    fn recorded_tested_image(&self, variant: &Variant, index: &str, platform: &str) -> Result<String> {
        let tag = format!("{}.trellis", index.replace(':', "-"));
        let raw = self.raw(&format!("{}:{tag}", variant.repository))?;
        let filter = r#".annotations["dev.trellis.record"] | fromjson
            | ((.images[] | select(.platform == $platform) | "image \(.image)"), (.tests | keys[] | "test \(.)"))"#;
        let lines = pipe("jq", &["-r", "--arg", "platform", platform, filter], &raw)?;
        let image = lines.lines().find_map(|line| line.strip_prefix("image "));
        let image = image.ok_or(format!("the record {tag} names no {platform} image"))?;
        let passed: BTreeSet<&str> = lines.lines().filter_map(|line| line.strip_prefix("test ")).collect();
        for test in &variant.tests {
            let id = format!("test:{}/{}@{platform}", variant.id, test.name);
            if !passed.contains(id.as_str()) {
                return Err(format!("the record {tag} lists no pass of {id}"));
            }
        }
        Ok(image.to_owned())
    }

    /// The image index every reference of the variant names: one, the same for all.
    fn variant_index(&self, variant: &Variant) -> Result<Index> {
        let mut found: Option<(String, Index)> = None;
        for reference in &variant.references {
            let image = format!("{}:{}", reference.repository, reference.tag);
            let index = self.index(&image)?;
            match &found {
                Some((first, seen)) if seen.digest != index.digest => {
                    return Err(format!("{}: {first} is {}, but {image} is {}", variant.id, seen.digest, index.digest));
                }
                Some(_) => {}
                None => found = Some((image, index)),
            }
        }
        found.map(|(_, index)| index).ok_or(format!("{} has no references", variant.id))
    }

    /// The index `image` names; an error when it names something else (a single image).
    fn index(&self, image: &str) -> Result<Index> {
        let raw = self.raw(image)?;
        let digest = format!("sha256:{}", pipe("sha256sum", &[], &raw)?.split_whitespace().next().unwrap_or_default());
        // An OCI index may leave its mediaType out; its `manifests` says what it is.
        let lines = pipe(
            "jq",
            &[
                "-r",
                r#"(.mediaType // (if .manifests then "application/vnd.oci.image.index.v1+json" else "none" end)),
                   ((.manifests // [])[] | "\(.digest) \(.platform.os)/\(.platform.architecture)\(.platform.variant // "" | if . == "" then "" else "/" + . end)")"#,
            ],
            &raw,
        )?;
        let mut lines = lines.lines();
        let media_type = lines.next().unwrap_or("none");
        if !INDEX_TYPES.contains(&media_type) {
            return Err(format!("{REGISTRY}/{image} ({digest}) is {media_type}, not an image index"));
        }
        let entries = lines
            .filter_map(|line| line.split_once(' '))
            .map(|(digest, platform)| (platform.to_owned(), digest.to_owned()))
            .collect();
        Ok(Index { digest, entries })
    }

    /// The config digest of the image manifest `repository@digest`: the image's ID.
    fn config_digest(&self, repository: &str, manifest: &str) -> Result<String> {
        let raw = self.raw(&format!("{repository}@{manifest}"))?;
        let config = pipe("jq", &["-r", ".config.digest // empty"], &raw)?;
        match config.trim() {
            "" => Err(format!("{REGISTRY}/{repository}@{manifest} is not an image manifest")),
            digest => Ok(digest.to_owned()),
        }
    }
}

/// Runs `program` with `input` on its stdin; its stdout.
fn pipe(program: &str, args: &[&str], input: &[u8]) -> Result<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    // Manifests are a few KiB: written whole before the output is read.
    child.stdin.take().expect("piped").write_all(input).map_err(|e| format!("cannot feed {program}: {e}"))?;
    let output = child.wait_with_output().map_err(|e| format!("{program}: {e}"))?;
    if !output.status.success() {
        return Err(format!("{program} failed: {}", String::from_utf8_lossy(&output.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `docker` as a user of the registry (its credentials in the engine's docker config).
fn docker(config: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("docker");
    command.args(args).env("DOCKER_CONFIG", config);
    command
}

/// Runs a command that prints an answer, echoing it as `run` does; its trimmed stdout.
fn answer(mut command: Command) -> Result<String> {
    eprintln!("$ {}", crate::describe(&command));
    let output = command.output().map_err(|e| format!("cannot start {}: {e}", crate::describe(&command)))?;
    if !output.status.success() {
        return Err(format!(
            "`{}` failed: {}",
            crate::describe(&command),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// `reference` pulled for `platform` as a user would pull it: the engine gets `image` (the
/// index's entry for that platform), whose `uname -m` is the platform's machine and whose
/// `node --version` is `v<node>`. The engine's images are put back as they were either way.
fn runs_as_promised(reference: &str, platform: &str, (image, index): (&str, &str), node: &str) -> Result {
    let machine = architecture(platform).ok_or(format!("no machine name known for {platform}"))?.machine;
    let config = crate::engine::docker_config()?;
    let before = LocalImages::look(&config, reference, image);
    let ran = pull_and_run(&config, reference, platform, (image, index), (machine, node));
    let restored = before.restore(&config, reference, image);
    ran.and(restored)
}

fn pull_and_run(
    config: &Path,
    reference: &str,
    platform: &str,
    (image, index): (&str, &str),
    (machine, node): (&str, &str),
) -> Result {
    crate::run(docker(config, &["pull", "--quiet", "--platform", platform, reference]))?;
    let pulled = answer(docker(config, &["image", "inspect", "-f", "{{.Id}}", reference]))?;
    // The containerd store names a pulled reference by the index it serves (whose entry for
    // the platform is the tested image, as `one_index` checked); the classic store by the
    // platform's image.
    if pulled != image && pulled != index {
        return Err(format!("pulling {reference} for {platform} gave {pulled}, not its tested image {image}"));
    }
    let ask = |command: &[&str]| {
        let mut run = docker(config, &["run", "--rm", "--platform", platform, reference]);
        run.args(command);
        answer(run)
    };
    let (said_machine, said_version) = (ask(&["uname", "-m"])?, ask(&["node", "--version"])?);
    if said_machine != machine || said_version != format!("v{node}") {
        return Err(format!(
            "{reference} on {platform} says `{said_machine}` and `{said_version}`, not `{machine}` and `v{node}`"
        ));
    }
    Ok(())
}

/// What the engine held before a pull: the image `reference` named locally, and the references
/// of the image the pull brings (`None`: it was not there).
struct LocalImages {
    tagged: Option<String>,
    references: Option<Vec<String>>,
}

impl LocalImages {
    fn look(config: &Path, reference: &str, image: &str) -> Self {
        Self {
            tagged: image_id(config, reference),
            references: image_id(config, image).map(|_| references(config, image)),
        }
    }

    /// The tag names what it named before; an image the pull brought goes, with every reference
    /// to it. On an image that was there before, the references the pull added go too, unless
    /// they are all it has: removing its last reference would remove the image, which trellis
    /// holds by ID (the images of the platforms other than the engine's have no local tag).
    fn restore(&self, config: &Path, reference: &str, image: &str) -> Result {
        if let Some(tagged) = self.tagged.as_deref().filter(|t| *t != image) {
            crate::run(docker(config, &["tag", tagged, reference]))?;
        }
        let Some(before) = &self.references else {
            // Not there when the pull failed or brought another image.
            return match image_id(config, image) {
                Some(_) => crate::run(docker(config, &["image", "rm", image])),
                None => Ok(()),
            };
        };
        let now = references(config, image);
        let added: Vec<&String> = now.iter().filter(|r| !before.contains(r)).collect();
        if added.len() == now.len() {
            if !added.is_empty() {
                eprintln!(
                    "xtask: kept {} on {image}: its only references",
                    added.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
                );
            }
            return Ok(());
        }
        for added in added {
            // Untagging also drops the digest references of that repository the image has no
            // other tag in: each is removed only if still there.
            if references(config, image).contains(added) {
                crate::run(docker(config, &["image", "rm", added]))?;
            }
        }
        Ok(())
    }
}

/// The local image ID `name` (a reference or an ID) names, if any.
fn image_id(config: &Path, name: &str) -> Option<String> {
    let output = docker(config, &["image", "inspect", "-f", "{{.Id}}", name]).stderr(Stdio::null()).output().ok()?;
    let id = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (output.status.success() && !id.is_empty()).then_some(id)
}

/// Every tag and digest reference of a local image.
fn references(config: &Path, image: &str) -> Vec<String> {
    let format = "{{range .RepoTags}}{{println .}}{{end}}{{range .RepoDigests}}{{println .}}{{end}}";
    docker(config, &["image", "inspect", "-f", format, image])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().filter(|l| !l.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(entries: &[(&str, &str)]) -> Index {
        Index {
            digest: "sha256:ix".to_owned(),
            entries: entries.iter().map(|(p, d)| ((*p).to_owned(), (*d).to_owned())).collect(),
        }
    }

    fn check(entries: &[(&str, &str)], wanted: &[&str], expected: std::result::Result<&[(&str, &str)], &str>) {
        let wanted: Vec<String> = wanted.iter().map(|p| (*p).to_owned()).collect();
        let index = index(entries);
        let found = index.entries_for(&wanted);
        let found = found.as_ref().map(|v| v.iter().map(|(p, d)| (*p, d.as_str())).collect::<Vec<_>>());
        match expected {
            Ok(pairs) => assert_eq!(found, Ok(pairs.to_vec())),
            Err(message) => assert_eq!(found.unwrap_err(), message),
        }
    }

    #[test]
    fn an_index_holds_exactly_the_declared_platforms() {
        let both = ["linux/amd64", "linux/arm64"];
        check(
            &[("linux/arm64/v8", "sha256:b"), ("linux/amd64", "sha256:a")],
            &both,
            Ok(&[("linux/amd64", "sha256:a"), ("linux/arm64", "sha256:b")]),
        );
        check(
            &[("linux/amd64", "sha256:a")],
            &both,
            Err("index sha256:ix holds linux/amd64, not linux/amd64, linux/arm64"),
        );
        check(
            &[("linux/amd64", "sha256:a"), ("linux/amd64", "sha256:c"), ("linux/arm64", "sha256:b")],
            &both,
            Err("index sha256:ix holds linux/amd64, linux/amd64, linux/arm64, not linux/amd64, linux/arm64"),
        );
        check(
            &[("linux/amd64", "sha256:a"), ("linux/arm/v7", "sha256:b")],
            &both,
            Err("index sha256:ix holds linux/amd64, linux/arm/v7, not linux/amd64, linux/arm64"),
        );
    }

    #[test]
    fn arm64_v8_is_arm64() {
        assert_eq!(normalized("linux/arm64/v8"), "linux/arm64");
        assert_eq!(normalized("linux/arm/v7"), "linux/arm/v7");
        assert_eq!(normalized("linux/amd64"), "linux/amd64");
    }
}
