//! Parsing a fetched metadata document and the checks every document must pass, whatever the
//! policy (draft-ietf-oauth-client-id-metadata-document §4, MCP authorization). Pure.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use url::{Host, Url};

use super::address::AddressPolicy;
use super::config::AuthMethod;
use super::error::{CimdError, DocumentRule, RedirectProblem};
use super::url_check::{UrlAllowances, check_url};

/// Longest `client_name` shown on a consent page.
pub const MAX_CLIENT_NAME: usize = 200;

/// JWK members that only a private or symmetric key has.
const PRIVATE_JWK_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Redirect URI schemes that can never carry an authorization response safely.
const FORBIDDEN_SCHEMES: &[&str] = &[
    "javascript",
    "data",
    "vbscript",
    "file",
    "blob",
    "about",
    "ftp",
    "ws",
    "wss",
    "filesystem",
    "view-source",
];

/// How the client proves itself at the token endpoint, with its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientKeys {
    /// Keys embedded in the document (a JWK Set, public keys only).
    Jwks(Value),
    /// Keys published at a URL, fetched under the same rules as the document.
    JwksUri(String),
}

/// What kind of place a redirect URI sends the code to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedirectKind {
    /// `http(s)://127.0.0.1`, `[::1]` or `localhost`: a native app on the user's machine.
    Loopback,
    /// An https URL on a named host.
    Https { host: String },
    /// A private-use scheme of a native app (`com.example.app:/cb`).
    PrivateUse,
}

/// One checked redirect URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectUri {
    pub uri: String,
    pub kind: RedirectKind,
}

/// A document that passed every policy-independent rule; this is what the cache keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedDocument {
    pub client_id: String,
    pub client_id_host: String,
    pub client_name: String,
    pub redirect_uris: Vec<RedirectUri>,
    /// Methods the client is able to use, in its own order of preference.
    pub auth_candidates: Vec<AuthMethod>,
    /// Whether the document named one method (`token_endpoint_auth_method`) rather than choices.
    pub auth_method_explicit: bool,
    pub keys: Option<ClientKeys>,
    pub grant_types: Vec<String>,
    pub scope: Option<BTreeSet<String>>,
    pub logo_uri: Option<String>,
    pub client_uri: Option<String>,
    pub tos_uri: Option<String>,
    pub policy_uri: Option<String>,
    /// Names of every top-level property present (for a policy's `requiredProperties`).
    pub properties: BTreeSet<String>,
    /// SHA-256 over the redirect URIs and keys: changes exactly when what was granted must go.
    pub fingerprint: String,
}

/// Parse `body` as fetched from `url` and apply the policy-independent rules.
/// `allow_http` is the development switch (a `jwks_uri` may then be http too); `addresses` judges
/// an IP-literal `jwks_uri` now rather than when it is first fetched.
pub fn check_document(
    url: &str,
    body: &[u8],
    allow_http: bool,
    addresses: &AddressPolicy,
) -> Result<CheckedDocument, CimdError> {
    let object: UniqueKeyObject =
        serde_json::from_slice(body).map_err(|e| CimdError::InvalidJson {
            url: url.to_owned(),
            detail: e.to_string(),
        })?;
    let doc = match object {
        UniqueKeyObject::NotAnObject => return Err(doc_err(DocumentRule::NotAnObject)),
        UniqueKeyObject::Duplicate(name) => {
            return Err(doc_err(DocumentRule::DuplicateProperty(name)));
        }
        UniqueKeyObject::Object(map) => map,
    };

    let client_id = required_str(&doc, "client_id")?;
    if client_id != url {
        return Err(doc_err(DocumentRule::ClientIdMismatch {
            found: client_id.to_owned(),
        }));
    }
    let client_id_host = Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();

    let client_name = required_str(&doc, "client_name")?.trim();
    if client_name.is_empty() || client_name.chars().count() > MAX_CLIENT_NAME {
        return Err(doc_err(DocumentRule::ClientNameLength(MAX_CLIENT_NAME)));
    }

    if doc.contains_key("client_secret") {
        return Err(doc_err(DocumentRule::ClientSecret));
    }

    let redirect_uris = redirect_uris(&doc)?;
    let keys = keys(&doc, allow_http, addresses)?;
    let (auth_candidates, auth_method_explicit) = auth_candidates(&doc, keys.is_some())?;

    let grant_types = optional_str_array(&doc, "grant_types")?
        .unwrap_or_else(|| vec!["authorization_code".to_owned()]);
    if let Some(response_types) = optional_str_array(&doc, "response_types")?
        && (response_types.is_empty() || response_types.iter().any(|r| r != "code"))
    {
        return Err(doc_err(DocumentRule::ResponseTypes(response_types)));
    }
    let scope = optional_str(&doc, "scope")?
        .map(|s| s.split_ascii_whitespace().map(str::to_owned).collect());

    let fingerprint = fingerprint(&redirect_uris, keys.as_ref(), &auth_candidates);
    Ok(CheckedDocument {
        client_id: client_id.to_owned(),
        client_id_host,
        client_name: client_name.to_owned(),
        redirect_uris,
        auth_candidates,
        auth_method_explicit,
        keys,
        grant_types,
        scope,
        logo_uri: display_uri(&doc, "logo_uri")?,
        client_uri: display_uri(&doc, "client_uri")?,
        tos_uri: display_uri(&doc, "tos_uri")?,
        policy_uri: display_uri(&doc, "policy_uri")?,
        properties: doc.keys().cloned().collect(),
        fingerprint,
    })
}

