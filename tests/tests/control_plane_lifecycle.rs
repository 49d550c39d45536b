//! Nothing of a control plane outlives its owner: dropping it stops its processes and removes its directory,
//! and so does killing the test process outright (SIGKILL: no unwinding, no `Drop`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mcp_authz_tests::control_plane::{ControlPlane, ControlPlaneError, ControlPlaneOptions};

/// Whether `pid` is a live process running `program` (a zombie or a reused pid does not count).
fn runs(pid: u32, program: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let zombie = stat
        .rsplit(')')
        .next()
        .is_some_and(|rest| rest.trim_start().starts_with('Z'));
    let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    !zombie && String::from_utf8_lossy(&command).contains(program)
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn dropping_a_control_plane_stops_its_processes_and_removes_its_directory() {
    let options = ControlPlaneOptions {
        controller_manager: false,
        ..ControlPlaneOptions::default()
    };
    let cluster = ControlPlane::start_with(options).unwrap();
    let pids = cluster.pids();
    let dir = cluster.dir().to_path_buf();
    assert_eq!(pids.len(), 2, "etcd and kube-apiserver only");
    assert!(runs(pids[0], "etcd") && runs(pids[1], "kube-apiserver"));
    assert!(dir.join("etcd").is_dir());

    drop(cluster);
    assert!(!runs(pids[0], "etcd"), "etcd survived drop");
    assert!(
        !runs(pids[1], "kube-apiserver"),
        "kube-apiserver survived drop"
    );
    assert!(!dir.exists(), "{} survived drop", dir.display());
}

#[test]
fn killing_the_owner_leaves_no_process_or_directory_behind() {
    let mut owner = Command::new(env!("CARGO_BIN_EXE_mcp-authz-control-plane"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(owner.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let description: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|error| panic!("{error}: the owner printed {line:?}"));
    let pids: Vec<u32> = serde_json::from_value(description["pids"].clone()).unwrap();
    let dir = PathBuf::from(description["dir"].as_str().unwrap());
    let programs = ["etcd", "kube-apiserver", "kube-controller-manager"];
    assert_eq!(pids.len(), programs.len());
    for (pid, program) in pids.iter().zip(programs) {
        assert!(runs(*pid, program), "{program} ({pid}) is not running");
    }

    // SIGKILL: the owner's Drop never runs, only the kernel closing its end of the watchdog's pipe.
    owner.kill().unwrap();
    owner.wait().unwrap();
    for (pid, program) in pids.iter().zip(programs) {
        wait_until(
            &format!("{program} ({pid}) to stop"),
            Duration::from_secs(30),
            || !runs(*pid, program),
        );
    }
    wait_until(
        &format!("{} to be removed", dir.display()),
        Duration::from_secs(30),
        || !dir.exists(),
    );
}

#[test]
fn a_control_plane_that_is_not_ready_in_time_is_reported_and_cleaned_up() {
    let options = ControlPlaneOptions {
        controller_manager: false,
        startup_timeout: Duration::ZERO,
        ..ControlPlaneOptions::default()
    };
    let error = ControlPlane::start_with(options).unwrap_err();
    assert_eq!(error.metric_label(), "not_ready");
    let ControlPlaneError::NotReady { what, log, .. } = &error else {
        panic!("{error}")
    };
    assert_eq!(*what, "kube-apiserver /readyz");
    assert!(
        error
            .to_string()
            .starts_with("kube-apiserver /readyz was not ready after "),
        "{error}"
    );
    // The failed start stopped its processes and removed its directory with the log in it.
    let dir = log.parent().and_then(|logs| logs.parent()).unwrap();
    wait_until(
        "the failed start's directory to be removed",
        Duration::from_secs(10),
        || !dir.exists(),
    );
}

#[test]
fn a_refused_api_server_flag_is_reported_with_the_log() {
    let options = ControlPlaneOptions {
        controller_manager: false,
        extra_apiserver_args: vec!["--no-such-flag=1".into()],
        ..ControlPlaneOptions::default()
    };
    let error = ControlPlane::start_with(options).unwrap_err();
    let ControlPlaneError::ProcessExited {
        name,
        status,
        log_tail,
        ..
    } = &error
    else {
        panic!("{error}")
    };
    assert_eq!(*name, "kube-apiserver");
    assert_eq!(status, "exit status: 1");
    assert!(
        log_tail.contains("unknown flag: --no-such-flag"),
        "{log_tail}"
    );
    assert!(!error.is_port_conflict());
}
