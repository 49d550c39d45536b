//! The command line: `mcp-authz operator | crds | render | local | explain | test`.

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
    /// Explain what the sidecar would decide about one request and one token, from the manifests in a
    /// directory (with the sidecar's own decision code; nothing is contacted).
    Explain(Box<ExplainArgs>),
    /// Run a table of expected decisions (requests and client documents) against the manifests in a directory.
    /// Exit status 0 when every case passes, 1 when one fails, 2 when the manifests or cases cannot be read.
    Test {
        /// Directory of YAML manifests.
        #[arg(short = 'f', long = "filename")]
        dir: PathBuf,
        /// Namespace of manifests that name none.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Print every case's explanation, not only the failing ones'.
        #[arg(short, long)]
        verbose: bool,
        /// The case file (YAML).
        cases: PathBuf,
    },
}

/// Arguments of `mcp-authz explain`.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// Directory of YAML manifests.
    #[arg(short = 'f', long = "filename")]
    pub dir: PathBuf,
    /// Namespace of manifests that name none.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// The MCPService (`name` or `namespace/name`).
    #[arg(long)]
    pub service: String,
    /// The token's scopes, separated by spaces.
    #[arg(long, default_value = "")]
    pub scopes: String,
    /// A real token: its scopes, subject and client are read from its claims, which are held to the service's
    /// issuer, audience and expiry. Its signature is NOT checked.
    #[arg(long, conflicts_with = "scopes")]
    pub token: Option<String>,
    /// The token's client_id (forwarded upstream).
    #[arg(long)]
    pub client: Option<String>,
    /// The token's subject (forwarded upstream).
    #[arg(long)]
    pub subject: Option<String>,
    /// Who stands behind the token: `person`, or `machine` for a client acting for itself (client_credentials).
    #[arg(long, default_value = "person", value_parser = ["person", "machine", "unknown"])]
    pub caller: String,
    /// Assume introspection answers that the token was revoked.
    #[arg(long)]
    pub revoked: bool,
    /// The JSON-RPC method, instead of a request file.
    #[arg(long, conflicts_with = "request")]
    pub method: Option<String>,
    /// The tool, prompt or resource URI the method names.
    #[arg(long, requires = "method")]
    pub name: Option<String>,
    /// Send the call with the per-request envelope of this revision (`2026-07-28`).
    #[arg(long, requires = "method")]
    pub protocol_version: Option<String>,
    /// A header field sent with the request file, `Name: value` (repeatable).
    #[arg(long = "header", requires = "request")]
    pub headers: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// A file holding the JSON-RPC body of the request.
    #[arg(required_unless_present = "method")]
    pub request: Option<PathBuf>,
}

/// Runs one subcommand.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Operator(args) => {
            init_logging();
            let tracing = start_tracing()?;
            let stop = crate::runtime::run(*args).await?;
            if let Some(tracing) = tracing {
                let by = stop.traced_by();
                let _ = tokio::task::spawn_blocking(move || tracing.shutdown(by)).await;
            }
            Ok(())
        }
        Command::Crds { out_dir } => write_crds(out_dir),
        Command::Local(args) => Ok(crate::local::run(args).await?),
        Command::Explain(args) => explain(*args),
        Command::Test {
            dir,
            namespace,
            verbose,
            cases,
        } => test(&dir, &namespace, verbose, &cases),
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

