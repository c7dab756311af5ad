//! The `runner-storage` binary: parse the command line, start logging, run.

use clap::Parser;

/// mimalloc instead of glibc malloc: less time in the allocator and less
/// fragmentation in a long-running node (see Cargo.toml).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = runner_storage::cli::Cli::parse();
    runner_storage::cli::init_tracing();
    match runner_storage::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("runner-storage: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
