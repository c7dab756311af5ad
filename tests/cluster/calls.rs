//! The eight calls against 1- and 3-node clusters, through the Rust client.

use std::time::Duration;

use runner_storage::pb::v1 as pb;
use runner_storage::pb::v1::runner_storage_client::RunnerStorageClient;
use runner_storage::Encoded;
use tonic::transport::Channel;

use crate::common::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_cluster_serves_calls_through_any_node() {
    let cluster = TestCluster::start(3);
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
    let runner = r#"{"address":{"host":"h","port":1},"groups":["default"],"weight":1}"#;
    for id in 1..=3 {
        // A client that only knows one node: followers forward to the leader.
        let client = runner_storage::client::Client::new(vec![cluster.address(id)]).unwrap();
        assert_eq!(client.register("h:1", runner, true).await.unwrap(), 1, "via node {id} (leader {leader})");
        assert_eq!(client.get_runners().await.unwrap(), vec![(runner.to_owned(), true)]);
        let acquired = client.acquire("h:1", &["default:1".into(), "default:2".into()]).await.unwrap();
        assert_eq!(acquired, vec!["default:1", "default:2"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_answer_names_the_leader() {
    let cluster = TestCluster::start(3);
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let uri = format!("http://{}", cluster.address(follower));
    let channel = Channel::from_shared(uri).expect("an endpoint URI").connect().await.expect("connect");
    let answer = RunnerStorageClient::new(channel).get_runners(pb::GetRunnersRequest::default()).await.unwrap();
    let named = answer.metadata().get("x-runner-storage-leader").map(|value| value.to_str().unwrap().to_owned());
    assert_eq!(named, Some(cluster.address(leader)), "follower {follower} forwarded to leader {leader}");
    let direct = runner_storage::client::Client::new(vec![cluster.address(leader)]).unwrap();
    let status = direct.status_of(&cluster.address(leader)).await.unwrap();
    assert_eq!(status.node_id, leader);
}
