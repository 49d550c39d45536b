//! Declared clients (MCPClient) -> the authorization server's registered clients, each with its
//! standing: in the server's config, or left out and why. Pure: the reconciler, `render` and local
//! mode decide the same way.
//!
//! A declaration that the server would refuse is left out rather than written: one bad MCPClient
//! must not stop the shared server from loading its config. Its `Ready` condition says why.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use kube::ResourceExt;
use mcp_authz_authserver::config::{AuthServerConfig, ClientConfig};

use super::Inputs;
use crate::api::{AuthorizationServer, MCPClient};

/// Where the server finds each client's secret: `<dir>/<Secret name>/<key>`, one Secret volume (of the keys
/// read, not subPaths) per Secret, so the kubelet updates a rotated secret in place.
pub const CLIENT_SECRETS_DIR: &str = "/etc/mcp-authz/clients";

/// What the operator knows of the Secrets of the server's namespace, without their values: (namespace,
/// name) -> key -> the characters of the value as the server reads it (`None`: not UTF-8 text).
pub type SecretLengths = BTreeMap<(String, String), BTreeMap<String, Option<usize>>>;

/// The characters of a secret value as the server counts them (trimmed), `None` when it is not text.
pub fn secret_chars(value: &[u8]) -> Option<usize> {
    std::str::from_utf8(value)
        .ok()
        .map(|text| text.trim().chars().count())
}

/// Whether a declared client is in its server's config.
#[derive(Debug, Clone, PartialEq)]
pub enum Standing {
    /// In the config, as this entry.
    Registered(Box<ClientConfig>),
    /// Left out.
    Refused {
        /// The `Ready` condition's reason.
        reason: &'static str,
        /// What is wrong, for a person.
        message: String,
    },
}

/// One MCPClient naming the server, with its standing.
#[derive(Debug, Clone)]
pub struct Declared<'a> {
    /// The MCPClient.
    pub client: &'a MCPClient,
    /// In the config or not.
    pub standing: Standing,
}

/// Whether `client` names `server`: same namespace (a client is the platform team's declaration, made where
/// its server lives) and the server's name.
pub fn names_server(client: &MCPClient, server: &AuthorizationServer) -> bool {
    client.namespace() == server.namespace()
        && client.spec.authorization_server == server.name_any()
}

/// The MCPClients of `inputs` that name its server, oldest first, each with its standing against the
/// scope catalogue of `config` (the rest of the config rendered).
pub fn declared<'a>(inputs: &Inputs<'a>, config: &AuthServerConfig) -> Vec<Declared<'a>> {
    let mut mine: Vec<&MCPClient> = inputs
        .clients
        .iter()
        .filter(|c| names_server(c, inputs.server))
        .collect();
    // The claim that holds now first (its Ready condition, which only the operator writes, says so: an older
    // declaration made in the same second must not take a working client id), then the oldest, settled as every
    // claim of the operator is.
    mine.sort_by_cached_key(|c| crate::tenancy::claim_key(*c, holds(c)));
    let known = |value: &str| config.scopes.iter().any(|s| s.value == value);
    let mut holders: BTreeMap<&str, &MCPClient> = BTreeMap::new();
    mine.into_iter()
        .map(|client| {
            let standing = match holders.get(client.spec.client_id.as_str()) {
                Some(holder) => Standing::Refused {
                    reason: "ClientIdTaken",
                    message: format!(
                        "client id {:?} is held by MCPClient {}",
                        client.spec.client_id,
                        holder.name_any()
                    ),
                },
                None => {
                    holders.insert(client.spec.client_id.as_str(), client);
                    standing(client, inputs.client_secrets, known)
                }
            };
            Declared { client, standing }
        })
        .collect()
}

