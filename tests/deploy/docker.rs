//! The Dockerfile builds with cargo and runs the binary as non-root.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use runner_storage::config::NodeConfig;
use serde_json::Value;

use crate::common::{binary, free_port};
use crate::manifests::*;
use crate::pods::*;
use crate::systemd::assert_real_command;
use crate::*;

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
pub(crate) fn image_path_of(source: &str) -> String {
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
