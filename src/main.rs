//! The `runner-storage` binary: parse the command line, start logging, run.

use clap::Parser;

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
