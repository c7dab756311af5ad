//! Security: bearer-token auth, TLS for clients, mutual TLS between peers.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use runner_storage::client::{Client, ClientOptions};
use runner_storage::pb::raft::raft_client::RaftClient;
use runner_storage::pb::raft::RaftPayload;
use runner_storage::transport::Dialer;
use runner_storage::{Encoded, Error};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::common::{runner_json, TestCluster, Tuning, LEADER_TIMEOUT};

fn generate_certs(dir: &Path, names: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gen-certs.sh");
    let status = Command::new("bash").arg(script).arg(dir).args(names).status().expect("run gen-certs.sh");
    assert!(status.success(), "gen-certs.sh failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_the_token_are_unauthenticated() {
    let token = "t0ken-for-tests";
    let cluster = TestCluster::start_with(3, Tuning { auth_token: Some(token.into()), ..Tuning::default() });
    cluster.wait_for_leader(LEADER_TIMEOUT).await;

    let anonymous = Client::new(cluster.endpoints()).unwrap();
    let error = anonymous.register("h:1", &runner_json("h", 1), true).await.unwrap_err();
    assert!(matches!(&error, Error::Unauthenticated(message) if message.contains("token")), "{error}");
    let wrong = Dialer::new(None, Some("not-the-token")).unwrap();
    let impostor = Client::with_options(cluster.endpoints(), ClientOptions { dialer: wrong, ..Default::default() });
    let error = impostor.unwrap().get_runners().await.unwrap_err();
    assert!(matches!(&error, Error::Unauthenticated(message) if message.contains("not valid")), "{error}");

    // With the token, through every node: followers forward with the token too.
    assert_eq!(cluster.client().register("h:1", &runner_json("h", 1), true).await.unwrap(), 1);
    for id in cluster.running_ids() {
        let dialer = Dialer::new(None, Some(token)).unwrap();
        let options = ClientOptions { dialer, ..Default::default() };
        let via_one_node = Client::with_options(vec![cluster.address(id)], options).unwrap();
        assert_eq!(via_one_node.get_runners().await.unwrap().len(), 1, "via node {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cluster_refuses_plaintext_and_foreign_certificates() {
    let certs = tempfile::tempdir().unwrap();
    let other_ca = tempfile::tempdir().unwrap();
    generate_certs(certs.path(), &["node1", "node2", "node3"]);
    // Node 4 holds a certificate of another CA (it trusts the cluster's CA, but
    // the cluster does not trust it).
    generate_certs(other_ca.path(), &["node4"]);
    for file in ["node4.pem", "node4-key.pem"] {
        std::fs::copy(other_ca.path().join(file), certs.path().join(file)).unwrap();
    }
    let tuning = Tuning { tls_dir: Some(certs.path().to_owned()), ..Tuning::default() };
    let mut cluster = TestCluster::start_with(3, tuning);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let client = cluster.client();
    assert_eq!(client.register("h:1", &runner_json("h", 1), true).await.unwrap(), 1);

    // A plaintext client is refused, and told why.
    let plaintext = Client::with_deadline(cluster.endpoints(), Duration::from_secs(3)).unwrap();
    let error = plaintext.get_runners().await.unwrap_err();
    assert!(matches!(&error, Error::Unauthenticated(message) if message.contains("TLS")), "{error}");

    // A TLS connection without a peer certificate may call the client API
    // but not send Raft traffic.
    let ca = Certificate::from_pem(std::fs::read(certs.path().join("ca.pem")).unwrap());
    let anonymous_tls = Dialer::new(Some(ClientTlsConfig::new().ca_certificate(ca.clone())), None).unwrap();
    let mut raft = RaftClient::new(anonymous_tls.channel(&cluster.address(1)).unwrap());
    let status = raft.vote(RaftPayload { data: vec![] }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    // A node with the other CA's certificate cannot send Raft traffic...
    let read = |name: &str| std::fs::read(other_ca.path().join(name)).unwrap();
    let rogue_identity = Identity::from_pem(read("node4.pem"), read("node4-key.pem"));
    let rogue = Dialer::new(Some(ClientTlsConfig::new().ca_certificate(ca).identity(rogue_identity)), None).unwrap();
    let mut raft = RaftClient::new(rogue.channel(&cluster.address(1)).unwrap());
    assert!(raft.vote(RaftPayload { data: vec![] }).await.is_err(), "a foreign certificate was accepted");

    // ...and cannot join: the leader cannot replicate to it, so it never
    // catches up and adding it fails; the cluster keeps serving.
    let rogue_id = cluster.spawn_joining_node();
    let other_ca_client = Client::with_options(
        vec![cluster.address(rogue_id)],
        ClientOptions {
            dialer: Dialer::new(Some(Dialer::client_tls(&other_ca.path().join("ca.pem")).unwrap()), None).unwrap(),
            ..Default::default()
        },
    )
    .unwrap();
    let rogue_address = cluster.address(rogue_id);
    crate::common::eventually("the rogue node serves", Duration::from_secs(20), || {
        let (client, address) = (&other_ca_client, rogue_address.clone());
        async move { client.status_of(&address).await.is_ok() }
    })
    .await;
    let added = client.add_learner(rogue_id, &cluster.address(rogue_id)).await;
    match added {
        Err(Error::FailedPrecondition(message)) => assert!(message.contains("cannot join"), "{message}"),
        other => panic!("a node with a foreign certificate joined: {other:?}"),
    }
    let rogue_status = other_ca_client.status_of(&cluster.address(rogue_id)).await.unwrap();
    assert_eq!(rogue_status.applied_index, 0, "the rogue node received log entries");
    cluster.kill(rogue_id);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let members = client.status_of(&cluster.address(leader)).await.unwrap().members;
    assert!(members.iter().all(|member| member.node_id != rogue_id), "{members:?}");
    assert_eq!(client.get_runners().await.unwrap().len(), 1);
}
