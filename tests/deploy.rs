//! deploy/ against the real node. The Kubernetes manifests (as kustomize
//! renders them), the entrypoint that renders each pod's config, the systemd
//! unit and the Dockerfile may name only ports, probes, paths, subcommands
//! and flags that the node really has: configs rendered by the real
//! entrypoint load with `NodeConfig::load`, and real nodes started from them
//! (on loopback ports and temp data dirs instead of pod addresses and volumes)
//! answer the probes. What cannot run here (an image build, a Kubernetes API,
//! systemd) is checked as far as files allow; deploy/README.md says how far.
//!
//! yaml-rust2 reads YAML 1.2 and Kubernetes YAML 1.1: the manifests quote
//! every scalar the two read differently (`"true"`, `"3"`, octal modes).

// Test code: a failed unwrap is a failed test (tests/common unwraps).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use runner_storage::config::NodeConfig;
use runner_storage::limits::{SHUTDOWN_DRAIN_MAX, SHUTDOWN_HANDOVER_MAX, SHUTDOWN_RAFT_MAX};
use serde_json::Value;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use common::{binary, free_port};

/// The namespace the rendered configs are for (any name would do).
const NAMESPACE: &str = "deploy-test";
/// The token every test node requires.
const TOKEN: &str = "deploy-test-token";
/// Longest wait for nodes to elect a leader and report it.
const SERVING_TIMEOUT: Duration = Duration::from_secs(30);

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or_else(|| panic!("no string at {pointer} in {value}"))
}

// --- Kubernetes: YAML, kustomize -------------------------------------------------

fn to_json(yaml: &yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match yaml {
        Yaml::Real(text) => Value::from(text.parse::<f64>().expect("a YAML float")),
        Yaml::Integer(number) => Value::from(*number),
        Yaml::String(text) => Value::from(text.as_str()),
        Yaml::Boolean(flag) => Value::from(*flag),
        Yaml::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Yaml::Hash(map) => Value::Object(
            map.iter().map(|(key, value)| (key.as_str().expect("string keys").to_owned(), to_json(value))).collect(),
        ),
        Yaml::Null => Value::Null,
        Yaml::Alias(_) | Yaml::BadValue => panic!("unsupported YAML node {yaml:?}"),
    }
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let docs = yaml_rust2::YamlLoader::load_from_str(&read(path))
        .unwrap_or_else(|error| panic!("{} is not YAML: {error}", path.display()));
    docs.iter().map(to_json).collect()
}

/// What `kubectl apply -k dir` applies, for the kustomization fields deploy/
/// uses (resources, JSON 6902 patches with a kind and name target); any other
/// field fails here rather than be ignored. Every file read goes into `used`.
fn kustomize(dir: &Path, used: &mut BTreeSet<PathBuf>) -> Vec<Value> {
    let path = dir.join("kustomization.yaml");
    used.insert(path.canonicalize().expect("a kustomization"));
    let kustomization = yaml_docs(&path).remove(0);
    let fields = kustomization.as_object().expect("a kustomization is a mapping");
    for field in fields.keys() {
        assert!(["apiVersion", "kind", "resources", "patches"].contains(&field.as_str()), "{field} is not emulated");
    }
    let mut objects = Vec::new();
    for resource in fields["resources"].as_array().expect("resources") {
        let path = dir.join(resource.as_str().expect("a resource path"));
        if path.is_dir() {
            objects.extend(kustomize(&path, used));
        } else {
            objects.extend(yaml_docs(&path));
            used.insert(path.canonicalize().expect("a resource"));
        }
    }
    for patch in fields.get("patches").and_then(Value::as_array).into_iter().flatten() {
        let (kind, name) = (str_at(patch, "/target/kind"), str_at(patch, "/target/name"));
        let path = dir.join(str_at(patch, "/path"));
        let operations = yaml_docs(&path).remove(0);
        used.insert(path.canonicalize().expect("a patch"));
        let mut targets = objects.iter_mut().filter(|o| o["kind"] == kind && o["metadata"]["name"] == name);
        let target = targets.next().unwrap_or_else(|| panic!("no {kind} {name} to patch"));
        apply_json_patch(target, &operations);
    }
    objects
}

/// RFC 6902 `add` and `replace`, the operations the patches use.
fn apply_json_patch(object: &mut Value, operations: &Value) {
    for operation in operations.as_array().expect("a JSON patch is a list") {
        let path = str_at(operation, "/path");
        let (parent, member) = path.rsplit_once('/').expect("a JSON pointer");
        let value = operation["value"].clone();
        let parent = object.pointer_mut(parent).unwrap_or_else(|| panic!("{path}: no parent"));
        match (str_at(operation, "/op"), parent) {
            ("add", Value::Array(items)) if member == "-" => items.push(value),
            ("add", Value::Object(map)) => drop(map.insert(member.to_owned(), value)),
            ("replace", Value::Object(map)) if map.contains_key(member) => drop(map.insert(member.to_owned(), value)),
            _ => panic!("patch operation {operation} does not apply"),
        }
    }
}

/// The objects of one variant of deploy/kubernetes: "base" or "tls".
struct Manifests {
    objects: Vec<Value>,
}

