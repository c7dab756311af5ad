//! What operators and orchestrators poll: gRPC health (`grpc.health.v1`),
//! gRPC server reflection, and the Prometheus `/metrics` HTTP endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use openraft::ServerState;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::node::Node;

/// Whether `node` can reach a leader now: it knows one, and if it is the
/// leader, a quorum acknowledged it recently.
pub fn can_reach_leader(node: &Node) -> bool {
    let metrics = node.raft().metrics().borrow().clone();
    match (metrics.state, metrics.current_leader) {
        (_, None) => false,
        (ServerState::Leader, Some(_)) => node.has_quorum(),
        (_, Some(_)) => true,
    }
}

/// Keeps the health of the whole server ("") and of the client service in
/// step with [`can_reach_leader`] until the process exits.
pub async fn report_health(node: Arc<Node>, reporter: HealthReporter) {
    const SERVICES: [&str; 2] = ["", "runner_storage.v1.RunnerStorage"];
    let mut last = None;
    loop {
        let status = if can_reach_leader(&node) { ServingStatus::Serving } else { ServingStatus::NotServing };
        if last != Some(status) {
            for service in SERVICES {
                reporter.set_service_status(service, status).await;
            }
            tracing::info!(?status, "health changed");
            last = Some(status);
        }
        tokio::time::sleep(crate::limits::HEALTH_POLL_INTERVAL).await;
    }
}

/// Serves `GET /metrics` (Prometheus text format) on `address` until `shutdown`.
///
/// # Errors
/// When the address cannot be bound.
pub async fn serve_metrics(
    node: Arc<Node>,
    address: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen for metrics on {address} (in use?)"))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let node = node.clone();
            async move {
                let body = node.render_metrics();
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(%error, "metrics server failed");
        }
    });
    Ok(())
}