fn doc_err(rule: DocumentRule) -> CimdError {
    CimdError::Document(rule)
}

fn required_str<'a>(
    doc: &'a Map<String, Value>,
    property: &'static str,
) -> Result<&'a str, CimdError> {
    match doc.get(property) {
        None | Some(Value::Null) => Err(doc_err(DocumentRule::Missing(property))),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(doc_err(DocumentRule::WrongType {
            property,
            expected: "a string",
        })),
    }
}

fn optional_str<'a>(
    doc: &'a Map<String, Value>,
    property: &'static str,
) -> Result<Option<&'a str>, CimdError> {
    match doc.get(property) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(doc_err(DocumentRule::WrongType {
            property,
            expected: "a string",
        })),
    }
}

fn optional_str_array(
    doc: &Map<String, Value>,
    property: &'static str,
) -> Result<Option<Vec<String>>, CimdError> {
    let wrong = || {
        doc_err(DocumentRule::WrongType {
            property,
            expected: "an array of strings",
        })
    };
    match doc.get(property) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(wrong))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(wrong()),
    }
}

fn redirect_uris(doc: &Map<String, Value>) -> Result<Vec<RedirectUri>, CimdError> {
    let uris = optional_str_array(doc, "redirect_uris")?
        .ok_or(doc_err(DocumentRule::Missing("redirect_uris")))?;
    if uris.is_empty() {
        return Err(doc_err(DocumentRule::NoRedirectUris));
    }
    uris.into_iter()
        .map(|uri| match classify_redirect(&uri) {
            Ok(kind) => Ok(RedirectUri { uri, kind }),
            Err(problem) => Err(doc_err(DocumentRule::RedirectUri { uri, problem })),
        })
        .collect()
}

/// The fixed rules for one redirect URI (RFC 9700 §2.1, OAuth 2.1 §2.3.1, RFC 8252 §7).
pub fn classify_redirect(uri: &str) -> Result<RedirectKind, RedirectProblem> {
    if uri.contains('*') {
        return Err(RedirectProblem::Wildcard);
    }
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(RedirectProblem::NotAUri);
    }
    let url = Url::parse(uri).map_err(|_| RedirectProblem::NotAUri)?;
    if url.fragment().is_some() {
        return Err(RedirectProblem::Fragment);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(RedirectProblem::Userinfo);
    }
    let scheme = url.scheme();
    if FORBIDDEN_SCHEMES.contains(&scheme) {
        return Err(RedirectProblem::ForbiddenScheme(scheme.to_owned()));
    }
    match scheme {
        "http" | "https" => {
            if is_loopback_host(url.host()) {
                Ok(RedirectKind::Loopback)
            } else if scheme == "http" {
                Err(RedirectProblem::HttpNotLoopback)
            } else {
                Ok(RedirectKind::Https {
                    host: url.host_str().unwrap_or_default().to_owned(),
                })
            }
        }
        // RFC 8252 §7.1: private-use schemes are reverse domain names.
        s if s.contains('.') => Ok(RedirectKind::PrivateUse),
        s => Err(RedirectProblem::ForbiddenScheme(s.to_owned())),
    }
}

