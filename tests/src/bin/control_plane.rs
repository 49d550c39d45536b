//! Starts one test control plane, prints where it is as one JSON line, and runs until stdin closes (or Ctrl-C).
//! For poking at the control plane by hand (`KUBECONFIG=<kubeconfig> kubectl get ns`), and for the test that
//! proves nothing outlives a killed test process. Needs the variables of tests/setup/10-control-plane.sh.
//!
//! Usage: mcp-authz-control-plane [--no-controller-manager] [--controller=NAME]... [--apiserver-arg=FLAG]...
//! `--controller` adds a kube-controller-manager controller to the default set; `--apiserver-arg` adds a
//! kube-apiserver flag (later flags win), e.g. `--apiserver-arg=--bind-address=0.0.0.0` so that pods on a test
//! node (tests/node/run-node.sh) reach the API server.
#![forbid(unsafe_code)]

use std::io::Read;

use anyhow::Context;
use mcp_authz_tests::control_plane::{ControlPlane, ControlPlaneOptions};

fn main() -> anyhow::Result<()> {
    let mut options = ControlPlaneOptions::default();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--no-controller-manager" => options.controller_manager = false,
            other => {
                if let Some(flag) = other.strip_prefix("--apiserver-arg=") {
                    options.extra_apiserver_args.push(flag.to_owned());
                } else if let Some(controller) = other.strip_prefix("--controller=") {
                    options.controllers.push(controller.to_owned());
                } else {
                    anyhow::bail!(
                        "unknown argument {other:?}; usage: mcp-authz-control-plane \
                         [--no-controller-manager] [--controller=NAME]... [--apiserver-arg=FLAG]..."
                    );
                }
            }
        }
    }
    let control_plane = ControlPlane::start_with(options).context("starting the control plane")?;
    let description = serde_json::json!({
        "server": control_plane.server_url(),
        "kubeconfig": control_plane.kubeconfig_path(),
        "dir": control_plane.dir(),
        "pids": control_plane.pids(),
        "startup_ms": control_plane.startup_time().as_millis(),
    });
    println!("{description}");
    // Until whoever started us closes our stdin (or dies, which closes it too).
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(control_plane);
    Ok(())
}
