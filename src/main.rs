//! The `prism` binary: parse the command line and hand over to [`prism::cli`].

fn main() -> std::process::ExitCode {
    prism::cli::main()
}