/// Whether the operator last reported `client` as registered.
fn holds(client: &MCPClient) -> bool {
    client.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// The entries of `declared` that are in the config.
pub fn registered(declared: &[Declared<'_>]) -> Vec<ClientConfig> {
    declared
        .iter()
        .filter_map(|d| match &d.standing {
            Standing::Registered(config) => Some(config.as_ref().clone()),
            Standing::Refused { .. } => None,
        })
        .collect()
}

/// The Secrets the registered clients of `declared` read their secrets from, by name, once each, with the keys
/// they read.
pub fn secret_names(declared: &[Declared<'_>]) -> BTreeMap<String, BTreeSet<String>> {
    let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for reference in declared
        .iter()
        .filter(|d| matches!(d.standing, Standing::Registered(_)))
        .filter_map(|d| d.client.spec.client_secret_ref.as_ref())
    {
        names
            .entry(reference.name.clone())
            .or_default()
            .insert(reference.key.clone());
    }
    names
}

/// The directory a Secret's volume is mounted at.
pub fn secret_dir(secret: &str) -> PathBuf {
    PathBuf::from(CLIENT_SECRETS_DIR).join(secret)
}

fn standing(
    client: &MCPClient,
    secrets: Option<&SecretLengths>,
    known_scope: impl Fn(&str) -> bool,
) -> Standing {
    let entry = client_config(client);
    if let Err(message) = mcp_authz_authserver::config::check_client(&entry, known_scope) {
        return Standing::Refused {
            reason: "Invalid",
            message,
        };
    }
    if let (Some(reference), Some(secrets)) = (&client.spec.client_secret_ref, secrets) {
        let namespace = client.namespace().unwrap_or_default();
        let refused = |reason, message| Standing::Refused { reason, message };
        let min = mcp_authz_authserver::state::MIN_CLIENT_SECRET_CHARS;
        match secrets
            .get(&(namespace.clone(), reference.name.clone()))
            .map(|keys| keys.get(&reference.key))
        {
            None => {
                return refused(
                    "SecretNotFound",
                    format!("Secret {namespace}/{} does not exist", reference.name),
                );
            }
            Some(None) => {
                return refused(
                    "SecretKeyNotFound",
                    format!(
                        "Secret {namespace}/{} has no key {}",
                        reference.name, reference.key
                    ),
                );
            }
            Some(Some(None)) => {
                return refused(
                    "SecretNotText",
                    format!(
                        "the value of key {} in Secret {namespace}/{} is not UTF-8 text",
                        reference.key, reference.name
                    ),
                );
            }
            // The length itself is not said: tenants read this status, and the Secret is the platform's.
            Some(Some(Some(n))) if *n < min => {
                return refused(
                    "SecretTooShort",
                    format!(
                        "the secret in key {} of Secret {namespace}/{} is shorter than {min} characters",
                        reference.key, reference.name
                    ),
                );
            }
            Some(Some(Some(_))) => {}
        }
    }
    Standing::Registered(Box::new(entry))
}

/// The server's entry for `client`: its secret read from the Secret's volume.
pub fn client_config(client: &MCPClient) -> ClientConfig {
    let spec = &client.spec;
    ClientConfig {
        client_id: spec.client_id.clone(),
        client_name: spec.client_name.clone(),
        redirect_uris: spec.redirect_uris.clone(),
        token_endpoint_auth_method: spec.token_endpoint_auth_method.into(),
        jwks: spec.jwks.clone(),
        client_secret_file: spec
            .client_secret_ref
            .as_ref()
            .map(|r| secret_dir(&r.name).join(&r.key)),
        grant_types: spec.grant_types.iter().map(|g| (*g).into()).collect(),
        scopes: spec.scopes.clone(),
        introspection: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::mcp_client::{ClientAuthMethod, GrantType};
    use crate::api::{MCPClientSpec, SecretKeyRef};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn server() -> AuthorizationServer {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "mcp-authz.io/v1alpha1", "kind": "AuthorizationServer",
            "metadata": {"name": "main", "namespace": "mcp-authz"},
            "spec": {"issuer": "https://auth.example.com", "login": {"staticUsers": {"name": "u", "key": "k"}}}
        }))
        .expect("server")
    }

    fn client(name: &str, age_secs: i64, edit: impl FnOnce(&mut MCPClientSpec)) -> MCPClient {
        let mut spec = MCPClientSpec {
            authorization_server: "main".into(),
            client_id: "ci-job".into(),
            client_name: "CI job".into(),
            redirect_uris: Vec::new(),
            token_endpoint_auth_method: ClientAuthMethod::ClientSecretBasic,
            jwks: None,
            client_secret_ref: Some(SecretKeyRef {
                name: "ci-job".into(),
                key: "secret".into(),
            }),
            grant_types: vec![GrantType::ClientCredentials],
            scopes: vec!["notes:read".into()],
        };
        edit(&mut spec);
        let mut c = MCPClient::new(name, spec);
        c.metadata.namespace = Some("mcp-authz".into());
        c.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 - age_secs).expect("time"),
        ));
        c
    }

    fn config_with_scopes(values: &[&str]) -> AuthServerConfig {
        let mut config = crate::render::authserver::authserver_config(&Inputs {
            server: &server(),
            services: &[],
            scopes: &[],
            policies: &[],
            namespaces: &Default::default(),
            clients: &[],
            client_secrets: None,
        })
        .expect("config");
        config.scopes = values
            .iter()
            .map(|v| mcp_authz_authserver::config::ScopeDefinition {
                value: (*v).into(),
                description: "d".into(),
                sensitive: false,
                max_lifetime_secs: None,
                implies: Vec::new(),
            })
            .collect();
        config
    }

    fn secrets(value: &[u8]) -> SecretLengths {
        [(
            ("mcp-authz".to_owned(), "ci-job".to_owned()),
            [("secret".to_owned(), secret_chars(value))].into(),
        )]
        .into()
    }

    fn standings_of(clients: &[MCPClient], secrets: Option<&SecretLengths>) -> Vec<Standing> {
        let server = server();
        let inputs = Inputs {
            server: &server,
            services: &[],
            scopes: &[],
            policies: &[],
            namespaces: &Default::default(),
            clients,
            client_secrets: secrets,
        };
        declared(&inputs, &config_with_scopes(&["notes:read"]))
            .into_iter()
            .map(|d| d.standing)
            .collect()
    }

    fn reason(standing: &Standing) -> (&'static str, String) {
        match standing {
            Standing::Registered(_) => ("Registered", String::new()),
            Standing::Refused { reason, message } => (reason, message.clone()),
        }
    }

    #[test]
    fn each_refusal_names_its_reason() {
        let good = secrets(SECRET.as_bytes());
        let cases: Vec<(&str, MCPClient, SecretLengths, &str, &str)> = vec![
            (
                "a sound declaration",
                client("a", 0, |_| {}),
                good.clone(),
                "Registered",
                "",
            ),
            (
                "no such Secret",
                client("a", 0, |_| {}),
                SecretLengths::new(),
                "SecretNotFound",
                "Secret mcp-authz/ci-job does not exist",
            ),
            (
                "no such key",
                client("a", 0, |s| {
                    s.client_secret_ref.as_mut().expect("ref").key = "other".into()
                }),
                good.clone(),
                "SecretKeyNotFound",
                "Secret mcp-authz/ci-job has no key other",
            ),
            (
                "a short secret",
                client("a", 0, |_| {}),
                secrets(b"  short secret\n"),
                "SecretTooShort",
                "the secret in key secret of Secret mcp-authz/ci-job is shorter than 32 characters",
            ),
            (
                "a binary secret",
                client("a", 0, |_| {}),
                secrets(&[0xff; 40]),
                "SecretNotText",
                "the value of key secret in Secret mcp-authz/ci-job is not UTF-8 text",
            ),
            (
                "a scope no service offers",
                client("a", 0, |s| s.scopes = vec!["admin:all".into()]),
                good.clone(),
                "Invalid",
                "client \"ci-job\": unknown scope \"admin:all\"",
            ),
            (
                "a sidecar's client id",
                client("a", 0, |s| {
                    s.client_id = "urn:mcp-authz:resource-server:https://mcp.example.com/mcp".into()
                }),
                good.clone(),
                "Invalid",
                "client id \"urn:mcp-authz:resource-server:https://mcp.example.com/mcp\" must not start with urn:mcp-authz:resource-server: (reserved for the server's own kinds of client)",
            ),
            (
                "a wildcard redirect URI",
                client("a", 0, |s| {
                    s.grant_types = vec![GrantType::AuthorizationCode];
                    s.redirect_uris = vec!["https://*.example.com/cb".into()];
                }),
                good.clone(),
                "Invalid",
                "client \"ci-job\": redirect URI \"https://*.example.com/cb\" must not contain wildcards",
            ),
        ];
        for (name, declared_client, lengths, want_reason, want_message) in cases {
            let got = standings_of(&[declared_client], Some(&lengths));
            assert_eq!(got.len(), 1, "{name}");
            assert_eq!(
                reason(&got[0]),
                (want_reason, want_message.to_owned()),
                "{name}"
            );
        }
    }

    #[test]
    fn the_oldest_declaration_holds_a_client_id() {
        let good = secrets(SECRET.as_bytes());
        let older = client("older", 60, |_| {});
        let newer = client("newer", 0, |s| s.client_name = "Impostor".into());
        let got = standings_of(&[newer, older], Some(&good));
        assert_eq!(reason(&got[0]), ("Registered", String::new()));
        assert_eq!(
            reason(&got[1]),
            (
                "ClientIdTaken",
                "client id \"ci-job\" is held by MCPClient older".into()
            )
        );
    }

    #[test]
    fn a_registered_client_keeps_its_id_against_a_declaration_of_the_same_second() {
        let good = secrets(SECRET.as_bytes());
        // Creation times have whole seconds: two declarations of one second are ordered by uid, which must not
        // move the id away from the one in use.
        let mut holder = client("holder", 0, |_| {});
        holder.metadata.uid = Some("b".into());
        holder.status = Some(crate::api::MCPClientStatus {
            observed_generation: None,
            conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "Registered".into(),
                message: String::new(),
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                observed_generation: None,
            }],
        });
        let mut twin = client("twin", 0, |_| {});
        twin.metadata.uid = Some("a".into());
        let got = standings_of(&[twin.clone(), holder.clone()], Some(&good));
        assert_eq!(reason(&got[0]), ("Registered", String::new()), "the holder");
        assert_eq!(got.len(), 2);
        assert_eq!(
            reason(&got[1]),
            (
                "ClientIdTaken",
                "client id \"ci-job\" is held by MCPClient holder".into()
            )
        );
        // Without the status, the uid decides, the same way every time.
        holder.status = None;
        let got = standings_of(&[holder, twin], Some(&good));
        assert_eq!(
            reason(&got[1]),
            (
                "ClientIdTaken",
                "client id \"ci-job\" is held by MCPClient twin".into()
            )
        );
    }

    #[test]
    fn clients_of_other_servers_or_namespaces_are_not_this_servers() {
        let other_server = client("a", 0, |s| s.authorization_server = "other".into());
        let mut tenant = client("b", 0, |_| {});
        tenant.metadata.namespace = Some("team-a".into());
        assert!(standings_of(&[other_server, tenant], None).is_empty());
    }

    #[test]
    fn the_secret_is_read_from_its_secrets_volume_and_unknown_secrets_are_trusted_to_exist() {
        let got = standings_of(&[client("a", 0, |_| {})], None);
        let Standing::Registered(entry) = &got[0] else {
            panic!("not registered: {got:?}");
        };
        assert_eq!(
            entry.client_secret_file.as_deref(),
            Some(std::path::Path::new("/etc/mcp-authz/clients/ci-job/secret"))
        );
        assert_eq!(
            entry.token_endpoint_auth_method,
            mcp_authz_authserver::config::ClientAuthMethod::ClientSecretBasic
        );
        assert_eq!(
            entry.grant_types,
            vec![mcp_authz_authserver::config::GrantType::ClientCredentials]
        );
        assert!(!entry.introspection, "a declared client never introspects");
    }
}