impl Manifests {
    fn load(variant: &str) -> Manifests {
        Manifests { objects: kustomize(&repo(&format!("deploy/kubernetes/{variant}")), &mut BTreeSet::new()) }
    }

    fn one(&self, kind: &str) -> &Value {
        let found: Vec<&Value> = self.objects.iter().filter(|o| o["kind"] == kind).collect();
        assert_eq!(found.len(), 1, "one {kind} expected");
        found[0]
    }

    fn statefulset(&self) -> &Value {
        self.one("StatefulSet")
    }

    fn pod(&self) -> &Value {
        &self.statefulset()["spec"]["template"]["spec"]
    }

    fn container(&self) -> &Value {
        let containers = self.pod()["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1, "one container expected");
        &containers[0]
    }

    fn container_port(&self, name: &str) -> u16 {
        let ports = self.container()["ports"].as_array().expect("container ports");
        let port = ports.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("no container port {name}"));
        port["containerPort"].as_u64().expect("a port number") as u16
    }

    fn replicas(&self) -> u32 {
        self.statefulset()["spec"]["replicas"].as_u64().expect("replicas") as u32
    }

    /// The literal value of the container's environment variable `name`.
    fn env(&self, name: &str) -> &str {
        let env = self.container()["env"].as_array().expect("env");
        let entry = env.iter().find(|e| e["name"] == name).unwrap_or_else(|| panic!("no env {name}"));
        str_at(entry, "/value")
    }

    /// The volume mounted at the mount path that is the longest prefix of `path`.
    fn volume_holding(&self, path: &Path) -> (&Value, &Path) {
        let mounts = self.container()["volumeMounts"].as_array().expect("volumeMounts");
        let mount = mounts
            .iter()
            .filter(|m| path.starts_with(str_at(m, "/mountPath")))
            .max_by_key(|m| str_at(m, "/mountPath").len())
            .unwrap_or_else(|| panic!("{} is on no volume of the pod", path.display()));
        let name = &mount["name"];
        let claims = self.statefulset()["spec"]["volumeClaimTemplates"].as_array().into_iter().flatten();
        let volumes = self.pod()["volumes"].as_array().into_iter().flatten();
        let volume = volumes.chain(claims.map(|c| &c["metadata"])).find(|v| &v["name"] == name).expect("the volume");
        (volume, Path::new(str_at(mount, "/mountPath")))
    }

    /// `(secret name, key)` of the Secret item a pod reads at `path`.
    fn secret_item(&self, path: &Path) -> (String, String) {
        let (volume, mount_path) = self.volume_holding(path);
        let secret = volume.get("secret").unwrap_or_else(|| panic!("{} is not from a Secret", path.display()));
        let relative = path.strip_prefix(mount_path).expect("under the mount").to_str().expect("UTF-8");
        let items = secret["items"].as_array().expect("the Secret's keys listed as items");
        let item = items.iter().find(|i| i["path"] == relative).unwrap_or_else(|| panic!("no item {relative}"));
        (str_at(secret, "/secretName").to_owned(), str_at(item, "/key").to_owned())
    }

    /// The pod's environment: literal values and the downward API's name
    /// and namespace of pod `ordinal`.
    fn pod_env(&self, ordinal: u32) -> Vec<(String, String)> {
        let pod_name = format!("{}-{ordinal}", str_at(self.statefulset(), "/metadata/name"));
        let env = self.container()["env"].as_array().expect("env");
        env.iter()
            .map(|entry| {
                let value = match (entry.get("value"), entry.pointer("/valueFrom/fieldRef/fieldPath")) {
                    (Some(value), None) => value.as_str().expect("env values are strings").to_owned(),
                    (None, Some(field)) if field == "metadata.name" => pod_name.clone(),
                    (None, Some(field)) if field == "metadata.namespace" => NAMESPACE.to_owned(),
                    _ => panic!("env entry {entry} is not emulated"),
                };
                (str_at(entry, "/name").to_owned(), value)
            })
            .collect()
    }

    /// The probes by kind: `(startup, readiness, liveness)`.
    fn probes(&self) -> [&Value; 3] {
        let container = self.container();
        ["startupProbe", "readinessProbe", "livenessProbe"]
            .map(|probe| container.get(probe).unwrap_or_else(|| panic!("no {probe}")))
    }
}

// --- the entrypoint, configs, nodes --------------------------------------------

/// A config the real entrypoint rendered for one pod.
struct Rendered {
    path: PathBuf,
    text: String,
    config: NodeConfig,
}

