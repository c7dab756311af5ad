//! `runner-storage ctl`: inspect and administer a running cluster.

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::client::Client;

/// Where the cluster is and what to do.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Comma-separated `host:port` endpoints of the cluster's nodes.
    #[arg(long, env = "RUNNER_STORAGE_ENDPOINTS", default_value = "127.0.0.1:7001", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Connection security (TLS CA, bearer token).
    #[command(flatten)]
    pub security: ClientSecurityArgs,
    /// The namespace `status`, `runners`, `locks` and `set-expiration` act in.
    #[arg(long, env = "RUNNER_STORAGE_NAMESPACE", default_value = crate::state_machine::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// How a command-line client connects: TLS and the bearer token.
#[derive(Debug, Clone, Args)]
pub struct ClientSecurityArgs {
    /// CA certificate (PEM) of a TLS cluster; connects in plaintext without it.
    #[arg(long, env = "RUNNER_STORAGE_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Bearer token, when the cluster requires one.
    #[arg(long, env = "RUNNER_STORAGE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl ClientSecurityArgs {
    /// A client of `endpoints` with these settings, acting in `namespace`.
    ///
    /// # Errors
    /// When the CA file cannot be read, an endpoint is malformed, or the
    /// namespace is not a valid name.
    pub fn client(&self, endpoints: Vec<String>, namespace: &str) -> anyhow::Result<Client> {
        let tls = self.tls_ca.as_deref().map(crate::transport::Dialer::client_tls).transpose()?;
        let dialer = crate::transport::Dialer::new(tls, self.token.as_deref())?;
        let options = crate::client::ClientOptions { dialer, namespace: namespace.to_owned(), ..Default::default() };
        Ok(Client::with_options(endpoints, options)?)
    }
}

