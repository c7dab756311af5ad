//! Pods played on loopback: the real entrypoint renders each config, real nodes serve it.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use runner_storage::config::NodeConfig;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::common::{binary, free_port};
use crate::manifests::*;
use crate::*;

/// A config the real entrypoint rendered for one pod.
pub(crate) struct Rendered {
    pub(crate) path: PathBuf,
    pub(crate) text: String,
    pub(crate) config: NodeConfig,
}

/// `sh deploy/entrypoint.sh ARGS` with the pod's environment (and nothing of
/// the test's but PATH); the pod paths of the template and of the rendered
/// config replaced by files under `dir`.
pub(crate) fn entrypoint(manifests: &Manifests, ordinal: u32, dir: &Path, args: &[&str]) -> Command {
    let template = Path::new(manifests.env("RUNNER_STORAGE_CONFIG_TEMPLATE"));
    let (volume, _) = manifests.volume_holding(template);
    let config_map = manifests.one("ConfigMap");
    assert_eq!(volume["configMap"]["name"], config_map["metadata"]["name"], "the template comes from the ConfigMap");
    let key = template.file_name().and_then(|name| name.to_str()).expect("a file name");
    let local_template = dir.join("template.toml");
    if !local_template.exists() {
        std::fs::write(&local_template, str_at(config_map, &format!("/data/{key}"))).expect("write the template");
    }
    let mut command = Command::new("sh");
    command.arg(repo("deploy/entrypoint.sh")).args(args).env_clear();
    command.env("PATH", std::env::var("PATH").unwrap_or_default()).envs(manifests.pod_env(ordinal));
    command
        .env("RUNNER_STORAGE_CONFIG_TEMPLATE", local_template)
        .env("RUNNER_STORAGE_CONFIG", dir.join(format!("pod{ordinal}.toml")))
        .env("RUNNER_STORAGE_BIN", binary());
    command
}

pub(crate) fn render(manifests: &Manifests, ordinal: u32, dir: &Path) -> Rendered {
    let output = entrypoint(manifests, ordinal, dir, &["render"]).output().expect("run the entrypoint");
    assert!(output.status.success(), "render failed: {}", String::from_utf8_lossy(&output.stderr));
    let path = PathBuf::from(String::from_utf8(output.stdout).expect("UTF-8").trim());
    let config = NodeConfig::load(&path).unwrap_or_else(|error| panic!("pod {ordinal}: {error:#}"));
    Rendered { text: read(&path), path, config }
}

/// `text` with each quoted value starting with a `from` of `replacements`
/// starting with its `to` instead.
pub(crate) fn localize(text: &str, replacements: &[(String, String)]) -> String {
    replacements.iter().fold(text.to_owned(), |text, (from, to)| {
        let quoted = format!("\"{from}");
        assert!(text.contains(&quoted), "{from} is not in\n{text}");
        text.replace(&quoted, &format!("\"{to}"))
    })
}

/// What moves a pod's `config` to loopback and files under `dir`: `peers`
/// maps each pod address to a loopback one. Returns the replacements for
/// [`localize`] and the node's own loopback address.
pub(crate) fn local_replacements(
    config: &NodeConfig,
    peers: &[(String, String)],
    dir: &Path,
) -> (Vec<(String, String)>, String) {
    let own = peers.iter().find(|(pod, _)| *pod == config.advertised_address()).map(|(_, local)| local.clone());
    let own = own.unwrap_or_else(|| format!("127.0.0.1:{}", free_port()));
    let mut replacements = peers.to_vec();
    replacements.push((config.listen.to_string(), own.clone()));
    if let Some(metrics) = config.metrics_listen {
        replacements.push((metrics.to_string(), format!("127.0.0.1:{}", free_port())));
    }
    let data_dir = dir.join(format!("data{}", config.node_id));
    replacements.push((config.data_dir.display().to_string(), data_dir.display().to_string()));
    if let Some(token_file) = &config.auth_token_file {
        std::fs::write(dir.join("token"), format!("{TOKEN}\n")).expect("write the token");
        replacements.push((token_file.display().to_string(), dir.join("token").display().to_string()));
    }
    if let Some(tls) = &config.tls {
        let tls_dir = tls.ca.parent().expect("a TLS dir").display().to_string();
        replacements.push((tls_dir, dir.join("tls").display().to_string()));
    }
    (replacements, own)
}

/// `rendered` moved to loopback and `dir` (see [`local_replacements`]):
/// the local config's path and its gRPC address.
pub(crate) fn localize_node(rendered: &Rendered, peers: &[(String, String)], dir: &Path) -> (PathBuf, String) {
    let (replacements, own) = local_replacements(&rendered.config, peers, dir);
    let path = rendered.path.with_extension("local.toml");
    std::fs::write(&path, localize(&rendered.text, &replacements)).expect("write the local config");
    let local = NodeConfig::load(&path).unwrap_or_else(|error| panic!("{error:#}"));
    assert_eq!(local.listen.to_string(), own);
    (path, own)
}

/// Node processes, killed on drop; their logs in temp files.
#[derive(Default)]
pub(crate) struct Nodes {
    pub(crate) running: Vec<(Child, PathBuf)>,
}

impl Nodes {
    pub(crate) fn spawn(&mut self, mut command: Command, log: PathBuf) {
        let file = std::fs::File::create(&log).expect("create the node log");
        command.stdin(Stdio::null()).stdout(file.try_clone().expect("clone")).stderr(file);
        self.running.push((command.spawn().expect("start a node"), log));
    }

    pub(crate) fn serve(&mut self, config: &Path) {
        let mut command = Command::new(binary());
        command.arg("serve").arg("--config").arg(config);
        self.spawn(command, config.with_extension("log"));
    }

    pub(crate) fn logs(&self) -> String {
        self.running.iter().map(|(_, log)| format!("--- {}\n{}", log.display(), read(log))).collect()
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for (child, _) in &mut self.running {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `condition` every 100 ms until it holds or `timeout` passes.
pub(crate) async fn holds_within<F: std::future::Future<Output = bool>>(
    timeout: Duration,
    mut condition: impl FnMut() -> F,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// What the kubelet's gRPC probe asks: `Health/Check` over plaintext.
pub(crate) async fn health(address: &str, service: &str) -> Option<ServingStatus> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}")).ok()?;
    let channel = endpoint.connect_timeout(Duration::from_millis(500)).timeout(Duration::from_secs(2));
    let mut client = HealthClient::new(channel.connect().await.ok()?);
    let response = client.check(HealthCheckRequest { service: service.to_owned() }).await.ok()?;
    ServingStatus::try_from(response.into_inner().status).ok()
}

pub(crate) async fn assert_serving(nodes: &Nodes, address: &str, services: &BTreeSet<String>) {
    for service in services {
        let serving =
            holds_within(SERVING_TIMEOUT, || async { health(address, service).await == Some(ServingStatus::Serving) })
                .await;
        assert!(serving, "{address}: {service:?} not SERVING within {SERVING_TIMEOUT:?}\n{}", nodes.logs());
    }
}

/// `GET path` over HTTP/1.1: the status line and the body.
pub(crate) fn http_get(address: &str, path: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("set a timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
}

pub(crate) fn ctl(endpoints: &[String], args: &[&str]) {
    let output = Command::new(binary())
        .arg("ctl")
        .args(["--endpoints", &endpoints.join(","), "--token", TOKEN])
        .args(args)
        .output()
        .expect("run ctl");
    assert!(output.status.success(), "ctl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}
