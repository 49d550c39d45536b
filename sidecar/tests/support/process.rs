//! The real `mcp-authz-sidecar` binary, for what only the process shows: its stdout (the audit stream), its
//! stderr (the JSON logs), its `OTEL_*` environment and how it stops.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{JwksServer, Upstream};

/// The sidecar binary, killed on drop.
pub struct SidecarProcess {
    pub child: Child,
    /// `http://` and the proxy's address.
    pub proxy: String,
    /// `http://` and the admin server's address.
    pub admin: String,
    _dir: tempfile::TempDir,
}

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SidecarProcess {
    /// Starts the binary in front of `upstream`, trusting `jwks`, with `args` and `env` added and JSON logs;
    /// reads its stderr up to its "listening" line and hands back its stdout (the audit stream) on a pipe. The
    /// rest of stderr is drained, each line checked to be JSON.
    pub fn start(
        upstream: &Upstream,
        jwks: &JwksServer,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (Self, BufReader<ChildStdout>) {
        Self::start_before(&upstream.url(), jwks, args, env)
    }

    /// [`SidecarProcess::start`] in front of the upstream at `upstream` (a URL).
    pub fn start_before(
        upstream: &str,
        jwks: &JwksServer,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (Self, BufReader<ChildStdout>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sidecar.json");
        let config = super::config(upstream, &jwks.url());
        std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_mcp-authz-sidecar"))
            .arg("--config")
            .arg(&path)
            .args(args)
            .env("RUST_LOG", "info")
            .env("MCP_AUTHZ_LOG_FORMAT", "json")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Owned by the guard at once, so that a failed start below still kills it.
        let mut sidecar = SidecarProcess {
            child,
            proxy: String::new(),
            admin: String::new(),
            _dir: dir,
        };
        let stdout = BufReader::new(sidecar.child.stdout.take().unwrap());
        let mut stderr = BufReader::new(sidecar.child.stderr.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                stderr.read_line(&mut line).unwrap() > 0,
                "the sidecar exited before listening"
            );
            let event: Value = serde_json::from_str(&line).unwrap();
            if event["fields"]["message"] == "sidecar listening" {
                let addr = |name: &str| event["fields"][name].as_str().unwrap().to_owned();
                sidecar.proxy = format!("http://{}", addr("proxy_addr"));
                sidecar.admin = format!("http://{}", addr("admin_addr"));
                break;
            }
        }
        std::thread::spawn(move || {
            for line in stderr.lines() {
                let Ok(line) = line else { return };
                assert!(
                    serde_json::from_str::<Value>(&line).is_ok(),
                    "a log line that is not JSON: {line}"
                );
            }
        });
        (sidecar, stdout)
    }

    /// Sends SIGTERM, as the kubelet does first, and waits up to `grace` for the exit
    /// (`mcp_authz_otel::testing::terminate`).
    pub fn terminate(&mut self, grace: Duration) -> Option<Duration> {
        mcp_authz_otel::testing::terminate(&mut self.child, grace)
    }
}