/// The `ctl` subcommands.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Every endpoint's view: id, role, term, leader, commit/applied index.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Change the membership.
    #[command(subcommand)]
    Members(MembersCommand),
    /// Set the namespace's lock expiration, in milliseconds.
    SetExpiration {
        /// The new expiration, e.g. 35000.
        lock_expiration_ms: u64,
    },
    /// Build a snapshot now on every endpoint.
    Snapshot,
    /// Write a consistent backup of the replicated state to FILE (read on
    /// the leader after a read barrier; format version and checksum inside).
    Backup {
        /// Where to write it (replaced atomically).
        file: std::path::PathBuf,
        /// Print what it holds as JSON (index, term, counts per namespace).
        #[arg(long)]
        json: bool,
    },
    /// Hand leadership to NODE (or to the most up-to-date voter) with no
    /// election timeout: the old leader stops heartbeats, the target campaigns.
    TransferLeader {
        /// The node to lead; any up-to-date voter when absent.
        node_id: Option<u64>,
    },
    /// Every namespace: its lock expiration and how many runners and locks it holds.
    Namespaces {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Registered runners: machine id, address, health, liveness, heartbeat age.
    Runners {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Shard locks: shard, holder, age, held or expired.
    Locks {
        /// Only this shard group.
        #[arg(long, default_value = "")]
        group: String,
        /// Only locks of this holder address.
        #[arg(long, default_value = "")]
        address: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Membership changes.
#[derive(Debug, Subcommand)]
pub enum MembersCommand {
    /// Add a node as a learner (it catches up before this returns).
    Add {
        /// The new node's id.
        node_id: u64,
        /// Its gRPC address.
        address: String,
    },
    /// Make the listed nodes exactly the voters.
    SetVoters {
        /// Voter ids.
        #[arg(value_delimiter = ',', required = true)]
        voter_ids: Vec<u64>,
    },
    /// Remove a node from the cluster (voter or learner).
    Remove {
        /// The node to remove.
        node_id: u64,
    },
}

/// Runs one `ctl` command.
///
/// # Errors
/// When the cluster cannot be reached or refuses the change.
pub async fn run(args: CtlArgs) -> anyhow::Result<()> {
    let client = args.security.client(args.endpoints.clone(), &args.namespace)?;
    match args.command {
        CtlCommand::Status { json } => print_status(&client, &args.endpoints, json).await,
        CtlCommand::Members(command) => members(&client, &args.endpoints, command).await,
        CtlCommand::SetExpiration { lock_expiration_ms } => {
            client.set_lock_expiration(lock_expiration_ms).await?;
            println!("lock expiration of namespace {:?} set to {lock_expiration_ms} ms", args.namespace);
            Ok(())
        }
        CtlCommand::Backup { file, json } => backup(&client, &file, json).await,
        CtlCommand::TransferLeader { node_id } => {
            let (leader, term) = client.transfer_leader(node_id).await?;
            println!("node {leader} leads (term {term})");
            Ok(())
        }
        CtlCommand::Namespaces { json } => print_namespaces(&client.list_namespaces().await?, json),
        CtlCommand::Runners { json } => print_runners(&client.list_runners().await?, json),
        CtlCommand::Locks { group, address, json } => print_locks(&client.list_locks(&group, &address).await?, json),
        CtlCommand::Snapshot => {
            for endpoint in &args.endpoints {
                client.trigger_snapshot(endpoint).await.with_context(|| format!("snapshot on {endpoint}"))?;
                println!("{endpoint}: snapshot triggered");
            }
            Ok(())
        }
    }
}

async fn backup(client: &Client, file: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let bytes = client.backup().await?;
    let backup = crate::backup::Backup::from_bytes(&bytes).context("the leader's backup does not read back")?;
    write_durably(file, &bytes).with_context(|| format!("cannot write {}", file.display()))?;
    let summary = backup.summary(&bytes);
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "backup of index {} (term {}), {} bytes, checksum {}, written to {}",
            summary["index"],
            summary["term"],
            bytes.len(),
            summary["checksum"].as_str().unwrap_or(""),
            file.display()
        );
    }
    Ok(())
}

/// Writes `bytes` to `file` so that a crash leaves the old file or the new
/// one: a temporary file, synced, renamed over it, the directory synced.
fn write_durably(file: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let partial = file.with_extension("partial");
    let mut out = std::fs::File::create(&partial)?;
    out.write_all(bytes)?;
    out.sync_all()?;
    std::fs::rename(&partial, file)?;
    let dir = file.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

async fn print_status(client: &Client, endpoints: &[String], json: bool) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for endpoint in endpoints {
        let row = match client.status_of(endpoint).await {
            Ok(status) => serde_json::json!({
                "endpoint": endpoint, "node_id": status.node_id, "role": status.role, "term": status.term,
                "leader_id": status.leader_id, "commit_index": status.commit_index,
                "applied_index": status.applied_index, "lock_expiration_ms": status.lock_expiration_ms,
                "snapshot_index": status.snapshot_index, "snapshot_bytes": status.snapshot_bytes,
                "resident_memory_bytes": status.resident_memory_bytes, "disk_bytes": status.disk_bytes,
            }),
            Err(error) => serde_json::json!({ "endpoint": endpoint, "error": error.to_string() }),
        };
        rows.push(row);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<22} {:>4} {:<10} {:>6} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "ENDPOINT", "ID", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "E ms", "RSS MiB", "DISK MiB"
    );
    let mib = |row: &serde_json::Value, key: &str| row[key].as_u64().unwrap_or(0) as f64 / (1024.0 * 1024.0);
    for row in rows {
        if let Some(error) = row.get("error") {
            println!("{:<22} unreachable: {}", row["endpoint"].as_str().unwrap_or(""), error.as_str().unwrap_or(""));
            continue;
        }
        println!(
            "{:<22} {:>4} {:<10} {:>6} {:>6} {:>8} {:>8} {:>8} {:>8.1} {:>8.1}",
            row["endpoint"].as_str().unwrap_or(""),
            row["node_id"].as_u64().unwrap_or(0),
            row["role"].as_str().unwrap_or(""),
            row["term"].as_u64().unwrap_or(0),
            row["leader_id"].as_u64().unwrap_or(0),
            row["commit_index"].as_u64().unwrap_or(0),
            row["applied_index"].as_u64().unwrap_or(0),
            row["lock_expiration_ms"].as_u64().unwrap_or(0),
            mib(&row, "resident_memory_bytes"),
            mib(&row, "disk_bytes")
        );
    }
    Ok(())
}

