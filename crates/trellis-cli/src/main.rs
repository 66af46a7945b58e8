//! The `trellis` binary: all of it lives in the crate's `cli` module.

fn main() -> std::process::ExitCode {
    trellis_cli::cli::main()
}
