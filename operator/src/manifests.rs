//! Reading directories of manifests the way the API server would take them: every YAML document is
//! checked against its CRD's schema and CEL rules (kube's offline evaluator) after serde defaults
//! are applied, and every refusal names the file, the object and the field. `mcp-authz render -f`
//! and `mcp-authz local -f` both read through here.
//!
//! Besides the five mcp-authz kinds, plain `Secret`s and `ConfigMap`s are read, because the
//! resources reference them (the static users file, a trusted CA bundle) exactly as in a cluster.
//! Objects of other API groups are set aside in [`ManifestSet::skipped`]; each caller decides what
//! they mean to it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use kube::Resource;
use kube::core::cel::Validator;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::{AuthorizationServer, CIMDPolicy, MCPClient, MCPScope, MCPService, all_crds};

/// The namespace of objects that name none (as `kubectl apply` without `-n` would put them).
pub const DEFAULT_NAMESPACE: &str = "default";

/// Largest manifest file read; a directory of YAML has no business being bigger.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Most manifest files read from one directory.
pub const MAX_FILES: usize = 512;

/// Where an object came from: the file and the object, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The manifest file.
    pub file: PathBuf,
    /// `Kind/name` (or `document N` when the object has no kind or name yet).
    pub object: String,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.object)
    }
}

/// A manifest that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A directory or file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Bigger than [`MAX_FILE_BYTES`], or too many files.
    #[error("{path}: {message}")]
    TooLarge {
        /// The path.
        path: PathBuf,
        /// What limit it broke.
        message: String,
    },
    /// Not YAML.
    #[error("{file}: not valid YAML: {message}")]
    Yaml {
        /// The file.
        file: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// An object that breaks its schema, a CEL rule, or a reference.
    #[error("{origin}: {field}: {message}")]
    Invalid {
        /// File and object.
        origin: Origin,
        /// The field, as written in the manifest (`spec.rules[0].scopes`).
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl ManifestError {
    /// A low-cardinality reason for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Read { .. } => "read",
            Self::TooLarge { .. } => "too_large",
            Self::Yaml { .. } => "yaml",
            Self::Invalid { .. } => "invalid",
        }
    }
}

/// One object with where it came from.
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    /// The object, serde defaults applied.
    pub object: T,
    /// Its file and name.
    pub origin: Origin,
}

/// A Secret's data, decoded: key -> bytes.
pub type SecretData = BTreeMap<String, Vec<u8>>;
/// A ConfigMap's data: key -> text.
pub type ConfigMapData = BTreeMap<String, String>;
/// Objects keyed by (namespace, name).
pub type ByName<T> = BTreeMap<(String, String), Loaded<T>>;

/// Everything read from the manifest directories.
#[derive(Debug, Clone)]
pub struct ManifestSet {
    /// Where objects that name no namespace go.
    pub default_namespace: String,
    /// `AuthorizationServer`s.
    pub authorization_servers: Vec<Loaded<AuthorizationServer>>,
    /// `MCPService`s.
    pub services: Vec<Loaded<MCPService>>,
    /// `MCPScope`s.
    pub scopes: Vec<Loaded<MCPScope>>,
    /// `CIMDPolicy`s.
    pub policies: Vec<Loaded<CIMDPolicy>>,
    /// `MCPClient`s.
    pub clients: Vec<Loaded<MCPClient>>,
    /// Secrets by (namespace, name): key -> decoded bytes.
    pub secrets: ByName<SecretData>,
    /// ConfigMaps by (namespace, name): key -> text.
    pub config_maps: ByName<ConfigMapData>,
    /// Objects of other kinds (a Deployment beside the resources), not read.
    pub skipped: Vec<Origin>,
}

impl Default for ManifestSet {
    fn default() -> Self {
        Self::in_namespace(DEFAULT_NAMESPACE)
    }
}

impl ManifestSet {
    /// An empty set whose objects without a namespace go to `namespace`.
    pub fn in_namespace(namespace: &str) -> Self {
        Self {
            default_namespace: namespace.to_owned(),
            authorization_servers: Vec::new(),
            services: Vec::new(),
            scopes: Vec::new(),
            policies: Vec::new(),
            clients: Vec::new(),
            secrets: BTreeMap::new(),
            config_maps: BTreeMap::new(),
            skipped: Vec::new(),
        }
    }

