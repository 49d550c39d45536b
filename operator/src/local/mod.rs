//! `mcp-authz local -f DIR`: the whole plane on a laptop, from the same manifests a cluster takes.
//!
//! ```text
//! DIR/*.yaml --crate::manifests (schema + CEL, errors name file/object/field)--> ManifestSet
//!     --plan: the operator's own render functions, then loopback/state-dir overrides--> LocalPlan
//!     --runtime: state files, authserver + one sidecar per MCPService in this process,
//!       readiness over real sockets, summary table / ready file, re-render on change
//! ```

pub mod plan;
pub mod ports;
pub mod runtime;

use std::path::PathBuf;
use std::time::Duration;

pub use runtime::{LocalError, LocalOptions};

/// `mcp-authz local`: run the authorization server and a sidecar per MCPService on loopback ports.
#[derive(Debug, Clone, clap::Args)]
pub struct LocalArgs {
    /// Directory of manifests (AuthorizationServer, MCPService, MCPScope, CIMDPolicy, and the
    /// Secrets and ConfigMaps they reference). May be given more than once.
    #[arg(short = 'f', long = "filename", required = true)]
    pub dirs: Vec<PathBuf>,
    /// State directory: SQLite database, signing keys, chosen ports, rendered configs. Kept
    /// across restarts, so grants survive them.
    #[arg(long, env = "MCP_AUTHZ_LOCAL_STATE", default_value = ".mcp-authz")]
    pub state_dir: PathBuf,
    /// Write the summary as JSON here once everything answers (`issuer`, `services.<name>.url`,
    /// `services.<name>.upstream`, `admin.url`, `admin.tokenFile`).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// How often the manifest directories are checked for changes, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub watch_ms: u64,
    /// Where the audit records of the server and the sidecars go: `off` (stdout carries the summary), `stderr`
    /// (beside the logs) or `stdout`.
    #[arg(long, env = "MCP_AUTHZ_AUDIT_OUTPUT", default_value = "off")]
    pub audit_output: mcp_authz_audit::Destination,
    /// On Ctrl-C or SIGTERM, the budget of the whole stop, in milliseconds: the servers drain together for most
    /// of it, and shares are kept for the audit flush, the tracing stop and the exit.
    #[arg(long, env = "MCP_AUTHZ_SHUTDOWN_GRACE_MS", default_value_t = mcp_authz_audit::stop::DEFAULT_BUDGET_MS)]
    pub shutdown_grace_ms: u64,
}

impl From<LocalArgs> for LocalOptions {
    fn from(args: LocalArgs) -> Self {
        LocalOptions {
            dirs: args.dirs,
            state_dir: args.state_dir,
            ready_file: args.ready_file,
            watch_every: Duration::from_millis(args.watch_ms.max(100)),
            stop_budget: Duration::from_millis(args.shutdown_grace_ms),
        }
    }
}

/// Runs local mode until Ctrl-C or SIGTERM. The servers' logs go to stderr (`RUST_LOG`, warnings
/// by default) so that stdout carries only the summary people read.
pub async fn run(args: LocalArgs) -> Result<(), LocalError> {
    let outputs = mcp_authz_audit::Outputs::start(
        args.audit_output,
        mcp_authz_audit::pipe::DEFAULT_CAPACITY_BYTES,
        // Counted where most records come from: every sidecar's /metrics shows the drops.
        mcp_authz_audit::pipe::Dropped::process("sidecar"),
    )
    .map_err(LocalError::Audit)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Another subscriber may already be installed (tests, an embedding program): keep it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(outputs.logs.clone())
        .try_init();
    mcp_authz_audit::panics::install();
    let stop = async {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = terminate => {}
        }
    };
    // Dropping `outputs` on an early return writes what they queued.
    runtime::run(args.into(), stop, &outputs).await
}
