//! Loopback ports of local mode, chosen once and kept in the state directory.
//!
//! The issuer and every protected URL contain a port, and tokens carry them (`iss`, `aud`): they
//! must not change across restarts, or a restart would invalidate every grant. So the first run
//! picks free ports and later runs reuse them.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file in the state directory.
pub const PORTS_FILE: &str = "ports.json";

/// Ports of one sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SidecarPorts {
    /// Where MCP clients connect.
    pub port: u16,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub admin_port: u16,
}

/// Every port of a local plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortPlan {
    /// The authorization server's OAuth endpoints (part of the issuer).
    pub authserver: u16,
    /// The authorization server's admin port (metrics, admin API).
    pub authserver_admin: u16,
    /// Sidecars by MCPService key (`namespace/name`).
    pub services: BTreeMap<String, SidecarPorts>,
}

/// Why ports could not be kept or chosen.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The ports file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The ports file is not what this program wrote.
    #[error("{path}: not a ports file ({message}); delete it to choose new ports")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
}

impl PortError {
    /// A low-cardinality reason for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Io { .. } => "io",
            Self::Corrupt { .. } => "corrupt",
        }
    }
}

/// A port nothing listens on right now (the kernel's choice). Another program could take it
/// before we bind it; the bind then fails with a clear error and the next run picks again.
pub fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    Ok(listener.local_addr()?.port())
}

impl PortPlan {
    /// The plan kept in `state_dir`, extended with ports for services it does not know yet.
    /// Services no longer present keep their ports (a manifest may come back).
    pub fn load_or_choose(state_dir: &Path, services: &[String]) -> Result<Self, PortError> {
        let path = state_dir.join(PORTS_FILE);
        let io = |source| PortError::Io {
            path: path.clone(),
            source,
        };
        let existing = match std::fs::read(&path) {
            Ok(bytes) => Some(serde_json::from_slice::<PortPlan>(&bytes).map_err(|e| {
                PortError::Corrupt {
                    path: path.clone(),
                    message: e.to_string(),
                }
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(e)),
        };
        let mut changed = existing.is_none();
        let mut plan = match existing {
            Some(plan) => plan,
            None => PortPlan {
                authserver: free_port().map_err(io)?,
                authserver_admin: free_port().map_err(io)?,
                services: BTreeMap::new(),
            },
        };
        for service in services {
            if !plan.services.contains_key(service) {
                let ports = SidecarPorts {
                    port: free_port().map_err(io)?,
                    admin_port: free_port().map_err(io)?,
                };
                plan.services.insert(service.clone(), ports);
                changed = true;
            }
        }
        if changed {
            let text = serde_json::to_vec_pretty(&plan).map_err(|e| PortError::Corrupt {
                path: path.clone(),
                message: e.to_string(),
            })?;
            std::fs::write(&path, text).map_err(io)?;
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_chosen_once_and_kept_across_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first =
            PortPlan::load_or_choose(dir.path(), &["default/notes".into()]).expect("chosen");
        assert_ne!(first.authserver, 0);
        let again = PortPlan::load_or_choose(dir.path(), &["default/notes".into()]).expect("kept");
        assert_eq!(first, again);
        let more = PortPlan::load_or_choose(
            dir.path(),
            &["default/notes".into(), "default/files".into()],
        )
        .expect("extended");
        assert_eq!(
            more.services["default/notes"],
            first.services["default/notes"]
        );
        assert_eq!(more.authserver, first.authserver);
        assert!(more.services.contains_key("default/files"));
    }

    #[test]
    fn a_damaged_ports_file_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(PORTS_FILE), b"{not json").expect("write");
        let err = PortPlan::load_or_choose(dir.path(), &[]).expect_err("refused");
        assert!(err.to_string().contains("not a ports file"), "{err}");
        assert!(
            err.to_string().ends_with("delete it to choose new ports"),
            "{err}"
        );
        assert_eq!(err.metric_label(), "corrupt");
    }
}
