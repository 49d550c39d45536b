//! `mcp-authz render -f DIR`: read the resources of a directory of YAML files and render every
//! object the operator would create for them.

use std::path::{Path, PathBuf};

use kube::ResourceExt;
use serde_json::Value;

use super::{Inputs, RenderSettings, RenderedObject, authserver, names_server, sidecar};
use crate::api::{AuthorizationServer, CIMDPolicy, MCPScope, MCPService};

/// Largest manifest file read, in bytes: a directory of hand-written YAML never comes near it.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// The resources found in a directory.
#[derive(Debug, Clone, Default)]
pub struct Manifests {
    /// AuthorizationServers.
    pub servers: Vec<AuthorizationServer>,
    /// MCPServices.
    pub services: Vec<MCPService>,
    /// MCPScopes.
    pub scopes: Vec<MCPScope>,
    /// CIMDPolicies.
    pub policies: Vec<CIMDPolicy>,
}

/// Errors of reading manifests.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A file or the directory could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file is larger than [`MAX_FILE_BYTES`].
    #[error("{path} is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge {
        /// The path.
        path: PathBuf,
    },
    /// A document is not YAML or not a valid resource of its kind.
    #[error("{path}: document {index}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Position of the document in the file, from 1.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// Rendering failed.
    #[error(transparent)]
    Render(#[from] super::RenderError),
}

impl ManifestError {
    /// Low-cardinality reason for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Read { .. } => "read",
            Self::TooLarge { .. } => "too_large",
            Self::Parse { .. } => "parse",
            Self::Render(e) => e.metric_label(),
        }
    }
}

/// Reads every `*.yaml`/`*.yml` file of `dir` (not recursive, in name order). Objects without a
/// namespace get `default_namespace`; kinds other than the four of mcp-authz are skipped.
pub fn read_dir(dir: &Path, default_namespace: &str) -> Result<Manifests, ManifestError> {
    let read_err = |path: &Path| {
        let path = path.to_owned();
        move |source| ManifestError::Read { path, source }
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut out = Manifests::default();
    for path in files {
        let size = std::fs::metadata(&path).map_err(read_err(&path))?.len();
        if size > MAX_FILE_BYTES {
            return Err(ManifestError::TooLarge { path });
        }
        let text = std::fs::read_to_string(&path).map_err(read_err(&path))?;
        parse_into(&mut out, &path, &text, default_namespace)?;
    }
    Ok(out)
}

/// Adds the resources of one YAML stream to `out`.
pub fn parse_into(
    out: &mut Manifests,
    path: &Path,
    text: &str,
    default_namespace: &str,
) -> Result<(), ManifestError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| ManifestError::Parse {
        path: path.to_owned(),
        index: 1,
        message: e.to_string(),
    })?;
    for (i, mut doc) in docs.into_iter().enumerate() {
        let parse_err = |message: String| ManifestError::Parse {
            path: path.to_owned(),
            index: i + 1,
            message,
        };
        if doc.is_null() {
            continue;
        }
        let api_version = doc
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if !api_version.starts_with(&format!("{}/", crate::api::GROUP)) {
            continue;
        }
        if doc
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
            && let Some(meta) = doc.get_mut("metadata").and_then(Value::as_object_mut)
        {
            meta.insert(
                "namespace".into(),
                Value::String(default_namespace.to_owned()),
            );
        }
        let kind = doc
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        // The CRD's CEL rules, offline, so `render` refuses what the API server would refuse.
        if let Some(schema) = schema_of(&kind)
            && let Err(errors) = kube::core::cel::Validator::new().validate(&schema, &doc, None)
        {
            let name = doc
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let messages: Vec<String> = errors.into_vec().iter().map(ToString::to_string).collect();
            return Err(parse_err(format!("{kind} {name}: {}", messages.join("; "))));
        }
        let typed = |e: serde_json::Error| parse_err(format!("{kind}: {e}"));
        match kind.as_str() {
            "AuthorizationServer" => out
                .servers
                .push(serde_json::from_value(doc).map_err(typed)?),
            "MCPService" => out
                .services
                .push(serde_json::from_value(doc).map_err(typed)?),
            "MCPScope" => out.scopes.push(serde_json::from_value(doc).map_err(typed)?),
            "CIMDPolicy" => out
                .policies
                .push(serde_json::from_value(doc).map_err(typed)?),
            other => {
                return Err(parse_err(format!(
                    "unknown kind {other:?} in {api_version}"
                )));
            }
        }
    }
    Ok(())
}

fn schema_of(kind: &str) -> Option<Value> {
    let crd = crate::api::all_crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)?;
    let schema = crd
        .spec
        .versions
        .first()?
        .schema
        .clone()?
        .open_api_v3_schema?;
    serde_json::to_value(schema).ok()
}

