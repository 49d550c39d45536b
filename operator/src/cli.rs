//! The command line: `mcp-authz operator | crds | render | local`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::crdgen;
use crate::render::{RenderSettings, manifests};

/// The mcp-authz control plane.
#[derive(Debug, Parser)]
#[command(name = "mcp-authz", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controllers and the sidecar-injecting webhook (in the cluster).
    Operator(Box<crate::runtime::OperatorArgs>),
    /// Print the CustomResourceDefinitions (or write one file each into --out-dir).
    Crds {
        /// Write `<group>_<plural>.yaml` files into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Run the whole plane on this machine from a directory of manifests: the authorization server
    /// and one sidecar per MCPService on loopback ports, state in a directory.
    Local(crate::local::LocalArgs),
    /// Print every Kubernetes object the operator would create for the manifests in a directory,
    /// except the Secrets that hold keys (the server's signing keys and resource-server root, each
    /// service's introspection key): those are state the running operator makes and keeps.
    Render {
        /// Directory of YAML manifests (AuthorizationServer, MCPService, MCPScope, CIMDPolicy).
        #[arg(short = 'f', long = "filename")]
        dir: PathBuf,
        /// Namespace of manifests that name none.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Image of the authorization server.
        #[arg(long, env = "MCP_AUTHZ_AUTHSERVER_IMAGE")]
        authserver_image: Option<String>,
        /// Image of the sidecar.
        #[arg(long, env = "MCP_AUTHZ_SIDECAR_IMAGE")]
        sidecar_image: Option<String>,
    },
}

/// Runs one subcommand.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Operator(args) => {
            init_logging();
            crate::runtime::run(*args).await
        }
        Command::Crds { out_dir } => write_crds(out_dir),
        Command::Local(args) => Ok(crate::local::run(args).await?),
        Command::Render {
            dir,
            namespace,
            authserver_image,
            sidecar_image,
        } => {
            let mut settings = RenderSettings::default();
            if let Some(image) = authserver_image {
                settings.authserver_image = image;
            }
            if let Some(image) = sidecar_image {
                settings.sidecar_image = image;
            }
            let manifests = crate::manifests::load_dirs(std::slice::from_ref(&dir), &namespace)?;
            for other in &manifests.skipped {
                eprintln!("note: {other} is not a resource the operator reads; left out");
            }
            for orphan in manifests::orphan_services(&manifests) {
                eprintln!(
                    "warning: MCPService {orphan} names an AuthorizationServer that is not in {}",
                    dir.display()
                );
            }
            let objects = manifests::render_all(&manifests, &settings)?;
            std::io::stdout().write_all(manifests::to_yaml(&objects)?.as_bytes())?;
            Ok(())
        }
    }
}

fn write_crds(out_dir: Option<PathBuf>) -> anyhow::Result<()> {
    match out_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for file in crdgen::crd_files()? {
                let path = dir.join(&file.name);
                std::fs::write(&path, file.yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        None => std::io::stdout().write_all(crdgen::crds_yaml()?.as_bytes())?,
    }
    Ok(())
}

/// JSON logs (`MCP_AUTHZ_LOG_FORMAT=json`, the chart's setting) or text, filtered by `RUST_LOG`.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if std::env::var("MCP_AUTHZ_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
