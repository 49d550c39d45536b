//! RFC 9728 protected-resource metadata, and where it is served.

use bytes::Bytes;
use serde_json::json;

use crate::config::SidecarConfig;

const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// The metadata document and its URLs, derived once per config.
#[derive(Debug, Clone)]
pub struct ResourceMetadata {
    /// The JSON document.
    pub document: Bytes,
    /// The public URL of the document (path-inserted form, RFC 9728 §3.1), for challenges.
    pub url: String,
    /// Request paths the sidecar answers with the document.
    pub paths: Vec<String>,
}

impl ResourceMetadata {
    /// Builds the document from a validated config.
    pub fn from_config(config: &SidecarConfig) -> Self {
        let document = json!({
            "resource": config.resource,
            "authorization_servers": config.authorization_servers(),
            "scopes_supported": config.scopes_supported,
            "bearer_methods_supported": ["header"],
        });
        // The config was validated, so the resource parses; fall back to the plain form regardless.
        let (origin, resource_path) = match url::Url::parse(&config.resource) {
            Ok(u) => (
                u.origin().ascii_serialization(),
                u.path().trim_end_matches('/').to_owned(),
            ),
            Err(_) => (
                config.resource.trim_end_matches('/').to_owned(),
                String::new(),
            ),
        };
        let url = format!("{origin}{WELL_KNOWN}{resource_path}");
        let mut paths = vec![
            WELL_KNOWN.to_owned(),
            format!("{WELL_KNOWN}{resource_path}"),
        ];
        // An ingress may rewrite the public path to the local MCP path; answer there too.
        paths.push(format!(
            "{WELL_KNOWN}{}",
            config.mcp_path.trim_end_matches('/')
        ));
        paths.sort();
        paths.dedup();
        Self {
            document: Bytes::from(document.to_string()),
            url,
            paths,
        }
    }

    /// Whether a request path asks for the document.
    pub fn serves(&self, path: &str) -> bool {
        self.paths.iter().any(|p| p == path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn config(resource: &str, extra: &str) -> SidecarConfig {
        SidecarConfig::parse(&format!(
            "upstream: http://127.0.0.1:1\nresource: {resource}\nissuer: https://auth.example.com\n\
             jwksUri: https://auth.example.com/jwks\nscopesSupported: [mcp:read]\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn document_and_paths() {
        let md = ResourceMetadata::from_config(&config("https://mcp.example.com/team/mcp", ""));
        let doc: Value = serde_json::from_slice(&md.document).unwrap();
        assert_eq!(
            doc,
            json!({"resource": "https://mcp.example.com/team/mcp", "authorization_servers": ["https://auth.example.com"],
                   "scopes_supported": ["mcp:read"], "bearer_methods_supported": ["header"]})
        );
        assert_eq!(
            md.url,
            "https://mcp.example.com/.well-known/oauth-protected-resource/team/mcp"
        );
        assert!(md.serves("/.well-known/oauth-protected-resource"));
        assert!(md.serves("/.well-known/oauth-protected-resource/team/mcp"));
        assert!(md.serves("/.well-known/oauth-protected-resource/mcp"));
        assert!(!md.serves("/.well-known/oauth-protected-resource/other"));
    }

    #[test]
    fn resource_is_kept_character_for_character() {
        // A trailing slash or a port is part of the identity clients compare against.
        for resource in [
            "https://mcp.example.com/",
            "https://mcp.example.com:8443/mcp/",
        ] {
            let md = ResourceMetadata::from_config(&config(resource, ""));
            let doc: Value = serde_json::from_slice(&md.document).unwrap();
            assert_eq!(doc["resource"], json!(resource));
        }
        let root = ResourceMetadata::from_config(&config("https://mcp.example.com/", ""));
        assert_eq!(
            root.url,
            "https://mcp.example.com/.well-known/oauth-protected-resource"
        );
    }

    #[test]
    fn explicit_authorization_servers_win() {
        let md = ResourceMetadata::from_config(&config(
            "https://mcp.example.com/mcp",
            "authorizationServers: [https://a.example, https://b.example]\n",
        ));
        let doc: Value = serde_json::from_slice(&md.document).unwrap();
        assert_eq!(
            doc["authorization_servers"],
            json!(["https://a.example", "https://b.example"])
        );
    }
}
