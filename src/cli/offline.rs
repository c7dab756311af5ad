//! `runner-storage restore` and `recover`: thin shells over
//! `node::offline`, run with the node stopped.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::backup::Backup;
use crate::config::NodeConfig;
use crate::node::offline;

/// `restore --from FILE --config node.toml`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup file (`ctl backup FILE`).
    #[arg(long)]
    pub from: PathBuf,
    /// The config of the node to seed (its data dir must be empty).
    #[arg(long)]
    pub config: PathBuf,
    /// The restored cluster's identity; by default one derived from the
    /// backup, the same on every node restored from the same file.
    #[arg(long)]
    pub cluster_id: Option<String>,
}

/// `recover --config node.toml --single-voter`.
#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// The config of the surviving node.
    #[arg(long)]
    pub config: PathBuf,
    /// Make it the only voter (the one recovery there is).
    #[arg(long, required = true)]
    pub single_voter: bool,
}

/// Runs `restore`.
///
/// # Errors
/// An unreadable or damaged backup, a data dir that is not empty, a storage failure.
pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let config = NodeConfig::load(&args.config)?;
    let bytes = std::fs::read(&args.from).with_context(|| format!("cannot read {}", args.from.display()))?;
    let backup = Backup::from_bytes(&bytes).with_context(|| format!("{}", args.from.display()))?;
    let cluster_id = args.cluster_id.unwrap_or_else(|| format!("restored-{:08x}", Backup::checksum(&bytes)));
    let seeded = offline::restore(&config, &backup, &cluster_id).await?;
    println!(
        "node {} restored at log index {} into cluster {} (voters {:?}); start it with serve --config {}",
        config.node_id,
        seeded.index,
        seeded.cluster_id,
        seeded.voter_ids,
        args.config.display()
    );
    Ok(())
}

/// Runs `recover`.
///
/// # Errors
/// A data dir with no Raft state, a storage failure.
pub async fn recover(args: RecoverArgs) -> anyhow::Result<()> {
    let config = NodeConfig::load(&args.config)?;
    let cluster_id = format!("recovered-{}", super::serve::new_cluster_id());
    let seeded = offline::recover_single_voter(&config, &cluster_id).await?;
    println!(
        "node {} is now the single voter of cluster {} at log index {}; start it, then grow the cluster with \
         `ctl members add` (nodes of the old cluster are refused: wipe them and add them as new nodes)",
        config.node_id, seeded.cluster_id, seeded.index
    );
    Ok(())
}