/// `sh deploy/entrypoint.sh ARGS` with the pod's environment (and nothing of
/// the test's but PATH); the pod paths of the template and of the rendered
/// config replaced by files under `dir`.
fn entrypoint(manifests: &Manifests, ordinal: u32, dir: &Path, args: &[&str]) -> Command {
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

fn render(manifests: &Manifests, ordinal: u32, dir: &Path) -> Rendered {
    let output = entrypoint(manifests, ordinal, dir, &["render"]).output().expect("run the entrypoint");
    assert!(output.status.success(), "render failed: {}", String::from_utf8_lossy(&output.stderr));
    let path = PathBuf::from(String::from_utf8(output.stdout).expect("UTF-8").trim());
    let config = NodeConfig::load(&path).unwrap_or_else(|error| panic!("pod {ordinal}: {error:#}"));
    Rendered { text: read(&path), path, config }
}

/// `text` with each quoted value starting with a `from` of `replacements`
/// starting with its `to` instead.
fn localize(text: &str, replacements: &[(String, String)]) -> String {
    replacements.iter().fold(text.to_owned(), |text, (from, to)| {
        let quoted = format!("\"{from}");
        assert!(text.contains(&quoted), "{from} is not in\n{text}");
        text.replace(&quoted, &format!("\"{to}"))
    })
}

/// What moves a pod's `config` to loopback and files under `dir`: `peers`
/// maps each pod address to a loopback one. Returns the replacements for
/// [`localize`] and the node's own loopback address.
fn local_replacements(config: &NodeConfig, peers: &[(String, String)], dir: &Path) -> (Vec<(String, String)>, String) {
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
fn localize_node(rendered: &Rendered, peers: &[(String, String)], dir: &Path) -> (PathBuf, String) {
    let (replacements, own) = local_replacements(&rendered.config, peers, dir);
    let path = rendered.path.with_extension("local.toml");
    std::fs::write(&path, localize(&rendered.text, &replacements)).expect("write the local config");
    let local = NodeConfig::load(&path).unwrap_or_else(|error| panic!("{error:#}"));
    assert_eq!(local.listen.to_string(), own);
    (path, own)
}

/// Node processes, killed on drop; their logs in temp files.
#[derive(Default)]
struct Nodes {
    running: Vec<(Child, PathBuf)>,
}

impl Nodes {
    fn spawn(&mut self, mut command: Command, log: PathBuf) {
        let file = std::fs::File::create(&log).expect("create the node log");
        command.stdin(Stdio::null()).stdout(file.try_clone().expect("clone")).stderr(file);
        self.running.push((command.spawn().expect("start a node"), log));
    }

    fn serve(&mut self, config: &Path) {
        let mut command = Command::new(binary());
        command.arg("serve").arg("--config").arg(config);
        self.spawn(command, config.with_extension("log"));
    }

    fn logs(&self) -> String {
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
async fn holds_within<F: std::future::Future<Output = bool>>(
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
async fn health(address: &str, service: &str) -> Option<ServingStatus> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}")).ok()?;
    let channel = endpoint.connect_timeout(Duration::from_millis(500)).timeout(Duration::from_secs(2));
    let mut client = HealthClient::new(channel.connect().await.ok()?);
    let response = client.check(HealthCheckRequest { service: service.to_owned() }).await.ok()?;
    ServingStatus::try_from(response.into_inner().status).ok()
}

async fn assert_serving(nodes: &Nodes, address: &str, services: &BTreeSet<String>) {
    for service in services {
        let serving =
            holds_within(SERVING_TIMEOUT, || async { health(address, service).await == Some(ServingStatus::Serving) })
                .await;
        assert!(serving, "{address}: {service:?} not SERVING within {SERVING_TIMEOUT:?}\n{}", nodes.logs());
    }
}

/// `GET path` over HTTP/1.1: the status line and the body.
fn http_get(address: &str, path: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("set a timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
}

fn ctl(endpoints: &[String], args: &[&str]) {
    let output = Command::new(binary())
        .arg("ctl")
        .args(["--endpoints", &endpoints.join(","), "--token", TOKEN])
        .args(args)
        .output()
        .expect("run ctl");
    assert!(output.status.success(), "ctl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

// --- the tests: Kubernetes -----------------------------------------------------

#[test]
fn every_manifest_parses_and_is_applied() {
    let mut used = BTreeSet::new();
    for variant in ["base", "tls"] {
        kustomize(&repo(&format!("deploy/kubernetes/{variant}")), &mut used);
    }
    let mut found = BTreeSet::new();
    let mut dirs = vec![repo("deploy/kubernetes")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("list deploy/kubernetes") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                assert!(path.extension().is_some_and(|e| e == "yaml"), "{} is not .yaml", path.display());
                yaml_docs(&path);
                found.insert(path.canonicalize().expect("a file"));
            }
        }
    }
    assert_eq!(found, used, "files under deploy/kubernetes that no kustomization applies");
}

#[test]
fn statefulset_service_and_budget_fit_together() {
    for variant in ["base", "tls"] {
        let manifests = Manifests::load(variant);
        let (statefulset, service, budget) =
            (manifests.statefulset(), manifests.one("Service"), manifests.one("PodDisruptionBudget"));
        let labels = &statefulset["spec"]["template"]["metadata"]["labels"];
        let selects_pods = |selector: &Value| {
            selector.as_object().expect("a selector").iter().all(|(key, value)| &labels[key] == value)
        };
        assert_eq!(statefulset["spec"]["serviceName"], service["metadata"]["name"], "{variant}: pod DNS names");
        assert_eq!(service["spec"]["clusterIP"], "None", "{variant}: headless");
        assert_eq!(service["spec"]["publishNotReadyAddresses"], true, "{variant}: peers resolve before ready");
        assert!(selects_pods(&service["spec"]["selector"]), "{variant}: the Service selects the pods");
        assert!(selects_pods(&statefulset["spec"]["selector"]["matchLabels"]), "{variant}: StatefulSet selector");
        assert!(selects_pods(&budget["spec"]["selector"]["matchLabels"]), "{variant}: the budget selects the pods");
        assert_eq!(budget["spec"]["maxUnavailable"], 1, "{variant}");
        assert_eq!(manifests.replicas(), 3, "{variant}");
        assert_eq!(manifests.env("RUNNER_STORAGE_INITIAL_MEMBERS"), "3", "{variant}: replicas are the voters");
        // A lone first pod never gets ready: OrderedReady would wait forever.
        assert_eq!(statefulset["spec"]["podManagementPolicy"], "Parallel", "{variant}");
        let grace_s = manifests.pod()["terminationGracePeriodSeconds"].as_f64().expect("a grace period");
        assert!(
            grace_s > (SHUTDOWN_HANDOVER_MAX + SHUTDOWN_DRAIN_MAX + SHUTDOWN_RAFT_MAX).as_secs_f64(),
            "{variant}: grace {grace_s} s"
        );
        for port in service["spec"]["ports"].as_array().expect("ports") {
            let target = str_at(port, "/targetPort");
            assert_eq!(port["port"], manifests.container_port(target), "{variant}: Service port {target}");
        }
        let security = &manifests.pod()["securityContext"];
        assert_eq!(security["runAsNonRoot"], true, "{variant}");
        assert_ne!(security["runAsUser"], 0, "{variant}");
    }
}

#[test]
fn each_pods_rendered_config_loads_and_matches_the_manifests() {
    for variant in ["base", "tls"] {
        let manifests = Manifests::load(variant);
        let dir = tempfile::tempdir().expect("a temp dir");
        let (set, service) =
            (str_at(manifests.statefulset(), "/metadata/name"), manifests.env("RUNNER_STORAGE_SERVICE"));
        assert_eq!(service, str_at(manifests.one("Service"), "/metadata/name"), "{variant}: the headless Service");
        let grpc_port = manifests.container_port("grpc");
        let pod_address = |i: u32| format!("{set}-{i}.{service}.{NAMESPACE}.svc.cluster.local:{grpc_port}");
        // The initial members, and one more: a pod added by scaling up.
        for ordinal in 0..=manifests.replicas() {
            let Rendered { config, .. } = render(&manifests, ordinal, dir.path());
            assert_eq!(config.node_id, u64::from(ordinal) + 1, "{variant}: pod {ordinal}");
            let peers: Vec<(u64, String)> = config.peers.iter().map(|p| (p.id, p.address.clone())).collect();
            let expected: Vec<(u64, String)> = if ordinal < manifests.replicas() {
                (0..manifests.replicas()).map(|i| (u64::from(i) + 1, pod_address(i))).collect()
            } else {
                vec![]
            };
            assert_eq!(peers, expected, "{variant}: pod {ordinal}'s peers");
            assert_eq!(config.listen.port(), grpc_port, "{variant}: listen is the container's grpc port");
            let metrics = config.metrics_listen.expect("metrics_listen").port();
            assert_eq!(metrics, manifests.container_port("metrics"), "{variant}: metrics port");
            let annotations = &manifests.statefulset()["spec"]["template"]["metadata"]["annotations"];
            assert_eq!(annotations["prometheus.io/port"], metrics.to_string(), "{variant}: the scraped port");
            let (data, _) = manifests.volume_holding(&config.data_dir);
            let claims = manifests.statefulset()["spec"]["volumeClaimTemplates"].as_array().expect("a claim");
            assert!(claims.iter().any(|c| c["metadata"]["name"] == data["name"]), "{variant}: data on a claim");
            let token = manifests.secret_item(config.auth_token_file.as_deref().expect("auth_token_file"));
            assert!(!token.0.is_empty(), "{variant}: the token comes from a Secret");
            if variant == "tls" {
                let tls = config.tls.as_ref().expect("[tls] with RUNNER_STORAGE_TLS_DIR");
                let keys = [&tls.ca, &tls.cert, &tls.key].map(|path| manifests.secret_item(path));
                assert!(keys.iter().all(|(secret, _)| *secret == keys[0].0), "{variant}: one TLS Secret: {keys:?}");
                let keys = keys.map(|(_, key)| key);
                assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"], "{variant}: a kubernetes.io/tls Secret with ca.crt");
            } else {
                assert!(config.tls.is_none(), "the kubelet's gRPC probes need a plaintext port");
            }
        }
        let rendered = Path::new(manifests.env("RUNNER_STORAGE_CONFIG"));
        let (volume, _) = manifests.volume_holding(rendered);
        assert!(volume.get("emptyDir").is_some(), "{variant}: the rendered config is written to an emptyDir");
        let command = manifests.container()["command"].as_array().expect("a command");
        assert_eq!(command[0], image_path_of("deploy/entrypoint.sh"), "{variant}: the entrypoint of the image");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_from_rendered_configs_answer_the_probes_and_grow() {
    let manifests = Manifests::load("base");
    let dir = tempfile::tempdir().expect("a temp dir");
    let rendered: Vec<Rendered> = (0..manifests.replicas()).map(|o| render(&manifests, o, dir.path())).collect();
    let peers: Vec<(String, String)> =
        rendered[0].config.peers.iter().map(|p| (p.address.clone(), format!("127.0.0.1:{}", free_port()))).collect();
    let mut nodes = Nodes::default();
    let mut addresses = Vec::new();
    let mut metrics = Vec::new();
    for pod in &rendered {
        let (config, address) = localize_node(pod, &peers, dir.path());
        metrics.push(NodeConfig::load(&config).expect("loads").metrics_listen.expect("metrics").to_string());
        nodes.serve(&config);
        addresses.push(address);
    }
    let mut services = BTreeSet::new();
    for probe in manifests.probes() {
        assert_eq!(probe["grpc"]["port"], manifests.container_port("grpc"), "probe port: {probe}");
        services.insert(str_at(probe, "/grpc/service").to_owned());
    }
    for address in &addresses {
        assert_serving(&nodes, address, &services).await;
    }
    let path = str_at(&manifests.statefulset()["spec"]["template"]["metadata"], "/annotations/prometheus.io~1path");
    for address in &metrics {
        let (status, body) = http_get(address, path);
        assert!(status.contains(" 200 "), "{address}{path}: {status}");
        assert!(body.contains("runner_storage_"), "{address}{path} serves no runner_storage metrics");
    }

    // Scaling up: the next pod's entrypoint starts an empty node that
    // joins once added, as deploy/README.md says.
    let joining = manifests.replicas();
    let grow = dir.path().join("grow");
    std::fs::create_dir(&grow).expect("a dir");
    let (replacements, address) = local_replacements(&rendered[0].config, &[], &grow);
    let template = localize(&read(&dir.path().join("template.toml")), &replacements);
    // `entrypoint` renders from grow/template.toml, written first.
    std::fs::write(grow.join("template.toml"), template).expect("write the template");
    let args = manifests.container()["args"].as_array().into_iter().flatten().filter_map(Value::as_str);
    let args: Vec<&str> = args.collect();
    nodes.spawn(entrypoint(&manifests, joining, &grow, &args), grow.join("node.log"));
    let up = holds_within(SERVING_TIMEOUT, || async { health(&address, "").await.is_some() }).await;
    assert!(up, "the joining node does not answer\n{}", nodes.logs());
    assert_eq!(health(&address, "").await, Some(ServingStatus::NotServing), "a node not yet added has no leader");
    let id = (joining + 1).to_string();
    ctl(&addresses, &["members", "add", &id, &address]);
    let voters: Vec<String> = (1..=joining + 1).map(|id| id.to_string()).collect();
    ctl(&addresses, &["members", "set-voters", &voters.join(",")]);
    assert_serving(&nodes, &address, &services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_nodes_pass_the_exec_probe_that_replaces_the_grpc_probes() {
    let manifests = Manifests::load("tls");
    let dir = tempfile::tempdir().expect("a temp dir");
    let certs = dir.path().join("certs");
    let status = Command::new("bash").arg(repo("scripts/gen-certs.sh")).arg(&certs).arg("node").status();
    assert!(status.expect("run gen-certs.sh").success(), "gen-certs.sh failed");
    std::fs::create_dir(dir.path().join("tls")).expect("a dir");
    for (from, to) in [("ca.pem", "ca.crt"), ("node.pem", "tls.crt"), ("node-key.pem", "tls.key")] {
        std::fs::copy(certs.join(from), dir.path().join("tls").join(to)).expect("copy a certificate");
    }
    let rendered: Vec<Rendered> = (0..manifests.replicas()).map(|o| render(&manifests, o, dir.path())).collect();
    let peers: Vec<(String, String)> =
        rendered[0].config.peers.iter().map(|p| (p.address.clone(), format!("127.0.0.1:{}", free_port()))).collect();
    let locals: Vec<(PathBuf, String)> = rendered.iter().map(|pod| localize_node(pod, &peers, dir.path())).collect();
    let mut commands = BTreeSet::new();
    for probe in manifests.probes() {
        assert!(probe.get("grpc").is_none(), "the kubelet's gRPC probe cannot pass TLS: {probe}");
        let command: Vec<String> = serde_json::from_value(probe["exec"]["command"].clone()).expect("an exec probe");
        assert_eq!(command[0], image_path_of("deploy/entrypoint.sh"), "the probe runs the image's entrypoint");
        commands.insert(command[1..].to_vec());
    }
    let probe = |ordinal: usize, args: &[String]| {
        let mut command = entrypoint(&manifests, ordinal as u32, dir.path(), &[]);
        command.args(args).env("RUNNER_STORAGE_CONFIG", &locals[ordinal].0);
        command.stdout(Stdio::null()).stderr(Stdio::null()).status().expect("run the probe").success()
    };
    // The first node alone has no quorum, hence no leader: the probe fails.
    let mut nodes = Nodes::default();
    nodes.serve(&locals[0].0);
    let up = holds_within(SERVING_TIMEOUT, || async { std::net::TcpStream::connect(&locals[0].1).is_ok() }).await;
    assert!(up, "the first node does not listen\n{}", nodes.logs());
    for args in &commands {
        assert!(!probe(0, args), "the probe passes on a node that knows no leader");
    }
    for (config, _) in &locals[1..] {
        nodes.serve(config);
    }
    for (ordinal, (_, address)) in locals.iter().enumerate() {
        for args in &commands {
            let passes = holds_within(SERVING_TIMEOUT, || async { probe(ordinal, args) }).await;
            assert!(passes, "{address}: probe {args:?} fails\n{}", nodes.logs());
        }
        assert_eq!(health(address, "").await, None, "{address} answers plaintext: TLS is off");
    }
}

// --- the tests: systemd ---------------------------------------------------------

/// A unit file's `(section, key, value)` lines.
fn unit_lines(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut lines = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else {
            let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("not key=value: {line}"));
            lines.push((section.clone(), key.trim().to_owned(), value.trim().to_owned()));
        }
    }
    lines
}

/// `s`, `ms` and `min` spans, as systemd writes them here.
fn seconds(span: &str) -> f64 {
    let (number, unit) = span.split_at(span.find(|c: char| !c.is_ascii_digit()).unwrap_or(span.len()));
    let number: f64 = number.parse().unwrap_or_else(|_| panic!("a time span: {span}"));
    match unit {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "min" => number * 60.0,
        _ => panic!("unit of {span}"),
    }
}

/// Checks `runner-storage ARGS`: the subcommand and every flag exist.
fn assert_real_command(args: &[&str]) {
    let help = |args: &[&str]| {
        let output = Command::new(binary()).args(args).arg("--help").output().expect("run --help");
        assert!(output.status.success(), "runner-storage {args:?} --help failed");
        String::from_utf8(output.stdout).expect("UTF-8")
    };
    let subcommands = help(&[]);
    assert!(subcommands.lines().any(|l| l.trim_start().starts_with(&format!("{} ", args[0]))), "{args:?}");
    let flags = help(&args[..1]);
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(flags.contains(&format!("{flag} ")), "runner-storage {} has no {flag}", args[0]);
    }
}

#[test]
fn systemd_unit_runs_a_real_subcommand_and_outlasts_the_shutdown_bounds() {
    let lines = unit_lines(&read(&repo("deploy/systemd/runner-storage.service")));
    let service = |key: &str| -> Vec<&str> {
        lines.iter().filter(|(s, k, _)| s == "Service" && k == key).map(|(_, _, v)| v.as_str()).collect()
    };
    let one = |key: &str| *service(key).first().unwrap_or_else(|| panic!("no {key}"));
    let exec: Vec<&str> = one("ExecStart").split_whitespace().collect();
    assert_eq!(Path::new(exec[0]).file_name(), binary().file_name(), "ExecStart runs the node's binary");
    assert_real_command(&exec[1..]);
    let config_path = Path::new(exec[exec.iter().position(|a| *a == "--config").expect("--config") + 1]);
    let etc = Path::new("/etc").join(one("ConfigurationDirectory"));
    let state = Path::new("/var/lib").join(one("StateDirectory"));
    assert_eq!(config_path.parent(), Some(etc.as_path()), "the config is in ConfigurationDirectory");
    let example = repo("deploy/systemd").join(config_path.file_name().expect("a file name"));
    let config = NodeConfig::load(&example).unwrap_or_else(|error| panic!("{error:#}"));
    assert!(config.advertised_address().ends_with(&format!(":{}", config.listen.port())), "advertised != listen");
    // ProtectSystem=strict leaves only StateDirectory (and ReadWritePaths) writable.
    assert_eq!(one("ProtectSystem"), "strict");
    let writable = service("ReadWritePaths").into_iter().map(PathBuf::from).chain([state.clone()]);
    assert!(writable.into_iter().any(|p| config.data_dir.starts_with(p)), "data_dir is not writable");
    let mut files = vec![config.auth_token_file.clone().expect("auth_token_file")];
    files.extend(config.tls.iter().flat_map(|tls| [tls.ca.clone(), tls.cert.clone(), tls.key.clone()]));
    assert!(files.iter().all(|f| f.starts_with(&etc)), "secrets outside {}: {files:?}", etc.display());
    assert!(!["", "root", "0"].contains(&one("User")), "a dedicated user");
    assert!(["on-failure", "always"].contains(&one("Restart")));
    assert!(one("LimitNOFILE").parse::<u64>().expect("a number") >= 4096);
    assert!(service("KillSignal").iter().all(|s| *s == "SIGTERM"), "the node stops cleanly on SIGTERM");
    let stop_s = seconds(one("TimeoutStopSec"));
    assert!(
        stop_s > (SHUTDOWN_HANDOVER_MAX + SHUTDOWN_DRAIN_MAX + SHUTDOWN_RAFT_MAX).as_secs_f64(),
        "TimeoutStopSec {stop_s} s"
    );
}

// --- the tests: the Dockerfile ---------------------------------------------------

/// One build stage: its base image and its instructions `(KEYWORD, arguments)`.
struct Stage {
    from: String,
    instructions: Vec<(String, String)>,
}

/// deploy/Dockerfile's stages, with line continuations joined and the global
/// `ARG` defaults substituted in `FROM`.
fn dockerfile() -> Vec<Stage> {
    let text = read(&repo("deploy/Dockerfile")).replace("\\\n", " ");
    let mut args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (keyword, rest) = line.split_once(char::is_whitespace).expect("KEYWORD arguments");
        let (keyword, rest) = (keyword.to_ascii_uppercase(), rest.trim().to_owned());
        match (keyword.as_str(), stages.last_mut()) {
            ("ARG", None) => args.push(rest.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).expect("ARG=")),
            ("FROM", _) => {
                let from = args.iter().fold(rest, |from, (key, value)| from.replace(&format!("${{{key}}}"), value));
                stages.push(Stage { from, instructions: Vec::new() });
            }
            (_, Some(stage)) => stage.instructions.push((keyword, rest)),
            (_, None) => panic!("{keyword} before FROM"),
        }
    }
    stages
}

impl Stage {
    fn all<'a>(&'a self, keyword: &'a str) -> impl Iterator<Item = &'a str> {
        self.instructions.iter().filter(move |(k, _)| k == keyword).map(|(_, rest)| rest.as_str())
    }

    fn one<'a>(&'a self, keyword: &'a str) -> &'a str {
        let found: Vec<&str> = self.all(keyword).collect();
        assert_eq!(found.len(), 1, "one {keyword} expected in the stage FROM {}", self.from);
        found[0]
    }

    /// `(flags, sources, destination)` of each COPY.
    fn copies(&self) -> Vec<(Vec<String>, Vec<String>, String)> {
        self.all("COPY")
            .map(|rest| {
                let (flags, mut paths): (Vec<String>, Vec<String>) =
                    rest.split_whitespace().map(str::to_owned).partition(|word| word.starts_with("--"));
                let destination = paths.pop().expect("a destination");
                (flags, paths, destination)
            })
            .collect()
    }
}

/// Where the final stage of the Dockerfile puts the repository's `source`.
fn image_path_of(source: &str) -> String {
    let stages = dockerfile();
    let copies = stages.last().expect("a stage").copies();
    let copy = copies.into_iter().find(|(_, sources, _)| sources == &[source.to_owned()]);
    copy.unwrap_or_else(|| panic!("the image has no {source}")).2
}

fn exec_form(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_else(|_| panic!("not exec form: {text}"))
}

/// The newest Rust any locked package of this platform needs.
fn locked_rust_version_max() -> (u64, u64) {
    let rustc = Command::new("rustc").arg("-vV").output().expect("run rustc");
    let rustc = String::from_utf8(rustc.stdout).expect("UTF-8");
    let host = rustc.lines().find_map(|l| l.strip_prefix("host: ")).expect("rustc's host");
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--offline", "--locked", "--format-version", "1", "--filter-platform", host])
        .current_dir(repo(""))
        .output()
        .expect("run cargo metadata");
    assert!(output.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&output.stderr));
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("metadata JSON");
    let versions = metadata["packages"].as_array().expect("packages").iter().filter_map(|p| p["rust_version"].as_str());
    versions.map(major_minor).max().expect("some rust-version")
}

fn major_minor(version: &str) -> (u64, u64) {
    let mut parts = version.split('.').map(|part| part.parse::<u64>().expect("a version number"));
    (parts.next().expect("major"), parts.next().unwrap_or(0))
}

/// `(kind, name)` of each target of the crate in `dir` but tests and examples,
/// which the image does not build; each target's file must exist.
fn cargo_targets(dir: &Path) -> BTreeSet<(String, String)> {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--offline", "--no-deps", "--format-version", "1"])
        .current_dir(dir)
        .output()
        .expect("run cargo metadata");
    assert!(output.status.success(), "{} is no crate: {}", dir.display(), String::from_utf8_lossy(&output.stderr));
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("metadata JSON");
    let targets = metadata["packages"][0]["targets"].as_array().expect("targets").iter();
    let targets = targets.inspect(|t| assert!(Path::new(str_at(t, "/src_path")).exists(), "no file for {t}"));
    let targets = targets.map(|t| (t["kind"].to_string(), str_at(t, "/name").to_owned()));
    targets.filter(|(kind, _)| !kind.contains("test") && !kind.contains("example")).collect()
}

/// The build stage: the sources it copies are all that cargo needs, it runs
/// `cargo build --release`, and the path of that binary is returned.
fn check_build_stage(build: &Stage, alias: &str) -> String {
    let workdir = build.one("WORKDIR");
    let context = tempfile::tempdir().expect("a temp dir");
    for (flags, sources, destination) in build.copies() {
        assert!(flags.is_empty(), "build stage COPY {flags:?}");
        // COPY's rules: a directory's contents go to the destination; files
        // go into it when it ends in `/` (or is `.`), else they become it.
        let into = destination.ends_with('/') || destination == ".";
        let relative = destination.strip_prefix(workdir).unwrap_or(&destination).trim_start_matches('/');
        let target = context.path().join(relative);
        for source in sources {
            let from = repo(&source);
            assert!(from.exists(), "COPY {source}: no such file in the repository");
            let to = match (from.is_dir(), into) {
                (false, true) => target.join(from.file_name().expect("a file name")),
                _ => target.clone(),
            };
            std::fs::create_dir_all(if from.is_dir() { &to } else { to.parent().expect("a dir") }).expect("mkdir");
            let from = if from.is_dir() { from.join(".") } else { from };
            let copied = Command::new("cp").arg("-r").arg(&from).arg(&to).status().expect("run cp").success();
            assert!(copied, "cp {from:?} {to:?}");
        }
    }
    // cargo leaves out of its metadata a target whose file is missing.
    assert_eq!(cargo_targets(context.path()), cargo_targets(&repo("")), "the image build lacks a target's files");
    for proto in read(&repo("build.rs")).split('"').filter(|s| s.ends_with(".proto")) {
        assert!(context.path().join(proto).exists(), "the image build lacks {proto}, which build.rs compiles");
    }
    let build_command = build.all("RUN").find(|r| r.contains("cargo build")).expect("RUN cargo build");
    assert!(build_command.contains("--release"), "{build_command}");
    assert!(!build_command.contains("--target") && build.all("ENV").all(|e| !e.contains("CARGO_TARGET_DIR")));
    let bin = binary().file_name().and_then(|n| n.to_str()).expect("the binary's name").to_owned();
    assert!(build_command.split("--bin ").nth(1).is_none_or(|rest| rest.starts_with(&bin)), "{build_command}");
    format!("--from={alias} {workdir}/target/release/{bin}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerfile_builds_with_cargo_and_runs_the_binary_as_non_root() {
    let stages = dockerfile();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    let (build, runtime) = (&stages[0], &stages[1]);
    let (build_image, alias) = build.from.split_once(" AS ").expect("FROM image AS name");
    let (rust_version, build_release) =
        build_image.strip_prefix("rust:").and_then(|t| t.split_once('-')).expect("rust:V-RELEASE");
    let runtime_release = runtime.from.strip_prefix("debian:").and_then(|t| t.strip_suffix("-slim"));
    assert_eq!(runtime_release, Some(build_release), "a slim Debian of the build's release (one glibc)");
    assert!(major_minor(rust_version) >= locked_rust_version_max(), "rust {rust_version} cannot build the lock");
    let built = check_build_stage(build, alias);
    let copies = runtime.copies();
    for (flags, sources, destination) in &copies {
        let from = flags.iter().find(|f| f.starts_with("--from="));
        if let Some(from) = from {
            assert_eq!(format!("{from} {}", sources[0]), built, "COPY {from} copies what cargo built");
            assert_eq!(exec_form(runtime.one("ENTRYPOINT"))[0], *destination, "ENTRYPOINT runs the built binary");
        } else {
            assert!(sources.iter().all(|s| repo(s).exists()), "COPY {sources:?}: no such file in the repository");
        }
        let executable = destination.starts_with("/usr/local/bin/");
        assert!(!executable || from.is_some() || flags.contains(&"--chmod=0755".to_owned()), "{destination} +x");
    }
    let user = runtime.one("USER");
    let uid = user.split(':').next().expect("a uid");
    assert!(!["0", "root"].contains(&uid), "USER {user}");
    assert!(runtime.all("RUN").any(|r| r.contains(&format!("--uid {uid}"))), "the image creates uid {uid}");
    assert_eq!(Manifests::load("base").pod()["securityContext"]["runAsUser"], uid.parse::<u64>().expect("a uid"));
    let volume = runtime.one("VOLUME");
    assert!(runtime.all("RUN").any(|r| r.contains(volume) && r.contains(&format!("-o {uid}"))), "{volume} writable");

    // The default command serves the config the image holds, and it serves.
    let mut command = exec_form(runtime.one("ENTRYPOINT"));
    command.extend(exec_form(runtime.one("CMD")));
    let args: Vec<&str> = command[1..].iter().map(String::as_str).collect();
    assert_real_command(&args);
    let config_path = &command[command.iter().position(|a| a == "--config").expect("--config") + 1];
    let source = copies.iter().find(|(_, _, destination)| destination == config_path).expect("a config in the image");
    let dir = tempfile::tempdir().expect("a temp dir");
    let template = dir.path().join("node.toml");
    std::fs::copy(repo(&source.1[0]), &template).expect("copy the config");
    let config = NodeConfig::load(&template).unwrap_or_else(|error| panic!("{error:#}"));
    assert!(config.data_dir.starts_with(volume), "data_dir {} is not in the volume", config.data_dir.display());
    assert!(config.advertised_address().ends_with(&format!(":{}", config.listen.port())), "advertised != listen");
    let exposed: Vec<&str> = runtime.one("EXPOSE").split_whitespace().collect();
    for port in [Some(config.listen), config.metrics_listen].into_iter().flatten().map(|a| a.port().to_string()) {
        assert!(exposed.contains(&port.as_str()), "port {port} is not EXPOSEd");
    }
    let image_config = Rendered { path: template.clone(), text: read(&template), config };
    let peers = [(image_config.config.advertised_address(), format!("127.0.0.1:{}", free_port()))];
    let (local, address) = localize_node(&image_config, &peers, dir.path());
    let mut nodes = Nodes::default();
    nodes.serve(&local);
    assert_serving(&nodes, &address, &BTreeSet::from([String::new()])).await;
}
