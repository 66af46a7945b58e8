//! Foreign platforms run under the kernel's binfmt_misc emulation (Debian's
//! `qemu-user-static`). Before anything runs, every platform the selection builds is checked:
//! a build for a platform the engine cannot run fails at its first `RUN`, minutes in.

use std::path::{Path, PathBuf};

use trellis_model::platform::Platform;

use crate::error::Error;

/// Where the kernel lists its binfmt_misc handlers. `TRELLIS_BINFMT_MISC` points elsewhere
/// (the tests use it to stand for a machine without the handlers).
fn handlers_dir() -> PathBuf {
    std::env::var_os("TRELLIS_BINFMT_MISC").map_or_else(|| PathBuf::from("/proc/sys/fs/binfmt_misc"), PathBuf::from)
}

/// Whether the engine's own architecture runs `platform` without emulation: the same
/// architecture, or one its CPU also executes (386 on amd64, arm on arm64).
fn runs_natively(platform: &Platform<'_>, native: &Platform<'_>) -> bool {
    platform.architecture == native.architecture
        || matches!((platform.architecture, native.architecture), ("386", "amd64") | ("arm", "arm64"))
}

/// Whether the engine shares this machine's kernel (a unix socket, chosen as the docker CLI
/// chooses it: `DOCKER_HOST`, else the current context): only then can its handlers be read
/// here. A remote engine (tcp, ssh) is trusted to have them.
pub(crate) fn engine_is_local() -> bool {
    trellis_docker::EngineHost::from_environment().is_ok_and(|host| host.is_local())
}

/// Checks that every one of `platforms` runs on an engine of platform `native` that shares
/// this machine's kernel. An error names each platform that cannot run and the fix (exit 3).
pub(crate) fn check<'a>(platforms: impl IntoIterator<Item = &'a str>, native: &str) -> Result<(), Error> {
    let native = Platform::parse(native);
    let dir = handlers_dir();
    let mut missing: Vec<String> = Vec::new();
    for platform in platforms {
        let parsed = Platform::parse(platform);
        if runs_natively(&parsed, &native) || missing.iter().any(|m| m.starts_with(platform)) {
            continue;
        }
        let Some(handler) = parsed.qemu_handler() else { continue };
        if !enabled(&dir, handler) {
            missing.push(format!("{platform} (no enabled {} handler {handler})", dir.display()));
        }
    }
    match missing.is_empty() {
        true => Ok(()),
        false => Err(Error::NoEmulation(format!(
            "this engine ({}/{}) cannot run {}: install Debian's qemu-user-static and binfmt-support (`apt-get install qemu-user-static binfmt-support`), which register the handlers; if {} is empty, `mount -t binfmt_misc binfmt_misc {}` first",
            native.os,
            native.architecture,
            missing.join(", "),
            dir.display(),
            dir.display(),
        ))),
    }
}

/// The platforms an engine of platform `native` on this machine's kernel runs under
/// emulation: those of the usual ones whose handler is enabled.
pub(crate) fn emulated(native: &str) -> Vec<String> {
    let native = Platform::parse(native);
    let dir = handlers_dir();
    ["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/386", "linux/ppc64le", "linux/s390x", "linux/riscv64"]
        .into_iter()
        .filter(|platform| {
            let parsed = Platform::parse(platform);
            !runs_natively(&parsed, &native) && parsed.qemu_handler().is_some_and(|handler| enabled(&dir, handler))
        })
        .map(str::to_owned)
        .collect()
}

/// A registered handler says `enabled` on its first line.
fn enabled(dir: &Path, handler: &str) -> bool {
    std::fs::read_to_string(dir.join(handler)).is_ok_and(|text| text.lines().next() == Some("enabled"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_foreign_architectures_need_a_handler() {
        let amd64 = Platform::parse("linux/amd64");
        assert!(runs_natively(&Platform::parse("linux/amd64/v3"), &amd64));
        assert!(runs_natively(&Platform::parse("linux/386"), &amd64));
        assert!(!runs_natively(&Platform::parse("linux/arm64"), &amd64));
        assert!(runs_natively(&Platform::parse("linux/arm/v7"), &Platform::parse("linux/arm64")));
    }
}
