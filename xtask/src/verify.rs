//! The main job's last word, checked from the outside: in the registry, all references of a
//! variant name one manifest, and it is the one the engine recorded when it pushed the image
//! that variant's local tags name — tags that moved only after every test of the variant
//! passed. Asked over plain HTTP (the registry's v2 API), not through trellis.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use crate::engine::{REGISTRY, REGISTRY_PASSWORD, REGISTRY_USER};
use crate::{Result, root};

pub fn aliases() -> Result {
    let workspace = trellis::Workspace::load(root().join("matrix.kdl")).map_err(|e| e.to_string())?;
    let tags = workspace.tags(&[]).map_err(|e| e.to_string())?;
    let mut references = 0;
    for entry in &tags {
        let mut digests = BTreeSet::new();
        for reference in &entry.references {
            digests.insert(served_digest(reference)?);
            references += 1;
        }
        let [digest] = Vec::from_iter(digests).try_into().map_err(|found: Vec<String>| {
            format!("{}: its references resolve to {} manifests: {}", entry.variant, found.len(), found.join(", "))
        })?;
        let local = &entry.references[0];
        let output = Command::new("docker")
            .args(["image", "inspect", "-f", "{{json .RepoDigests}}", local])
            .output()
            .map_err(|e| format!("cannot run docker: {e}"))?;
        if !String::from_utf8_lossy(&output.stdout).contains(&digest) {
            return Err(format!(
                "{}: the registry serves {digest}, which is not the image {local} names",
                entry.variant
            ));
        }
    }
    println!(
        "verified: {references} references of {} variants in {REGISTRY}; each variant's references are one manifest, its tested image",
        tags.len()
    );
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
