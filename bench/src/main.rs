//! The `runner-storage-bench` binary: parse the command line, start
//! logging, run the bench on a runtime of `--client-threads` workers.

use clap::Parser;

/// mimalloc, as the node's binary has: the bench shares the machine's cores
/// with the nodes, and its figures since set D were taken with it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let args = runner_storage_bench::BenchArgs::parse();
    runner_storage::cli::init_tracing();
    let result = runner_storage::cli::runtime(Some(args.client_threads))
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(runner_storage_bench::run(args)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("runner-storage-bench: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
