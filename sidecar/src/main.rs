//! `mcp-authz-sidecar --config FILE`: the token-checking proxy in front of one MCP server.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mcp_authz_audit::pipe as log_pipe;
use mcp_authz_sidecar::config::SidecarConfig;
use mcp_authz_sidecar::server::Sidecar;

#[derive(Parser)]
#[command(
    version,
    about = "Token-checking reverse proxy (OAuth resource server) for one MCP server"
)]
struct Args {
    /// The rendered sidecar config (YAML or JSON); reloaded when it changes.
    #[arg(long, env = "MCP_AUTHZ_SIDECAR_CONFIG")]
    config: PathBuf,
    /// How often the config file is checked for changes, in seconds.
    #[arg(long, env = "MCP_AUTHZ_SIDECAR_RELOAD_SECONDS", default_value_t = 5)]
    reload_seconds: u64,
    /// Runtime threads; 1 runs everything on one thread. One thread measured a lower median latency and less
    /// CPU per request than two (sidecar/README.md, Benchmarks): with two, handing a request between the
    /// client and upstream connections often wakes the other thread (4.0 context switches per request
    /// against 2.4). More threads pay off only for loads one core cannot carry.
    #[arg(long, env = "MCP_AUTHZ_SIDECAR_WORKERS", default_value_t = 1)]
    workers: usize,
    /// Log format: `json` (in cluster) or `text`.
    #[arg(long, env = "MCP_AUTHZ_LOG_FORMAT", default_value = "json")]
    log_format: String,
    /// Where audit records go: `stdout` (the stream of its own: logs are on stderr), `stderr` or `off`.
    #[arg(long, env = "MCP_AUTHZ_AUDIT_OUTPUT", default_value = "stdout")]
    audit_output: mcp_authz_audit::Destination,
    /// Bytes of audit records, and as many of log lines, that may wait for a slow reader; past that, they are
    /// dropped and counted (`mcp_authz_sidecar_audit_dropped_total`, `..._log_dropped_total`) instead of
    /// holding up requests.
    #[arg(long, env = "MCP_AUTHZ_SIDECAR_LOG_BUFFER_BYTES", default_value_t = log_pipe::DEFAULT_CAPACITY_BYTES)]
    log_buffer_bytes: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Each stream is written by a thread of its own: a slow reader of it must never stall the runtime (issue 15).
    let outputs = mcp_authz_audit::Outputs::start(
        args.audit_output,
        args.log_buffer_bytes,
        log_pipe::Dropped::process("sidecar"),
    )?;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(outputs.logs.clone());
    if args.log_format == "json" {
        subscriber.json().init()
    } else {
        subscriber.init()
    }
    mcp_authz_audit::panics::install();
    // Dropping `outputs` on the way out writes what they queued.
    serve(args, &outputs)
}

fn serve(args: Args, outputs: &mcp_authz_audit::Outputs) -> anyhow::Result<()> {
    let runtime = if args.workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.workers)
            .enable_all()
            .build()?
    };
    runtime.block_on(run(args, outputs))
}

async fn run(args: Args, outputs: &mcp_authz_audit::Outputs) -> anyhow::Result<()> {
    let config = SidecarConfig::load(&args.config)?;
    let tracing = mcp_authz_otel::Settings::from_process_env("mcp-authz-sidecar")?;
    if let Some(settings) = &tracing {
        tracing::info!(endpoint = %settings.endpoint, sampler = ?settings.sampler, "tracing over OTLP");
    }
    let sidecar = Sidecar::start_traced(config, tracing.as_ref())
        .await
        .context("starting the sidecar")?;
    sidecar.watch_file(
        args.config.clone(),
        Duration::from_secs(args.reload_seconds.max(1)),
    );

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = sigterm.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // One deadline for the whole stop, fixed now: each step takes what is left of it, so the steps cannot add
    // up past the pod's grace period.
    let stop = mcp_authz_audit::stop::Stop::begin(sidecar.stop_budget());
    tracing::info!(budget = ?sidecar.stop_budget(), "signal received; draining");
    let drained = sidecar.drain(&stop).await;
    outputs
        .finish_stop(&stop, |by| drained.stop_tracing(by))
        .await;
    Ok(())
}