fn explain(args: ExplainArgs) -> anyhow::Result<()> {
    use crate::policy::explain::{Probe, Token, explain};
    let set = crate::manifests::load_dirs(std::slice::from_ref(&args.dir), &args.namespace)?;
    let view = crate::policy::world::service_view(&set, &args.service)?;
    let probe = match (&args.method, &args.request) {
        (Some(method), _) => Probe::call(
            method,
            args.name.as_deref(),
            args.protocol_version.as_deref(),
        ),
        (None, Some(path)) => {
            let body = read_limited(path, 1024 * 1024)?;
            let mut headers = http::HeaderMap::new();
            for line in &args.headers {
                let (name, value) = line
                    .split_once(':')
                    .with_context(|| format!("--header {line:?} is not `Name: value`"))?;
                headers.append(
                    http::HeaderName::from_bytes(name.trim().as_bytes())
                        .with_context(|| format!("--header {line:?}: bad name"))?,
                    http::HeaderValue::from_str(value.trim())
                        .with_context(|| format!("--header {line:?}: bad value"))?,
                );
            }
            Probe::from_body(body.into(), headers)
        }
        (None, None) => anyhow::bail!("give a request file or --method"),
    };
    let mut token = Token {
        scopes: args.scopes.split_whitespace().map(String::from).collect(),
        client_id: args.client.clone(),
        subject: args.subject.clone(),
        caller: mcp_authz_sidecar::caller::Caller::from_claim(Some(&args.caller)),
        active: !args.revoked,
        refused: None,
    };
    if let Some(jwt) = &args.token {
        eprintln!("note: the token's claims were checked, its signature was not");
        token = token.with_claims_of(&view, jwt, crate::policy::cases::now());
    }
    let explanation = explain(&view, &token, &probe);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&explanation)?);
    } else {
        print!("{explanation}");
    }
    Ok(())
}

fn test(
    dir: &std::path::Path,
    namespace: &str,
    verbose: bool,
    cases: &std::path::Path,
) -> anyhow::Result<()> {
    let run = || -> anyhow::Result<Vec<crate::policy::cases::CaseResult>> {
        let set = crate::manifests::load_dirs(&[dir.to_path_buf()], namespace)?;
        let file = crate::policy::cases::read(cases)?;
        Ok(crate::policy::cases::run(
            &set,
            &file,
            &cases.display().to_string(),
        )?)
    };
    let results = match run() {
        Ok(results) => results,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::exit(2);
        }
    };
    let mut out = String::new();
    let failed = results.iter().filter(|r| r.failure.is_some()).count();
    for result in &results {
        match &result.failure {
            None => out.push_str(&format!("ok    {}\n", result.name)),
            Some(why) => out.push_str(&format!("FAIL  {}: {why}\n", result.name)),
        }
        if result.failure.is_some() || verbose {
            for line in result.detail.lines() {
                out.push_str(&format!("      {line}\n"));
            }
        }
    }
    out.push_str(&format!("{} cases, {failed} failed\n", results.len()));
    std::io::stdout().write_all(out.as_bytes())?;
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn read_limited(path: &std::path::Path, limit: u64) -> anyhow::Result<Vec<u8>> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    anyhow::ensure!(
        size <= limit,
        "{}: {size} bytes; at most {limit}",
        path.display()
    );
    // The size above is what the file said when asked; a device (`/dev/zero`), a pipe or a file still growing
    // says less than it gives, so the read itself stops one byte past the limit.
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| {
            std::io::Read::read_to_end(&mut std::io::Read::take(file, limit + 1), &mut bytes)
        })
        .with_context(|| format!("cannot read {}", path.display()))?;
    anyhow::ensure!(
        bytes.len() as u64 <= limit,
        "{}: more than {limit} bytes",
        path.display()
    );
    Ok(bytes)
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

/// A span per reconcile to the OTLP endpoint the standard `OTEL_*` variables name; none named, none made.
fn start_tracing() -> anyhow::Result<Option<mcp_authz_otel::Tracing>> {
    let Some(settings) = mcp_authz_otel::Settings::from_process_env("mcp-authz-operator")? else {
        return Ok(None);
    };
    let tracing = mcp_authz_otel::start(&settings, crate::spans::dropped().clone())?;
    crate::spans::install(tracing.tracer.clone());
    tracing::info!(endpoint = %settings.endpoint, sampler = ?settings.sampler, "tracing over OTLP");
    Ok(Some(tracing))
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
    mcp_authz_audit::panics::install();
}

#[cfg(test)]
mod tests {
    use super::read_limited;

    #[test]
    fn a_file_that_gives_more_than_it_said_is_cut_at_the_limit() {
        let err = read_limited(std::path::Path::new("/dev/zero"), 1024).unwrap_err();
        assert_eq!(err.to_string(), "/dev/zero: more than 1024 bytes");
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small");
        std::fs::write(&small, b"12345").unwrap();
        assert_eq!(read_limited(&small, 5).unwrap(), b"12345");
        assert!(
            read_limited(&small, 4)
                .unwrap_err()
                .to_string()
                .ends_with("5 bytes; at most 4")
        );
    }
}
