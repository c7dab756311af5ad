//! The Kubernetes manifests as `kubectl apply -k` would apply them: YAML, kustomize.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::*;

pub(crate) fn to_json(yaml: &yaml_rust2::Yaml) -> Value {
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

pub(crate) fn yaml_docs(path: &Path) -> Vec<Value> {
    let docs = yaml_rust2::YamlLoader::load_from_str(&read(path))
        .unwrap_or_else(|error| panic!("{} is not YAML: {error}", path.display()));
    docs.iter().map(to_json).collect()
}

/// What `kubectl apply -k dir` applies, for the kustomization fields deploy/
/// uses (resources, JSON 6902 patches with a kind and name target); any other
/// field fails here rather than be ignored. Every file read goes into `used`.
pub(crate) fn kustomize(dir: &Path, used: &mut BTreeSet<PathBuf>) -> Vec<Value> {
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
pub(crate) fn apply_json_patch(object: &mut Value, operations: &Value) {
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
pub(crate) struct Manifests {
    pub(crate) objects: Vec<Value>,
}

impl Manifests {
    pub(crate) fn load(variant: &str) -> Manifests {
        Manifests { objects: kustomize(&repo(&format!("deploy/kubernetes/{variant}")), &mut BTreeSet::new()) }
    }

    pub(crate) fn one(&self, kind: &str) -> &Value {
        let found: Vec<&Value> = self.objects.iter().filter(|o| o["kind"] == kind).collect();
        assert_eq!(found.len(), 1, "one {kind} expected");
        found[0]
    }

    pub(crate) fn statefulset(&self) -> &Value {
        self.one("StatefulSet")
    }

    pub(crate) fn pod(&self) -> &Value {
        &self.statefulset()["spec"]["template"]["spec"]
    }

    pub(crate) fn container(&self) -> &Value {
        let containers = self.pod()["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1, "one container expected");
        &containers[0]
    }

    pub(crate) fn container_port(&self, name: &str) -> u16 {
        let ports = self.container()["ports"].as_array().expect("container ports");
        let port = ports.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("no container port {name}"));
        port["containerPort"].as_u64().expect("a port number") as u16
    }

    pub(crate) fn replicas(&self) -> u32 {
        self.statefulset()["spec"]["replicas"].as_u64().expect("replicas") as u32
    }

    /// The literal value of the container's environment variable `name`.
    pub(crate) fn env(&self, name: &str) -> &str {
        let env = self.container()["env"].as_array().expect("env");
        let entry = env.iter().find(|e| e["name"] == name).unwrap_or_else(|| panic!("no env {name}"));
        str_at(entry, "/value")
    }

    /// The volume mounted at the mount path that is the longest prefix of `path`.
    pub(crate) fn volume_holding(&self, path: &Path) -> (&Value, &Path) {
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
    pub(crate) fn secret_item(&self, path: &Path) -> (String, String) {
        let (volume, mount_path) = self.volume_holding(path);
        let secret = volume.get("secret").unwrap_or_else(|| panic!("{} is not from a Secret", path.display()));
        let relative = path.strip_prefix(mount_path).expect("under the mount").to_str().expect("UTF-8");
        let items = secret["items"].as_array().expect("the Secret's keys listed as items");
        let item = items.iter().find(|i| i["path"] == relative).unwrap_or_else(|| panic!("no item {relative}"));
        (str_at(secret, "/secretName").to_owned(), str_at(item, "/key").to_owned())
    }

    /// The pod's environment: literal values and the downward API's name
    /// and namespace of pod `ordinal`.
    pub(crate) fn pod_env(&self, ordinal: u32) -> Vec<(String, String)> {
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
    pub(crate) fn probes(&self) -> [&Value; 3] {
        let container = self.container();
        ["startupProbe", "readinessProbe", "livenessProbe"]
            .map(|probe| container.get(probe).unwrap_or_else(|| panic!("no {probe}")))
    }
}