    /// The MCPServices, without their origins.
    pub fn service_objects(&self) -> Vec<MCPService> {
        self.services.iter().map(|s| s.object.clone()).collect()
    }

    /// The MCPScopes, without their origins.
    pub fn scope_objects(&self) -> Vec<MCPScope> {
        self.scopes.iter().map(|s| s.object.clone()).collect()
    }

    /// The CIMDPolicies, without their origins.
    pub fn policy_objects(&self) -> Vec<CIMDPolicy> {
        self.policies.iter().map(|s| s.object.clone()).collect()
    }

    /// The MCPClients, without their origins.
    pub fn client_objects(&self) -> Vec<MCPClient> {
        self.clients.iter().map(|s| s.object.clone()).collect()
    }

    /// What the set's Secrets say about the client secrets MCPClients name.
    pub fn client_secret_lengths(&self) -> crate::render::clients::SecretLengths {
        self.secrets
            .iter()
            .map(|((namespace, name), secret)| {
                let keys = secret
                    .object
                    .iter()
                    .map(|(key, value)| (key.clone(), crate::render::clients::secret_chars(value)))
                    .collect();
                ((namespace.clone(), name.clone()), keys)
            })
            .collect()
    }
}

/// Reads every `*.yaml`, `*.yml` and `*.json` file of each directory (not recursing), in name order;
/// objects that name no namespace go to `default_namespace`.
pub fn load_dirs(dirs: &[PathBuf], default_namespace: &str) -> Result<ManifestSet, ManifestError> {
    let mut set = ManifestSet::in_namespace(default_namespace);
    for dir in dirs {
        for file in manifest_files(dir)? {
            let text = read_limited(&file)?;
            add_file(&mut set, &file, &text)?;
        }
    }
    Ok(set)
}

/// The manifest files of `dir`, sorted by name.
pub fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let read_error = |source| ManifestError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        let is_manifest = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        if is_manifest && path.is_file() {
            files.push(path);
        }
    }
    if files.len() > MAX_FILES {
        return Err(ManifestError::TooLarge {
            path: dir.to_path_buf(),
            message: format!(
                "{} manifest files, at most {MAX_FILES} are read",
                files.len()
            ),
        });
    }
    files.sort();
    Ok(files)
}

fn read_limited(file: &Path) -> Result<String, ManifestError> {
    let read_error = |source| ManifestError::Read {
        path: file.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(file).map_err(read_error)?.len();
    if size > MAX_FILE_BYTES {
        return Err(ManifestError::TooLarge {
            path: file.to_path_buf(),
            message: format!("{size} bytes, at most {MAX_FILE_BYTES} are read"),
        });
    }
    read_text_capped(file, MAX_FILE_BYTES)
        .map_err(read_error)?
        .ok_or_else(|| ManifestError::TooLarge {
            path: file.to_path_buf(),
            message: format!("more than {MAX_FILE_BYTES} bytes, at most {MAX_FILE_BYTES} are read"),
        })
}

/// A text file's contents, or `None` when it gives more than `limit` bytes. The size a file reports is not
/// enough: a device (`/dev/zero`), a pipe or a file still growing gives more than it said, so the read itself
/// stops one byte past the limit.
pub fn read_text_capped(file: &Path, limit: u64) -> std::io::Result<Option<String>> {
    let mut text = String::new();
    let f = std::fs::File::open(file)?;
    std::io::Read::read_to_string(&mut std::io::Read::take(f, limit + 1), &mut text)?;
    Ok((text.len() as u64 <= limit).then_some(text))
}

/// Adds the documents of one file's text to `set`.
pub fn add_file(set: &mut ManifestSet, file: &Path, text: &str) -> Result<(), ManifestError> {
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| ManifestError::Yaml {
            file: file.to_path_buf(),
            message: e.to_string(),
        })?;
    for (index, document) in documents.into_iter().enumerate() {
        if document.is_null() {
            continue;
        }
        add_document(set, file, index, document)?;
    }
    Ok(())
}