async fn members(client: &Client, endpoints: &[String], command: MembersCommand) -> anyhow::Result<()> {
    let response = match command {
        MembersCommand::Add { node_id, address } => client.add_learner(node_id, &address).await?,
        MembersCommand::SetVoters { voter_ids } => client.change_membership(voter_ids, false).await?,
        MembersCommand::Remove { node_id } => {
            let status = first_status(client, endpoints).await?;
            let voters: Vec<u64> =
                status.members.iter().filter(|m| m.voter && m.node_id != node_id).map(|m| m.node_id).collect();
            client.change_membership(voters, true).await?
        }
    };
    println!("voters {:?}, learners {:?} (log index {})", response.voter_ids, response.learner_ids, response.log_index);
    Ok(())
}

async fn first_status(client: &Client, endpoints: &[String]) -> anyhow::Result<crate::pb::v1::StatusResponse> {
    for endpoint in endpoints {
        if let Ok(status) = client.status_of(endpoint).await {
            return Ok(status);
        }
    }
    anyhow::bail!("no endpoint answered Status")
}

fn print_namespaces(namespaces: &[crate::pb::v1::NamespaceInfo], json: bool) -> anyhow::Result<()> {
    if json {
        let rows: Vec<serde_json::Value> = namespaces
            .iter()
            .map(|n| {
                serde_json::json!({
                    "namespace": n.namespace, "lock_expiration_ms": n.lock_expiration_ms,
                    "lock_expiration_set": n.lock_expiration_set, "runners": n.runners,
                    "live_runners": n.live_runners, "locks": n.locks, "held_locks": n.held_locks,
                    "runners_max": n.runners_max, "locks_max": n.locks_max,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<24} {:>10} {:<5} {:>8} {:>6} {:>8} {:>6}",
        "NAMESPACE", "E ms", "SET", "RUNNERS", "LIVE", "LOCKS", "HELD"
    );
    for n in namespaces {
        println!(
            "{:<24} {:>10} {:<5} {:>8} {:>6} {:>8} {:>6}",
            n.namespace, n.lock_expiration_ms, n.lock_expiration_set, n.runners, n.live_runners, n.locks, n.held_locks
        );
    }
    println!("{} namespaces", namespaces.len());
    Ok(())
}

fn print_runners(response: &crate::pb::admin::ListRunnersResponse, json: bool) -> anyhow::Result<()> {
    if json {
        let rows: Vec<serde_json::Value> = response
            .runners
            .iter()
            .map(|r| {
                serde_json::json!({
                    "machine_id": r.machine_id, "address": r.address, "healthy": r.healthy, "live": r.live,
                    "heartbeat_age_ms": r.heartbeat_age_ms, "runner": r.runner,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{:>10} {:<28} {:<8} {:<5} {:>14}", "MACHINE_ID", "ADDRESS", "HEALTHY", "LIVE", "HEARTBEAT_AGE");
    for r in &response.runners {
        println!("{:>10} {:<28} {:<8} {:<5} {:>12}ms", r.machine_id, r.address, r.healthy, r.live, r.heartbeat_age_ms);
    }
    println!("{} runners; lock expiration {} ms", response.runners.len(), response.lock_expiration_ms);
    Ok(())
}

fn print_locks(response: &crate::pb::admin::ListLocksResponse, json: bool) -> anyhow::Result<()> {
    if json {
        let rows: Vec<serde_json::Value> = response
            .locks
            .iter()
            .map(|l| serde_json::json!({"shard_id": l.shard_id, "address": l.address, "age_ms": l.age_ms, "held": l.held}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{:<24} {:<28} {:>10} {:<5}", "SHARD", "HOLDER", "AGE", "HELD");
    for l in &response.locks {
        println!("{:<24} {:<28} {:>8}ms {:<5}", l.shard_id, l.address, l.age_ms, l.held);
    }
    println!("{} locks; lock expiration {} ms", response.locks.len(), response.lock_expiration_ms);
    Ok(())
}
