//! The command line: `serve`, `ctl`, and the offline `restore` and
//! `recover`, each a thin shell over the library.
//! (The benchmark is a binary of its own, `runner-storage-bench`, in `bench/`.)

pub mod ctl;
pub mod offline;
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
    /// Seed a fresh data dir from a backup (`ctl backup`), with the node stopped.
    Restore(offline::RestoreArgs),
    /// Make a stopped node of a cluster that lost its majority for good a
    /// cluster of one voter (entries it had not seen committed are lost).
    Recover(offline::RecoverArgs),
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
    match cli.command {
        Command::Serve { config } => {
            // The config is read before the runtime exists: it sizes it.
            let config = serve::load_config(config.as_deref())?;
            runtime(config.worker_threads)?.block_on(serve::run(config))
        }
        Command::Ctl(args) => runtime(None)?.block_on(ctl::run(args)),
        Command::Restore(args) => runtime(None)?.block_on(offline::restore(args)),
        Command::Recover(args) => runtime(None)?.block_on(offline::recover(args)),
    }
}

/// A tokio runtime with `threads` workers (default: one per CPU).
///
/// One worker means a current-thread runtime, not a multi-thread one of
/// size 1. The multi-thread scheduler runs a task woken by the running task
/// next (its LIFO slot): when a batch of writes commits, each call's reply
/// wakes the HTTP/2 connection task, which then writes that one reply to
/// the socket before the next call's reply is even made, one `writev` per
/// call. The current-thread scheduler queues wake-ups in order, so the
/// connection runs after all the replies of the batch and writes them
/// together: on the leader at `refresh` C=64, 1.06 → 0.26 `writev` per call,
/// and 25–50% more writes per second at C=64. The price is latency when
/// little is queued: woken tasks wait their turn, so one call's chain of
/// hand-offs is slower (C=1 writes ~0.1 ms, `getRunners` at C=16 a fifth
/// fewer per second; `BENCHMARKS.md`, set K). `runner-storage-bench` runs
/// on one of these too, for the same reason.
///
/// # Errors
/// When the operating system refuses the runtime's threads or its I/O driver.
pub fn runtime(threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(threads) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().build()
}
