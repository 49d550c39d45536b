//! `mcp-authz-server --config FILE`: the authorization server. `mcp-authz-server hash-password`: an Argon2id hash.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mcp_authz_authserver::config::AuthServerConfig;
use mcp_authz_authserver::{passwords, server};

// See the workspace manifest for why; the library leaves the allocator to whoever links it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "mcp-authz-server",
    version,
    about = "The OAuth 2.1 authorization server of mcp-authz"
)]
struct Args {
    /// The rendered config (YAML or JSON); reloaded when it changes.
    #[arg(long, env = "MCP_AUTHZ_SERVER_CONFIG")]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "MCP_AUTHZ_LOG_FORMAT", default_value = "json", value_parser = ["json", "text"])]
    log_format: String,
    /// Where audit records go: `stdout` (the stream of its own: logs are on stderr), `stderr` or `off` (the
    /// store's rows remain).
    #[arg(long, env = "MCP_AUTHZ_AUDIT_OUTPUT", default_value = "stdout")]
    audit_output: mcp_authz_audit::Destination,
    /// On SIGTERM, the budget of the whole stop, in milliseconds: requests in progress get most of it, and
    /// those still running when their share is over are cut (with their audit record); shares are kept for the
    /// audit flush, the tracing stop and the exit. The pod's `terminationGracePeriodSeconds` must exceed it
    /// (the operator renders it so for the default).
    #[arg(long, env = "MCP_AUTHZ_SHUTDOWN_GRACE_MS", default_value_t = mcp_authz_audit::stop::DEFAULT_BUDGET_MS)]
    shutdown_grace_ms: u64,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Reads a password on stdin and prints its Argon2id PHC string for `login.static.users[].passwordHash`.
    HashPassword,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::HashPassword) = args.command {
        let mut password = String::new();
        std::io::stdin()
            .take(4096)
            .read_to_string(&mut password)
            .context("reading the password from stdin")?;
        let password = password.trim_end_matches(['\r', '\n']);
        anyhow::ensure!(!password.is_empty(), "empty password");
        println!(
            "{}",
            passwords::hash_password(password).map_err(anyhow::Error::msg)?
        );
        return Ok(());
    }
    // stdout is the audit stream alone and stderr the logs, each written by a thread of its own so that a slow
    // reader stalls no request.
    let outputs = mcp_authz_audit::Outputs::start(
        args.audit_output,
        mcp_authz_audit::pipe::DEFAULT_CAPACITY_BYTES,
        mcp_authz_audit::pipe::Dropped::process("authserver"),
    )?;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(outputs.logs.clone());
    if args.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
    mcp_authz_audit::panics::install();
    // Spans go to the OTLP endpoint the standard `OTEL_*` variables name; none named, none made.
    let tracing = match mcp_authz_otel::Settings::from_process_env("mcp-authz-server")? {
        Some(settings) => {
            let tracing =
                mcp_authz_otel::start(&settings, mcp_authz_authserver::spans::dropped().clone())?;
            mcp_authz_authserver::spans::install(tracing.tracer.clone());
            tracing::info!(endpoint = %settings.endpoint, sampler = ?settings.sampler, "tracing over OTLP");
            Some(tracing)
        }
        None => None,
    };
    let path = args
        .config
        .context("--config FILE (or MCP_AUTHZ_SERVER_CONFIG) is required")?;
    let config =
        AuthServerConfig::load(&path).with_context(|| format!("loading {}", path.display()))?;
    let running = server::start(config, Some(path)).await?;
    let stop = running.state.clone();
    tokio::select! {
        () = shutdown_signal() => tracing::info!("shutting down"),
        () = async { let _ = &stop; std::future::pending::<()>().await } => {}
    }
    // One deadline for the whole stop, fixed now: each step takes what is left of it, so the steps cannot add
    // up past the pod's grace period.
    let stop = mcp_authz_audit::stop::Stop::begin(std::time::Duration::from_millis(
        args.shutdown_grace_ms,
    ));
    running.stop_within(stop).await;
    outputs
        .finish_stop(&stop, |by| async move {
            if let Some(tracing) = tracing {
                let _ = tokio::task::spawn_blocking(move || tracing.shutdown(by)).await;
            }
        })
        .await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or_default(),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or_default();
}