/// Loopback as RFC 8252 means it: the IP literals, and `localhost` that desktop clients use.
pub fn is_loopback_host(host: Option<Host<&str>>) -> bool {
    match host {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn keys(
    doc: &Map<String, Value>,
    allow_http: bool,
    addresses: &AddressPolicy,
) -> Result<Option<ClientKeys>, CimdError> {
    let jwks = doc.get("jwks").filter(|v| !v.is_null());
    let jwks_uri = optional_str(doc, "jwks_uri")?;
    match (jwks, jwks_uri) {
        (Some(_), Some(_)) => Err(doc_err(DocumentRule::BothJwksAndJwksUri)),
        (Some(jwks), None) => {
            let keys = jwks
                .get("keys")
                .and_then(Value::as_array)
                .filter(|k| !k.is_empty())
                .ok_or(doc_err(DocumentRule::InvalidJwks))?;
            for key in keys {
                let key = key.as_object().ok_or(doc_err(DocumentRule::InvalidJwks))?;
                if let Some(member) = private_member(key) {
                    return Err(doc_err(DocumentRule::PrivateKeyInJwks(member.to_owned())));
                }
            }
            Ok(Some(ClientKeys::Jwks(jwks.clone())))
        }
        (None, Some(uri)) => {
            let allow = UrlAllowances {
                query: true,
                http: allow_http,
            };
            check_url(uri, "jwks_uri", allow, addresses)?;
            Ok(Some(ClientKeys::JwksUri(uri.to_owned())))
        }
        (None, None) => Ok(None),
    }
}

/// The first member of a JWK that only a private or symmetric key carries.
pub fn private_member(key: &Map<String, Value>) -> Option<&'static str> {
    PRIVATE_JWK_MEMBERS
        .iter()
        .copied()
        .find(|m| key.contains_key(*m))
}

fn parse_method(name: &str) -> Result<AuthMethod, DocumentRule> {
    match name {
        "none" => Ok(AuthMethod::None),
        "private_key_jwt" => Ok(AuthMethod::PrivateKeyJwt),
        "client_secret_basic" | "client_secret_post" | "client_secret_jwt" => {
            Err(DocumentRule::SharedSecretAuthMethod(name.to_owned()))
        }
        other => Err(DocumentRule::UnsupportedAuthMethod(other.to_owned())),
    }
}

/// The explicit `token_endpoint_auth_method`, or else the OIDC "choices" form
/// `token_endpoint_auth_methods_supported` (which one widely used client publishes instead),
/// or else `none`: RFC 7591's default (`client_secret_basic`) cannot apply to a document.
fn auth_candidates(
    doc: &Map<String, Value>,
    has_keys: bool,
) -> Result<(Vec<AuthMethod>, bool), CimdError> {
    if let Some(method) = optional_str(doc, "token_endpoint_auth_method")? {
        let method = parse_method(method).map_err(doc_err)?;
        if method == AuthMethod::PrivateKeyJwt && !has_keys {
            return Err(doc_err(DocumentRule::KeysMissing));
        }
        return Ok((vec![method], true));
    }
    if let Some(choices) = optional_str_array(doc, "token_endpoint_auth_methods_supported")? {
        let usable: Vec<AuthMethod> = choices
            .iter()
            .filter_map(|c| parse_method(c).ok())
            .collect();
        if usable.is_empty() {
            return Err(doc_err(DocumentRule::NoUsableAuthMethod(choices)));
        }
        let with_keys: Vec<AuthMethod> = usable
            .iter()
            .copied()
            .filter(|m| *m != AuthMethod::PrivateKeyJwt || has_keys)
            .collect();
        if with_keys.is_empty() {
            return Err(doc_err(DocumentRule::KeysMissing));
        }
        return Ok((with_keys, false));
    }
    Ok((vec![AuthMethod::None], false))
}

/// URIs shown to a person (logo, home page, terms): https only, never fetched by the server.
fn display_uri(
    doc: &Map<String, Value>,
    property: &'static str,
) -> Result<Option<String>, CimdError> {
    let Some(uri) = optional_str(doc, property)? else {
        return Ok(None);
    };
    let ok = Url::parse(uri).is_ok_and(|u| {
        u.scheme() == "https" && u.username().is_empty() && u.password().is_none() && u.has_host()
    });
    if ok {
        Ok(Some(uri.to_owned()))
    } else {
        Err(doc_err(DocumentRule::UnsafeUri {
            property,
            uri: uri.chars().take(200).collect(),
        }))
    }
}

/// SHA-256 over what a grant to this document depends on: its redirect URIs, its keys and the token endpoint
/// methods it offers (a document that drops `private_key_jwt` must not keep the grants made to a confidential
/// client).
fn fingerprint(
    redirects: &[RedirectUri],
    keys: Option<&ClientKeys>,
    auth_candidates: &[AuthMethod],
) -> String {
    let mut uris: Vec<&str> = redirects.iter().map(|r| r.uri.as_str()).collect();
    uris.sort_unstable();
    uris.dedup();
    let mut text = String::new();
    for uri in uris {
        text.push_str("redirect_uri ");
        text.push_str(&serde_json::Value::String(uri.to_owned()).to_string());
        text.push('\n');
    }
    match keys {
        Some(ClientKeys::Jwks(jwks)) => {
            text.push_str("jwks ");
            canonical_json(jwks, &mut text);
        }
        Some(ClientKeys::JwksUri(uri)) => {
            text.push_str("jwks_uri ");
            text.push_str(&serde_json::Value::String(uri.clone()).to_string());
        }
        None => {}
    }
    for method in auth_candidates {
        text.push_str("\nauth_method ");
        text.push_str(method.as_str());
    }
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// JSON with object keys sorted, so reordering a document does not look like a change.
fn canonical_json(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical_json(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// A top-level JSON value that remembers a repeated property name: parsers disagree on which
/// copy wins, so a document that repeats `client_id` or `redirect_uris` is refused outright.
enum UniqueKeyObject {
    Object(Map<String, Value>),
    Duplicate(String),
    NotAnObject,
}

impl<'de> Deserialize<'de> for UniqueKeyObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeyVisitor)
    }
}

struct UniqueKeyVisitor;

impl<'de> Visitor<'de> for UniqueKeyVisitor {
    type Value = UniqueKeyObject;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut map = Map::new();
        let mut duplicate = None;
        while let Some(key) = access.next_key::<String>()? {
            let value: Value = access.next_value()?;
            if map.contains_key(&key) && duplicate.is_none() {
                duplicate = Some(key.clone());
            }
            map.insert(key, value);
        }
        Ok(match duplicate {
            Some(name) => UniqueKeyObject::Duplicate(name),
            None => UniqueKeyObject::Object(map),
        })
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut access: A,
    ) -> Result<Self::Value, A::Error> {
        while access.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(UniqueKeyObject::NotAnObject)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(UniqueKeyObject::NotAnObject)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(UniqueKeyObject::NotAnObject)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(UniqueKeyObject::NotAnObject)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(UniqueKeyObject::NotAnObject)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(UniqueKeyObject::NotAnObject)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(UniqueKeyObject::NotAnObject)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const URL: &str = "https://app.example.com/client.json";

    fn base() -> Value {
        json!({
            "client_id": URL,
            "client_name": "Example Agent",
            "redirect_uris": ["https://app.example.com/callback", "http://127.0.0.1/cb"],
            "token_endpoint_auth_method": "none",
        })
    }

    fn check(doc: &Value) -> Result<CheckedDocument, CimdError> {
        check_document(
            URL,
            doc.to_string().as_bytes(),
            false,
            &AddressPolicy::default(),
        )
    }

    fn with(edit: impl FnOnce(&mut Map<String, Value>)) -> Value {
        let mut doc = base();
        edit(doc.as_object_mut().expect("object"));
        doc
    }

    fn rule(doc: &Value) -> DocumentRule {
        match check(doc) {
            Err(CimdError::Document(rule)) => rule,
            other => panic!("expected a document refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_minimal_public_client_passes() {
        let doc = check(&base()).expect("valid");
        assert_eq!(doc.client_id, URL);
        assert_eq!(doc.client_id_host, "app.example.com");
        assert_eq!(doc.auth_candidates, vec![AuthMethod::None]);
        assert!(doc.auth_method_explicit);
        assert_eq!(doc.grant_types, vec!["authorization_code"]);
        assert_eq!(doc.redirect_uris[1].kind, RedirectKind::Loopback);
        assert_eq!(doc.fingerprint.len(), 64);
    }

    #[test]
    fn each_document_rule_refuses_its_case() {
        let rsa_public = json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"});
        let table: Vec<(Value, DocumentRule)> = vec![
            (json!([1, 2]), DocumentRule::NotAnObject),
            (json!("text"), DocumentRule::NotAnObject),
            (
                with(|d| {
                    d.insert("client_id".into(), json!(format!("{URL}/")));
                }),
                DocumentRule::ClientIdMismatch {
                    found: format!("{URL}/"),
                },
            ),
            (
                with(|d| {
                    d.insert(
                        "client_id".into(),
                        json!("https://APP.example.com/client.json"),
                    );
                }),
                DocumentRule::ClientIdMismatch {
                    found: "https://APP.example.com/client.json".into(),
                },
            ),
            (
                with(|d| {
                    d.remove("client_id");
                }),
                DocumentRule::Missing("client_id"),
            ),
            (
                with(|d| {
                    d.insert("client_id".into(), json!(7));
                }),
                DocumentRule::WrongType {
                    property: "client_id",
                    expected: "a string",
                },
            ),
            (
                with(|d| {
                    d.remove("client_name");
                }),
                DocumentRule::Missing("client_name"),
            ),
            (
                with(|d| {
                    d.insert("client_name".into(), json!("   "));
                }),
                DocumentRule::ClientNameLength(MAX_CLIENT_NAME),
            ),
            (
                with(|d| {
                    d.insert("client_name".into(), json!("x".repeat(MAX_CLIENT_NAME + 1)));
                }),
                DocumentRule::ClientNameLength(MAX_CLIENT_NAME),
            ),
            (
                with(|d| {
                    d.insert("client_secret".into(), json!("s3cret"));
                }),
                DocumentRule::ClientSecret,
            ),
            (
                with(|d| {
                    d.insert(
                        "token_endpoint_auth_method".into(),
                        json!("client_secret_post"),
                    );
                }),
                DocumentRule::SharedSecretAuthMethod("client_secret_post".into()),
            ),
            (
                with(|d| {
                    d.insert(
                        "token_endpoint_auth_method".into(),
                        json!("tls_client_auth"),
                    );
                }),
                DocumentRule::UnsupportedAuthMethod("tls_client_auth".into()),
            ),
            (
                with(|d| {
                    d.remove("token_endpoint_auth_method");
                    d.insert(
                        "token_endpoint_auth_methods_supported".into(),
                        json!(["client_secret_basic"]),
                    );
                }),
                DocumentRule::NoUsableAuthMethod(vec!["client_secret_basic".into()]),
            ),
            (
                with(|d| {
                    d.insert(
                        "token_endpoint_auth_method".into(),
                        json!("private_key_jwt"),
                    );
                }),
                DocumentRule::KeysMissing,
            ),
            (
                with(|d| {
                    d.insert("jwks".into(), json!({"keys": [rsa_public.clone()]}));
                    d.insert("jwks_uri".into(), json!("https://app.example.com/jwks"));
                }),
                DocumentRule::BothJwksAndJwksUri,
            ),
            (
                with(|d| {
                    d.insert("jwks".into(), json!({"keys": []}));
                }),
                DocumentRule::InvalidJwks,
            ),
            (
                with(|d| {
                    d.insert(
                        "jwks".into(),
                        json!({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB", "d": "AQAB"}]}),
                    );
                }),
                DocumentRule::PrivateKeyInJwks("d".into()),
            ),
            (
                with(|d| {
                    d.insert(
                        "jwks".into(),
                        json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}),
                    );
                }),
                DocumentRule::PrivateKeyInJwks("k".into()),
            ),
            (
                with(|d| {
                    d.insert("redirect_uris".into(), json!([]));
                }),
                DocumentRule::NoRedirectUris,
            ),
            (
                with(|d| {
                    d.remove("redirect_uris");
                }),
                DocumentRule::Missing("redirect_uris"),
            ),
            (
                with(|d| {
                    d.insert("redirect_uris".into(), json!("https://app.example.com/cb"));
                }),
                DocumentRule::WrongType {
                    property: "redirect_uris",
                    expected: "an array of strings",
                },
            ),
            (
                with(|d| {
                    d.insert("logo_uri".into(), json!("javascript:alert(1)"));
                }),
                DocumentRule::UnsafeUri {
                    property: "logo_uri",
                    uri: "javascript:alert(1)".into(),
                },
            ),
            (
                with(|d| {
                    d.insert("client_uri".into(), json!("http://app.example.com/"));
                }),
                DocumentRule::UnsafeUri {
                    property: "client_uri",
                    uri: "http://app.example.com/".into(),
                },
            ),
            (
                with(|d| {
                    d.insert("response_types".into(), json!(["code", "token"]));
                }),
                DocumentRule::ResponseTypes(vec!["code".into(), "token".into()]),
            ),
        ];
        for (doc, want) in table {
            assert_eq!(rule(&doc), want, "{doc}");
        }
    }

    #[test]
    fn redirect_uri_table() {
        let table: &[(&str, Result<RedirectKind, RedirectProblem>)] = &[
            (
                "https://app.example.com/cb",
                Ok(RedirectKind::Https {
                    host: "app.example.com".into(),
                }),
            ),
            ("http://127.0.0.1/cb", Ok(RedirectKind::Loopback)),
            ("http://127.0.0.1:8765/cb", Ok(RedirectKind::Loopback)),
            ("http://[::1]/cb", Ok(RedirectKind::Loopback)),
            ("http://localhost:3000/cb", Ok(RedirectKind::Loopback)),
            ("com.example.app:/oauth", Ok(RedirectKind::PrivateUse)),
            ("https://*.example.com/cb", Err(RedirectProblem::Wildcard)),
            ("https://app.example.com/*", Err(RedirectProblem::Wildcard)),
            (
                "https://app.example.com/cb#x",
                Err(RedirectProblem::Fragment),
            ),
            (
                "https://u:p@app.example.com/cb",
                Err(RedirectProblem::Userinfo),
            ),
            (
                "javascript:alert(document.cookie)",
                Err(RedirectProblem::ForbiddenScheme("javascript".into())),
            ),
            (
                "data:text/html,<script>1</script>",
                Err(RedirectProblem::ForbiddenScheme("data".into())),
            ),
            (
                "JavaScript:alert(1)",
                Err(RedirectProblem::ForbiddenScheme("javascript".into())),
            ),
            (
                "file:///etc/passwd",
                Err(RedirectProblem::ForbiddenScheme("file".into())),
            ),
            (
                "myapp:/cb",
                Err(RedirectProblem::ForbiddenScheme("myapp".into())),
            ),
            (
                "http://app.example.com/cb",
                Err(RedirectProblem::HttpNotLoopback),
            ),
            (
                "http://127.0.0.1.nip.io/cb",
                Err(RedirectProblem::HttpNotLoopback),
            ),
            ("/relative/cb", Err(RedirectProblem::NotAUri)),
            ("https://app.example.com/c b", Err(RedirectProblem::NotAUri)),
        ];
        for (uri, want) in table {
            assert_eq!(&classify_redirect(uri), want, "{uri}");
        }
    }

    #[test]
    fn choices_form_is_tolerated_and_keeps_the_clients_order() {
        let doc = with(|d| {
            d.remove("token_endpoint_auth_method");
            d.insert(
                "token_endpoint_auth_methods_supported".into(),
                json!(["client_secret_basic", "private_key_jwt", "none"]),
            );
        });
        // No keys: private_key_jwt is not usable, none is.
        assert_eq!(
            check(&doc).expect("valid").auth_candidates,
            vec![AuthMethod::None]
        );
        let doc = with(|d| {
            d.remove("token_endpoint_auth_method");
            d.insert(
                "token_endpoint_auth_methods_supported".into(),
                json!(["private_key_jwt", "none"]),
            );
            d.insert("jwks_uri".into(), json!("https://app.example.com/jwks"));
        });
        let checked = check(&doc).expect("valid");
        assert_eq!(
            checked.auth_candidates,
            vec![AuthMethod::PrivateKeyJwt, AuthMethod::None]
        );
        assert!(!checked.auth_method_explicit);
    }

    #[test]
    fn duplicate_properties_are_refused() {
        let body = format!(
            r#"{{"client_id":"{URL}","client_id":"https://evil.example/x","client_name":"a","redirect_uris":["https://a.example/cb"]}}"#
        );
        assert_eq!(
            check_document(URL, body.as_bytes(), false, &AddressPolicy::default()),
            Err(CimdError::Document(DocumentRule::DuplicateProperty(
                "client_id".into()
            )))
        );
    }

    #[test]
    fn jwks_uri_follows_the_url_rules() {
        let doc = with(|d| {
            d.insert("jwks_uri".into(), json!("https://10.0.0.8/jwks"));
        });
        assert!(
            matches!(
                check(&doc),
                Err(CimdError::ForbiddenAddress {
                    reason: "a private address",
                    ..
                })
            ),
            "{:?}",
            check(&doc)
        );
        let doc = with(|d| {
            d.insert("jwks_uri".into(), json!("http://app.example.com/jwks"));
        });
        assert_eq!(
            check(&doc),
            Err(CimdError::UrlRefused {
                which: "jwks_uri",
                rule: crate::cimd::UrlRule::NotHttps
            })
        );
    }

    #[test]
    fn fingerprint_follows_redirects_and_keys_only() {
        let fp = |doc: &Value| check(doc).expect("valid").fingerprint;
        let original = fp(&base());
        let renamed = with(|d| {
            d.insert("client_name".into(), json!("Renamed"));
        });
        assert_eq!(fp(&renamed), original, "a new name grants nothing new");
        let reordered = with(|d| {
            d.insert(
                "redirect_uris".into(),
                json!(["http://127.0.0.1/cb", "https://app.example.com/callback"]),
            );
        });
        assert_eq!(fp(&reordered), original, "order carries no meaning");
        let new_redirect = with(|d| {
            d.insert(
                "redirect_uris".into(),
                json!(["https://app.example.com/other"]),
            );
        });
        assert_ne!(fp(&new_redirect), original);
        let keyed = |kid: &str| {
            with(|d| {
                d.insert("jwks".into(), json!({"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "kid": kid}]}));
            })
        };
        assert_ne!(fp(&keyed("a")), fp(&keyed("b")));
        assert_ne!(fp(&keyed("a")), original);
        // The same keys, but the document stops offering private_key_jwt: a confidential client's grants go.
        let offering = |methods: Value| {
            let mut doc = keyed("a");
            let d = doc.as_object_mut().expect("object");
            d.remove("token_endpoint_auth_method");
            d.insert("token_endpoint_auth_methods_supported".into(), methods);
            doc
        };
        let both = fp(&offering(json!(["private_key_jwt", "none"])));
        assert_ne!(both, fp(&offering(json!(["none"]))));
        assert_ne!(both, fp(&offering(json!(["none", "private_key_jwt"]))));
        assert_eq!(both, fp(&offering(json!(["private_key_jwt", "none"]))));
    }

    #[test]
    fn hostile_bytes_never_panic() {
        for body in [
            &b""[..],
            b"{",
            b"\xff\xfe",
            b"null",
            b"{\"client_id\":null}",
            b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]",
        ] {
            assert!(check_document(URL, body, false, &AddressPolicy::default()).is_err());
        }
        let deep = "[".repeat(100_000);
        assert!(check_document(URL, deep.as_bytes(), false, &AddressPolicy::default()).is_err());
    }
}