fn add_document(
    set: &mut ManifestSet,
    file: &Path,
    index: usize,
    mut document: Value,
) -> Result<(), ManifestError> {
    // Like `kubectl apply -n`: objects that name no namespace land in the default one.
    if let Some(meta) = document.get_mut("metadata").and_then(Value::as_object_mut)
        && meta
            .get("namespace")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        meta.insert(
            "namespace".into(),
            Value::String(set.default_namespace.clone()),
        );
    }
    let kind = document
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let name = document
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let origin = Origin {
        file: file.to_path_buf(),
        object: if kind.is_empty() || name.is_empty() {
            format!("document {}", index + 1)
        } else {
            format!("{kind}/{name}")
        },
    };
    let invalid = |field: &str, message: String| ManifestError::Invalid {
        origin: origin.clone(),
        field: field.to_owned(),
        message,
    };
    if !document.is_object() {
        return Err(invalid(
            "",
            "a manifest must be a mapping with apiVersion, kind and metadata".into(),
        ));
    }
    if kind.is_empty() {
        return Err(invalid("kind", "missing".into()));
    }
    if name.is_empty() {
        return Err(invalid("metadata.name", "missing".into()));
    }
    let api_version = document
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let api_version = api_version.as_str();
    match kind.as_str() {
        "AuthorizationServer" => {
            set.authorization_servers
                .push(typed(&origin, api_version, document)?)
        }
        "MCPService" => set.services.push(typed(&origin, api_version, document)?),
        "MCPScope" => set.scopes.push(typed(&origin, api_version, document)?),
        "CIMDPolicy" => set.policies.push(typed(&origin, api_version, document)?),
        "MCPClient" => set.clients.push(typed(&origin, api_version, document)?),
        "Secret" if api_version == "v1" => {
            let data =
                secret_data(&document).map_err(|(field, message)| invalid(&field, message))?;
            set.secrets.insert(
                (namespace_of(&document), name),
                Loaded {
                    object: data,
                    origin,
                },
            );
        }
        "ConfigMap" if api_version == "v1" => {
            let data =
                config_map_data(&document).map_err(|(field, message)| invalid(&field, message))?;
            set.config_maps.insert(
                (namespace_of(&document), name),
                Loaded {
                    object: data,
                    origin,
                },
            );
        }
        "Secret" | "ConfigMap" => {
            return Err(invalid(
                "apiVersion",
                format!("{kind} must be apiVersion v1"),
            ));
        }
        other if api_version.starts_with(&format!("{}/", crate::api::GROUP)) => {
            return Err(invalid(
                "kind",
                format!(
                    "{other} is not a kind of {} (AuthorizationServer, MCPService, MCPScope, CIMDPolicy, MCPClient are)",
                    crate::api::GROUP
                ),
            ));
        }
        _ => set.skipped.push(origin),
    }
    Ok(())
}

/// Deserialises with the field path in errors, then checks the defaulted object against the CRD.
fn typed<K>(origin: &Origin, api_version: &str, document: Value) -> Result<Loaded<K>, ManifestError>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Serialize,
{
    let invalid = |field: String, message: String| ManifestError::Invalid {
        origin: origin.clone(),
        field,
        message,
    };
    let want = K::api_version(&());
    if api_version != want {
        return Err(invalid(
            "apiVersion".into(),
            format!("must be {want}, got {api_version:?}"),
        ));
    }
    let object: K = serde_path_to_error::deserialize(&document).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        invalid(field, e.into_inner().to_string())
    })?;
    let defaulted =
        serde_json::to_value(&object).map_err(|e| invalid(String::new(), e.to_string()))?;
    validate_against_crd(&K::kind(&()), &defaulted)
        .map_err(|(field, message)| invalid(field, message))?;
    Ok(Loaded {
        object,
        origin: origin.clone(),
    })
}

