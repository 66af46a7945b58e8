//! The `trellis` command over the trellis library: clap, live progress, the Markdown and
//! JUnit reports, diagnostics rendering and exit codes. Everything trellis prints is printed
//! here; the library prints nothing.

pub mod ci;
pub mod cli;
pub mod output;
pub mod reporter;
