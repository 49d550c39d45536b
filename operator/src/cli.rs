//! The command line: `mcp-authz operator | crds | render`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::crdgen;

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
    /// Print the CustomResourceDefinitions (or write one file each into --out-dir).
    Crds {
        /// Write `<group>_<plural>.yaml` files into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

/// Runs one subcommand.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Crds { out_dir } => write_crds(out_dir),
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