/// The schema and CEL rules of `kind`'s CRD, as the API server would apply them.
fn validate_against_crd(kind: &str, object: &Value) -> Result<(), (String, String)> {
    let crd = all_crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .ok_or_else(|| ("kind".to_owned(), format!("no CRD for {kind}")))?;
    let schema = crd
        .spec
        .versions
        .first()
        .and_then(|v| v.schema.clone())
        .and_then(|s| s.open_api_v3_schema);
    let schema = serde_json::to_value(schema).map_err(|e| (String::new(), e.to_string()))?;
    Validator::new()
        .validate(&schema, object, None)
        .map_err(|errors| {
            let first = errors.into_vec().into_iter().next();
            first.map_or((String::new(), "invalid".to_owned()), |e| {
                (e.field_path, e.message)
            })
        })
}

/// The namespace of a document whose namespace [`add_document`] has already filled in.
fn namespace_of(document: &Value) -> String {
    document
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn secret_data(document: &Value) -> Result<BTreeMap<String, Vec<u8>>, (String, String)> {
    let mut out = BTreeMap::new();
    if let Some(data) = document.get("data") {
        let map = data
            .as_object()
            .ok_or_else(|| ("data".to_owned(), "must be a mapping".to_owned()))?;
        for (key, value) in map {
            let field = format!("data.{key}");
            let text = value
                .as_str()
                .ok_or_else(|| (field.clone(), "must be a base64 string".to_owned()))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| (field, format!("not base64: {e}")))?;
            out.insert(key.clone(), bytes);
        }
    }
    if let Some(data) = document.get("stringData") {
        let map = data
            .as_object()
            .ok_or_else(|| ("stringData".to_owned(), "must be a mapping".to_owned()))?;
        for (key, value) in map {
            let text = value
                .as_str()
                .ok_or_else(|| (format!("stringData.{key}"), "must be a string".to_owned()))?;
            out.insert(key.clone(), text.as_bytes().to_vec());
        }
    }
    Ok(out)
}

