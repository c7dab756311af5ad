//! `etcd-failover`: the rounds of `failover` ([`kill_rounds`]) against an
//! etcd cluster, so both stores' recovery from a killed leader is measured
//! by one bench on one machine.
//!
//! The leader is read from every member's `Maintenance.Status`, killed by
//! the pid in `<pid dir>/m<N>.pid` (N: the member's place in
//! `--etcd-endpoints`, from 1, as `scripts/etcd-cluster.sh` numbers them),
//! and restarted with `<script> up`; it has caught up once its applied
//! index reaches the leader's index at the restart. Each writer puts a
//! 16-byte value under its own key, starting at its own member and moving
//! to the next on an error or after `--put-timeout`, as an etcd client with
//! several endpoints and a request deadline does; a member that is not
//! leader forwards the put to the leader.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::etcd::{channels_to, member_view, MemberView, KEY_PREFIX, PUT_VALUE, STATUS_TIMEOUT};
use crate::failover::{run_script, sigkill_by_pid_file, CATCH_UP_WAIT_MAX, HEALTHY_WAIT_MAX};
use crate::kill_rounds::{self, FailoverTarget, RoundArgs, RoundWriter};
use crate::pb::etcd::kv_client::KvClient;
use crate::pb::etcd::{DeleteRangeRequest, PutRequest};

/// Flags of `etcd-failover`.
#[derive(Debug, Clone, Args)]
pub struct EtcdFailoverArgs {
    /// Rounds, writers, settle pause.
    #[command(flatten)]
    pub rounds: RoundArgs,
    /// The etcd cluster script; `<script> up` restarts a killed member.
    #[arg(long, default_value = "scripts/etcd-cluster.sh")]
    pub etcd_script: PathBuf,
    /// Where the members' pid files are; default: `.etcd-cluster` beside the script's directory.
    #[arg(long)]
    pub etcd_pid_dir: Option<PathBuf>,
    /// How long a writer waits for one put before it tries the next member.
    /// etcd itself fails a put stranded by its leader's death only after its
    /// request timeout (5 s + 2 election timeouts: 7 s by default), so a
    /// client that waits for that sees ~7 s whatever the election took.
    #[arg(long, default_value = "1s", value_parser = crate::parse_duration)]
    pub put_timeout: Duration,
}

/// Runs the rounds against the etcd cluster at `endpoints`.
///
/// # Errors
/// Bad flags, a cluster that does not become whole, or a script that fails.
pub async fn run(endpoints: &[String], args: &EtcdFailoverArgs, json: bool) -> anyhow::Result<()> {
    anyhow::ensure!(args.etcd_script.is_file(), "--etcd-script {:?} is not a file", args.etcd_script);
    let pid_dir = args
        .etcd_pid_dir
        .clone()
        .unwrap_or_else(|| args.etcd_script.parent().unwrap_or(Path::new(".")).join("..").join(".etcd-cluster"));
    anyhow::ensure!(!args.put_timeout.is_zero(), "--put-timeout must be more than 0");
    let cluster = EtcdCluster {
        endpoints: endpoints.to_vec(),
        status_channels: channels_to(endpoints)?,
        script: args.etcd_script.clone(),
        pid_dir,
        put_timeout: args.put_timeout,
    };
    kill_rounds::run(&cluster, &args.rounds, json).await
}

struct EtcdCluster {
    endpoints: Vec<String>,
    /// One per endpoint, for the status polls (made once, not per poll).
    status_channels: Vec<Channel>,
    script: PathBuf,
    pid_dir: PathBuf,
    put_timeout: Duration,
}

impl EtcdCluster {
    async fn view(&self, place: usize) -> Option<MemberView> {
        member_view(self.status_channels[place].clone(), place).await
    }

    async fn views(&self, places: impl Iterator<Item = usize>) -> Vec<Option<MemberView>> {
        let mut views = Vec::new();
        for place in places {
            views.push(self.view(place).await);
        }
        views
    }
}

/// A writer: a client per member, the member it writes to now, its key.
pub struct PutWriter {
    members: Vec<KvClient<Channel>>,
    at: usize,
    key: Vec<u8>,
    timeout: Duration,
}

impl RoundWriter for PutWriter {
    async fn write(&mut self) -> bool {
        let request = PutRequest { key: self.key.clone(), value: PUT_VALUE.to_vec(), lease: 0 };
        let put = self.members[self.at].put(request);
        let acked = matches!(tokio::time::timeout(self.timeout, put).await, Ok(Ok(_)));
        if !acked {
            self.at = (self.at + 1) % self.members.len();
        }
        acked
    }

    async fn retire(mut self) {
        let request = DeleteRangeRequest { key: self.key.clone(), range_end: Vec::new() };
        let _ = tokio::time::timeout(STATUS_TIMEOUT, self.members[self.at].delete_range(request)).await;
    }
}

impl FailoverTarget for EtcdCluster {
    type Leader = MemberView;
    type Writer = PutWriter;

    fn writer(&self, index: usize) -> anyhow::Result<PutWriter> {
        let members: Vec<_> = channels_to(&self.endpoints)?.into_iter().map(KvClient::new).collect();
        let key = format!("{KEY_PREFIX}failover/{index}").into_bytes();
        Ok(PutWriter { at: index % members.len().max(1), members, key, timeout: self.put_timeout })
    }

    async fn whole(&self) -> anyhow::Result<MemberView> {
        let deadline = Instant::now() + HEALTHY_WAIT_MAX;
        loop {
            let views = self.views(0..self.endpoints.len()).await;
            let leader = views.iter().flatten().find(|view| view.is_leader()).cloned();
            if let Some(leader) = leader {
                if views.iter().all(|view| view.as_ref().is_some_and(|view| view.leader == leader.member_id)) {
                    return Ok(leader);
                }
            }
            anyhow::ensure!(Instant::now() < deadline, "etcd not whole within {HEALTHY_WAIT_MAX:?}: {views:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn id_and_term(leader: &MemberView) -> (u64, u64) {
        (leader.place as u64 + 1, leader.term)
    }

    async fn kill(&self, leader: &MemberView) -> anyhow::Result<()> {
        sigkill_by_pid_file(&self.pid_dir.join(format!("m{}.pid", leader.place + 1))).await.map(|_| ())
    }

    async fn elected(&self, old: &MemberView) -> Option<(u64, u64)> {
        let survivors = (0..self.endpoints.len()).filter(|&place| place != old.place);
        let views = self.views(survivors).await;
        let leader = views.into_iter().flatten().find(|view| view.is_leader() && view.member_id != old.member_id)?;
        Some((leader.place as u64 + 1, leader.term))
    }

    async fn restart(&self, old: &MemberView) -> anyhow::Result<(Option<f64>, u64)> {
        let restart_at = Instant::now();
        run_script(&self.script, &["up"]).await?;
        let survivors = (0..self.endpoints.len()).filter(|&place| place != old.place);
        let target = self.views(survivors).await.into_iter().flatten().map(|view| view.applied_index).max();
        while restart_at.elapsed() < CATCH_UP_WAIT_MAX {
            if let Some(view) = self.view(old.place).await {
                if view.leader != 0 && Some(view.applied_index) >= target {
                    return Ok((Some(restart_at.elapsed().as_secs_f64() * 1000.0), view.term));
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok((None, 0))
    }
}