/// Every object the operator would create for `manifests`, servers first.
pub fn render_all(
    manifests: &Manifests,
    settings: &RenderSettings,
) -> Result<Vec<RenderedObject>, ManifestError> {
    let mut objects = Vec::new();
    for server in &manifests.servers {
        let inputs = Inputs {
            server,
            services: &manifests.services,
            scopes: &manifests.scopes,
            policies: &manifests.policies,
        };
        objects.extend(authserver::render(&inputs, settings)?);
    }
    for service in &manifests.services {
        if let Some(server) = manifests.servers.iter().find(|s| names_server(service, s)) {
            objects.extend(sidecar::render(service, server, &manifests.scopes)?);
        }
    }
    Ok(objects)
}

/// The objects as one YAML stream.
pub fn to_yaml(objects: &[RenderedObject]) -> Result<String, super::RenderError> {
    let mut out = String::new();
    for o in objects {
        let text = serde_saphyr::to_string(&o.body).map_err(|e| super::RenderError::Serialize {
            what: format!("{} {}", o.kind, o.name),
            message: e.to_string(),
        })?;
        out.push_str("---\n");
        out.push_str(&text);
    }
    Ok(out)
}

/// Names of the services in `manifests` that no server of the directory issues tokens for.
pub fn orphan_services(manifests: &Manifests) -> Vec<String> {
    manifests
        .services
        .iter()
        .filter(|svc| !manifests.servers.iter().any(|s| names_server(svc, s)))
        .map(|s| format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_directory_of_manifests() {
        let dir = tempfile::tempdir().expect("dir");
        let docs = [
            crate::api::cases::authorization_server(),
            crate::api::cases::mcp_service(),
            crate::api::cases::mcp_scope(),
            crate::api::cases::cimd_policy(),
        ];
        let text: String = docs
            .iter()
            .map(|d| format!("---\n{}", serde_saphyr::to_string(d).expect("yaml")))
            .collect();
        std::fs::write(
            dir.path().join("all.yaml"),
            text + "---\napiVersion: v1\nkind: Secret\nmetadata: {name: users}\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("notes.txt"), "not yaml: [").expect("write");
        let manifests = read_dir(dir.path(), "team").expect("read");
        assert_eq!(
            (
                manifests.servers.len(),
                manifests.services.len(),
                manifests.scopes.len(),
                manifests.policies.len()
            ),
            (1, 1, 1, 1)
        );
        assert_eq!(
            manifests.services[0].metadata.namespace.as_deref(),
            Some("team")
        );
        let objects = render_all(&manifests, &RenderSettings::default()).expect("render");
        let names: Vec<String> = objects
            .iter()
            .map(|o| format!("{}/{}", o.kind, o.name))
            .collect();
        assert_eq!(
            names,
            [
                "ConfigMap/auth-authserver",
                "Deployment/auth-authserver",
                "Service/auth-authserver",
                "PersistentVolumeClaim/auth-authserver",
                "ConfigMap/files-mcp-authz-sidecar",
                "NetworkPolicy/files-mcp-authz",
            ]
        );
        let yaml = to_yaml(&objects).expect("yaml");
        assert_eq!(yaml.matches("---\n").count(), 6);
        assert!(orphan_services(&manifests).is_empty());
    }

    #[test]
    fn bad_documents_are_refused_with_file_and_position() {
        let mut m = Manifests::default();
        let err = parse_into(&mut m, Path::new("x.yaml"), "apiVersion: mcp-authz.io/v1alpha1\nkind: MCPScope\nmetadata: {name: a}\nspec: {value: 3}\n", "d")
            .expect_err("bad spec");
        assert!(
            err.to_string()
                .starts_with("x.yaml: document 1: MCPScope: "),
            "{err}"
        );
        let err = parse_into(
            &mut m,
            Path::new("y.yaml"),
            "apiVersion: mcp-authz.io/v1alpha1\nkind: Gadget\n",
            "d",
        )
        .expect_err("kind");
        assert_eq!(
            err.to_string(),
            "y.yaml: document 1: unknown kind \"Gadget\" in mcp-authz.io/v1alpha1"
        );
        let mut replicas = crate::api::cases::authorization_server();
        replicas["spec"]["replicas"] = serde_json::json!(2);
        let text = serde_saphyr::to_string(&replicas).expect("yaml");
        let err = parse_into(&mut m, Path::new("w.yaml"), &text, "d").expect_err("CEL");
        assert!(
            err.to_string()
                .starts_with("w.yaml: document 1: AuthorizationServer auth: ")
                && err
                    .to_string()
                    .contains("spec.replicas: embedded storage is a single SQLite file"),
            "{err}"
        );
        let err = parse_into(&mut m, Path::new("z.yaml"), "a: [", "d").expect_err("yaml");
        assert!(err.to_string().starts_with("z.yaml: document 1: "), "{err}");
    }
}