fn config_map_data(document: &Value) -> Result<BTreeMap<String, String>, (String, String)> {
    let mut out = BTreeMap::new();
    if let Some(data) = document.get("data") {
        let map = data
            .as_object()
            .ok_or_else(|| ("data".to_owned(), "must be a mapping".to_owned()))?;
        for (key, value) in map {
            let text = value
                .as_str()
                .ok_or_else(|| (format!("data.{key}"), "must be a string".to_owned()))?;
            out.insert(key.clone(), text.to_owned());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "apiVersion: mcp-authz.io/v1alpha1
kind: AuthorizationServer
metadata: {name: auth}
spec:
  issuer: https://auth.example.com
  login: {staticUsers: {name: users, key: users.yaml}}
";

    fn load(text: &str) -> Result<ManifestSet, ManifestError> {
        let mut set = ManifestSet::default();
        add_file(&mut set, Path::new("dir/m.yaml"), text)?;
        Ok(set)
    }

    fn refusal(text: &str) -> String {
        load(text).expect_err("must be refused").to_string()
    }

    #[test]
    fn reads_every_kind_with_defaults_applied() {
        let text = format!(
            "{SERVER}---
apiVersion: v1
kind: Secret
metadata: {{name: users}}
data: {{a: aGVsbG8=}}
stringData: {{users.yaml: \"- username: demo\"}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: ca, namespace: other}}
data: {{ca.pem: PEM}}
---
apiVersion: mcp-authz.io/v1alpha1
kind: MCPScope
metadata: {{name: r}}
spec: {{value: notes:read, description: Read}}
"
        );
        let set = load(&text).expect("valid");
        let server = &set.authorization_servers[0];
        assert_eq!(server.object.spec.replicas, 1, "serde default applied");
        assert_eq!(server.origin.object, "AuthorizationServer/auth");
        let users = &set.secrets[&("default".to_owned(), "users".to_owned())].object;
        assert_eq!(users["a"], b"hello");
        assert_eq!(users["users.yaml"], b"- username: demo");
        assert_eq!(
            set.config_maps[&("other".to_owned(), "ca".to_owned())].object["ca.pem"],
            "PEM"
        );
        assert_eq!(set.scopes[0].object.spec.value, "notes:read");
    }

    #[test]
    fn refusals_name_the_file_the_object_and_the_field() {
        let cases: &[(&str, String, &str)] = &[
            ("not yaml", "a: [".to_owned(), "dir/m.yaml: not valid YAML"),
            (
                "no kind",
                "metadata: {name: x}\n".to_owned(),
                "dir/m.yaml: document 1: kind: missing",
            ),
            (
                "unknown kind of ours",
                "apiVersion: mcp-authz.io/v1alpha1\nkind: Gadget\nmetadata: {name: g}\n".to_owned(),
                "dir/m.yaml: Gadget/g: kind: Gadget is not a kind of mcp-authz.io (AuthorizationServer, MCPService, MCPScope, CIMDPolicy, MCPClient are)",
            ),
            (
                "wrong version",
                SERVER.replace("v1alpha1", "v9"),
                "dir/m.yaml: AuthorizationServer/auth: apiVersion: must be mcp-authz.io/v1alpha1",
            ),
            (
                "missing required field",
                SERVER.replace("  issuer: https://auth.example.com\n", ""),
                "dir/m.yaml: AuthorizationServer/auth: spec: missing field `issuer`",
            ),
            (
                "wrong type deep inside",
                SERVER.replace("spec:\n", "spec:\n  replicas: many\n"),
                "dir/m.yaml: AuthorizationServer/auth: spec.replicas: invalid type: string \"many\"",
            ),
            (
                "CEL rule",
                SERVER.replace("https://auth", "http://auth"),
                "dir/m.yaml: AuthorizationServer/auth: spec.issuer: issuer must be an https URL without query or fragment",
            ),
            (
                "secret not base64",
                "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {k: '***'}\n".to_owned(),
                "dir/m.yaml: Secret/s: data.k: not base64",
            ),
            (
                "configmap value not a string",
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {k: [1]}\n".to_owned(),
                "dir/m.yaml: ConfigMap/c: data.k: must be a string",
            ),
        ];
        for (name, text, want) in cases {
            let got = refusal(text);
            assert!(
                got.starts_with(want),
                "{name}: got {got:?}, want a message starting {want:?}"
            );
        }
    }

    #[test]
    fn other_kinds_are_set_aside_and_namespaces_default_as_asked() {
        let mut set = ManifestSet::in_namespace("team");
        add_file(
            &mut set,
            Path::new("dir/m.yaml"),
            &format!(
                "{SERVER}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\n"
            ),
        )
        .expect("valid");
        assert_eq!(
            set.authorization_servers[0]
                .object
                .metadata
                .namespace
                .as_deref(),
            Some("team")
        );
        assert_eq!(
            set.skipped
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["dir/m.yaml: Deployment/web"]
        );
    }

    #[test]
    fn the_quickstart_manifests_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart/manifests");
        let set = load_dirs(&[dir], DEFAULT_NAMESPACE).expect("the quickstart manifests load");
        assert_eq!(set.authorization_servers.len(), 1);
        assert_eq!(set.services.len(), 1);
        assert_eq!(set.scopes.len(), 2);
        assert_eq!(set.policies.len(), 1);
        assert!(
            set.secrets
                .contains_key(&("default".to_owned(), "quickstart-users".to_owned()))
        );
    }

    #[test]
    fn files_are_read_in_name_order_and_others_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("b.yaml"), "").expect("write");
        std::fs::write(dir.path().join("a.yml"), "").expect("write");
        std::fs::write(dir.path().join("notes.txt"), "not a manifest").expect("write");
        let files = manifest_files(dir.path()).expect("listed");
        let names: Vec<_> = files
            .iter()
            .map(|f| f.file_name().and_then(|n| n.to_str()).unwrap_or_default())
            .collect();
        assert_eq!(names, ["a.yml", "b.yaml"]);
    }

    #[test]
    fn an_oversized_file_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = dir.path().join("big.yaml");
        std::fs::write(&big, vec![b'#'; MAX_FILE_BYTES as usize + 1]).expect("write");
        let err = load_dirs(&[dir.path().to_path_buf()], DEFAULT_NAMESPACE).expect_err("too large");
        assert!(
            err.to_string().contains("bytes, at most 1048576 are read"),
            "{err}"
        );
        assert_eq!(err.metric_label(), "too_large");
    }
}
