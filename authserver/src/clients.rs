//! One internal view of a client, whether pre-registered or described by a Client ID Metadata Document.

use serde_json::Value;
use url::Url;

use crate::cimd::{self, ClientDocument, ClientKeys};
use crate::config::{ClientAuthMethod, ClientConfig, GrantType, is_loopback_host};
use crate::oauth_error::{ErrorCode, OAuthError};
use crate::resource_servers;
use crate::state::{AppState, Snapshot};

/// Client ids this server generates at `/register` start with this (never `https://`).
pub const DYNAMIC_CLIENT_PREFIX: &str = "dcr-";

/// Where the client's public keys are.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientKeySource {
    Jwks(Value),
    JwksUri(String),
}

/// What the server needs to know about a client.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientView {
    pub client_id: String,
    pub name: String,
    /// What the consent page shows as the client's identity: the client_id URL's host, or the registered id.
    pub id_host: String,
    pub redirect_uris: Vec<String>,
    pub auth_method: ClientAuthMethod,
    pub keys: Option<ClientKeySource>,
    pub grant_types: Vec<GrantType>,
    /// Scopes for `client_credentials` (registered clients only).
    pub client_credentials_scopes: Vec<String>,
    pub may_introspect: bool,
    /// A resource server may introspect only tokens whose audience holds its resource.
    pub introspection_audience: Option<String>,
    /// From a CIMD document: scope limits of its policies.
    pub cimd: Option<ClientDocument>,
    /// Someone vouched for this client: the platform registered it, or a policy named its document. Clients
    /// anyone can bring (a document no policy names, a dynamic registration) are not trusted with error
    /// redirects before a person has seen them.
    pub vouched: bool,
}

impl ClientView {
    pub fn registered(c: &ClientConfig) -> Self {
        let grant_types = if c.grant_types.is_empty() {
            vec![GrantType::AuthorizationCode, GrantType::RefreshToken]
        } else {
            c.grant_types.clone()
        };
        ClientView {
            client_id: c.client_id.clone(),
            name: c.client_name.clone(),
            id_host: c.client_id.clone(),
            redirect_uris: c.redirect_uris.clone(),
            auth_method: c.token_endpoint_auth_method,
            keys: c.jwks.clone().map(ClientKeySource::Jwks),
            grant_types,
            client_credentials_scopes: c.scopes.clone(),
            may_introspect: c.introspection,
            introspection_audience: None,
            cimd: None,
            vouched: true,
        }
    }

    fn from_document(d: ClientDocument) -> Self {
        let grant_types = d
            .grant_types
            .iter()
            .filter_map(|g| GrantType::from_wire(g))
            .collect();
        ClientView {
            client_id: d.client_id.clone(),
            name: d.client_name.clone(),
            id_host: d.client_id_host.clone(),
            redirect_uris: d.redirect_uris.clone(),
            auth_method: match d.auth_method {
                cimd::AuthMethod::None => ClientAuthMethod::None,
                cimd::AuthMethod::PrivateKeyJwt => ClientAuthMethod::PrivateKeyJwt,
            },
            keys: d.keys.clone().map(|k| match k {
                ClientKeys::Jwks(v) => ClientKeySource::Jwks(v),
                ClientKeys::JwksUri(u) => ClientKeySource::JwksUri(u),
            }),
            grant_types,
            client_credentials_scopes: Vec::new(),
            may_introspect: false,
            introspection_audience: None,
            vouched: d.vouched,
            cimd: Some(d),
        }
    }

    /// The CIMD document's fingerprint (redirect URIs and keys), empty for registered clients: consents are
    /// remembered per fingerprint, so a changed document asks again.
    pub fn fingerprint(&self) -> &str {
        self.cimd.as_ref().map_or("", |d| d.fingerprint.as_str())
    }

    pub fn allows(&self, grant: GrantType) -> bool {
        self.grant_types.contains(&grant)
    }

    /// Whether an error of an authorization request may be sent to `redirect_uri` (RFC 9700 §4.11.2): for a
    /// client someone vouched for, or to a loopback address (it stays on the person's own machine). Otherwise the
    /// error is shown as a page, or the server would redirect to any URI an anonymous document lists.
    pub fn may_receive_error_redirects(&self, redirect_uri: &str) -> bool {
        self.vouched
            || Url::parse(redirect_uri).is_ok_and(|u| u.scheme() == "http" && is_loopback_host(&u))
    }

    /// Every redirect URI is loopback: anyone can run a client with this id on their own machine.
    pub fn all_redirects_loopback(&self) -> bool {
        !self.redirect_uris.is_empty()
            && self
                .redirect_uris
                .iter()
                .all(|u| Url::parse(u).is_ok_and(|u| u.scheme() == "http" && is_loopback_host(&u)))
    }

    /// Exact string match, except that an `http` loopback redirect may use any port (RFC 8252 §7.3).
    pub fn redirect_uri_matches(&self, requested: &str) -> bool {
        if self.redirect_uris.iter().any(|r| r == requested) {
            return true;
        }
        let Ok(req) = Url::parse(requested) else {
            return false;
        };
        if req.scheme() != "http" || !is_loopback_host(&req) || req.fragment().is_some() {
            return false;
        }
        self.redirect_uris
            .iter()
            .filter_map(|r| Url::parse(r).ok())
            .any(|reg| {
                reg.scheme() == "http"
                    && reg.host() == req.host()
                    && reg.path() == req.path()
                    && reg.query() == req.query()
                    && reg.username() == req.username()
                    && reg.password() == req.password()
            })
    }

    /// Checks the requested scopes against the CIMD policies' limits, if any.
    pub fn check_scope_limits(&self, scopes: &[String]) -> Result<(), OAuthError> {
        if let Some(doc) = &self.cimd {
            doc.scope_limit
                .check(scopes.iter().map(String::as_str))
                .map_err(cimd_error)?;
        }
        Ok(())
    }
}

