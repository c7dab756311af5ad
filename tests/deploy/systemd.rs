//! The systemd unit runs a real subcommand and outlasts the shutdown bounds.

use std::path::{Path, PathBuf};
use std::process::Command;

use runner_storage::config::NodeConfig;
use runner_storage::limits::{SHUTDOWN_DRAIN_MAX, SHUTDOWN_HANDOVER_MAX, SHUTDOWN_RAFT_MAX};

use crate::common::binary;
use crate::*;

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
pub(crate) fn assert_real_command(args: &[&str]) {
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
