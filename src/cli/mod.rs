//! The command line: `serve`, `ctl` and `bench`, each a thin shell over the library.

pub mod bench;
pub mod ctl;
pub mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// A Raft-replicated RunnerStorage for Effect clusters.
#[derive(Debug, Parser)]
#[command(name = "runner-storage", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node. Without --config: a one-node cluster on 127.0.0.1:7001 with data in ./data.
    Serve {
        /// The node's TOML config (see cluster-config/).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Inspect and administer a running cluster.
    Ctl(ctl::CtlArgs),
    /// Drive a running cluster and report ops/s and latency percentiles.
    Bench(bench::BenchArgs),
}

/// Starts `tracing` logs to stderr, filtered by `RUST_LOG` (default `info`,
/// with openraft's own chatter at `warn`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,sled=warn,h2=warn,tower=warn"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// Runs the parsed command line.
///
/// # Errors
/// Whatever the subcommand fails with, for `main` to print.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    match cli.command {
        Command::Serve { config } => {
            // The config is read before the runtime exists: it sizes it.
            let config = serve::load_config(config.as_deref())?;
            if let Some(threads) = config.worker_threads {
                runtime.worker_threads(threads);
            }
            runtime.build()?.block_on(serve::run(config))
        }
        Command::Ctl(args) => runtime.build()?.block_on(ctl::run(args)),
        Command::Bench(args) => runtime.build()?.block_on(bench::run(args)),
    }
}
