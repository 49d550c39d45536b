#![forbid(unsafe_code)]
//! `mcp-authz`: the control plane binary. Everything lives in the library; this only dispatches.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = mcp_authz_operator::cli::Cli::parse();
    mcp_authz_operator::cli::run(cli).await
}