/// Turns a CIMD refusal into the OAuth error it names.
pub fn cimd_error(e: cimd::CimdError) -> OAuthError {
    OAuthError::new(ErrorCode::from_code(e.oauth_error()), e.description())
}

/// Finds a client: registered ids first, then `https://` ids through the CIMD resolver under the policy of
/// `resource` (when the resource names one).
pub async fn lookup(
    snapshot: &Snapshot,
    state: &AppState,
    client_id: &str,
    resource: Option<&str>,
) -> Result<ClientView, OAuthError> {
    if let Some(c) = snapshot
        .config
        .clients
        .iter()
        .find(|c| c.client_id == client_id)
    {
        return Ok(ClientView::registered(c));
    }
    if let Some(resource) = resource_servers::resource_of(client_id) {
        return resource_server(snapshot, state, client_id, resource);
    }
    if client_id.starts_with(DYNAMIC_CLIENT_PREFIX)
        && snapshot.config.dynamic_client_registration.enabled
        && let Some(json) = state.store.dynamic_client(client_id).await?
    {
        // A team's policy judges documents; a registration carries none of what it checks (who publishes the
        // client, which redirect kinds), so a resource with its own policy admits no registered-on-the-fly client.
        if let Some(policy) = resource
            .and_then(|r| snapshot.config.resource(r))
            .and_then(|r| r.cimd_policy.as_deref())
        {
            return Err(OAuthError::invalid_client(format!(
                "clients registered at /register are not admitted for this resource: its policy {:?} admits clients by metadata document only",
                shorten(policy)
            )));
        }
        let c: ClientConfig = serde_json::from_str(&json)
            .map_err(|e| OAuthError::from(crate::store::StoreError::Corrupt(e.to_string())))?;
        return Ok(ClientView {
            vouched: false,
            ..ClientView::registered(&c)
        });
    }
    if client_id.starts_with("https://") || client_id.starts_with("http://") {
        let Some(resolver) = &snapshot.cimd else {
            return Err(OAuthError::invalid_client(
                "client metadata documents are not accepted by this server",
            ));
        };
        let policy = resource
            .and_then(|r| snapshot.config.resource(r))
            .and_then(|r| r.cimd_policy.as_deref());
        let resolved = resolver.resolve(client_id, policy).await;
        let outcome = match &resolved {
            Ok(_) => "admitted",
            Err(e) => e.metric_label(),
        };
        state
            .metrics
            .cimd_resolutions
            .with_label_values(&[outcome])
            .inc();
        return Ok(ClientView::from_document(resolved.map_err(cimd_error)?));
    }
    Err(OAuthError::invalid_client(format!(
        "unknown client_id {:?}",
        shorten(client_id)
    )))
}

/// The resource server of a configured resource: private_key_jwt with the key derived for that resource, no grant
/// of its own, introspection of its own resource's tokens only.
fn resource_server(
    snapshot: &Snapshot,
    state: &AppState,
    client_id: &str,
    resource: &str,
) -> Result<ClientView, OAuthError> {
    let root = state.resource_server_root().ok_or_else(|| {
        OAuthError::invalid_client("this server accepts no resource-server credentials")
    })?;
    let Some(configured) = snapshot.config.resource(resource) else {
        return Err(OAuthError::invalid_client(format!(
            "{:?} is not a resource of this server",
            shorten(resource)
        )));
    };
    Ok(ClientView {
        client_id: client_id.to_owned(),
        name: format!("resource server of {resource}"),
        id_host: client_id.to_owned(),
        redirect_uris: Vec::new(),
        auth_method: ClientAuthMethod::PrivateKeyJwt,
        keys: Some(ClientKeySource::Jwks(
            root.public_jwks_for(resource, &configured.holder),
        )),
        grant_types: Vec::new(),
        client_credentials_scopes: Vec::new(),
        may_introspect: true,
        introspection_audience: Some(resource.to_owned()),
        cimd: None,
        vouched: true,
    })
}

/// Keeps echoed input short in messages.
pub fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(100).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(uris: &[&str]) -> ClientView {
        ClientView::registered(&ClientConfig {
            client_id: "c".into(),
            client_name: "C".into(),
            redirect_uris: uris.iter().map(|s| s.to_string()).collect(),
            token_endpoint_auth_method: ClientAuthMethod::None,
            jwks: None,
            client_secret_file: None,
            grant_types: vec![],
            scopes: vec![],
            introspection: false,
        })
    }

    #[test]
    fn redirect_matching_is_exact_except_the_loopback_port() {
        let v = view(&["http://127.0.0.1/cb", "https://app.example/cb"]);
        for (uri, ok) in [
            ("http://127.0.0.1/cb", true),
            ("http://127.0.0.1:53121/cb", true),
            ("http://127.0.0.1:53121/cb2", false),
            ("http://127.0.0.1:53121/cb?x=1", false),
            ("http://localhost:53121/cb", false),
            ("https://app.example/cb", true),
            ("https://app.example:8443/cb", false),
            ("https://app.example/cb/", false),
            ("https://APP.example/cb", false),
            ("https://app.example/cb#f", false),
        ] {
            assert_eq!(v.redirect_uri_matches(uri), ok, "{uri}");
        }
        assert!(!v.all_redirects_loopback());
        assert!(view(&["http://127.0.0.1/cb", "http://[::1]/cb"]).all_redirects_loopback());
        assert!(!view(&[]).all_redirects_loopback());
        assert_eq!(
            v.grant_types,
            vec![GrantType::AuthorizationCode, GrantType::RefreshToken]
        );
    }
}
