//! The manifests fit together, and nodes started from their rendered configs answer their probes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use runner_storage::config::NodeConfig;
use runner_storage::limits::{SHUTDOWN_DRAIN_MAX, SHUTDOWN_HANDOVER_MAX, SHUTDOWN_RAFT_MAX};
use serde_json::Value;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::common::free_port;
use crate::docker::image_path_of;
use crate::manifests::*;
use crate::pods::*;
use crate::*;

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
