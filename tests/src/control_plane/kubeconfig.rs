//! Kubeconfig files for the test control plane, readable by kube-rs, kubectl, helm and
//! kube-controller-manager. JSON is valid YAML, so serde_json writes them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use super::pki::IssuedCertificate;

/// How a kubeconfig user proves who it is.
pub(crate) enum Credentials<'a> {
    ClientCertificate(&'a IssuedCertificate),
    BearerToken(&'a str),
}

/// One cluster, one user, one context named `mcp-authz-test`, current.
pub(crate) fn render(
    server_url: &str,
    ca_pem: &str,
    user: &str,
    credentials: Credentials<'_>,
    namespace: &str,
) -> String {
    let user_entry = match credentials {
        Credentials::ClientCertificate(cert) => json!({
            "client-certificate-data": STANDARD.encode(&cert.cert_pem),
            "client-key-data": STANDARD.encode(&cert.key_pem),
        }),
        Credentials::BearerToken(token) => json!({ "token": token }),
    };
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "mcp-authz-test",
            "cluster": { "server": server_url, "certificate-authority-data": STANDARD.encode(ca_pem) },
        }],
        "users": [{ "name": user, "user": user_entry }],
        "contexts": [{
            "name": "mcp-authz-test",
            "context": { "cluster": "mcp-authz-test", "user": user, "namespace": namespace },
        }],
        "current-context": "mcp-authz-test",
    });
    let mut text = serde_json::to_string_pretty(&config).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control_plane::pki::TestAuthority;

    #[test]
    fn kube_reads_a_client_certificate_kubeconfig() {
        let ca = TestAuthority::new("ca").unwrap();
        let admin = ca.issue_client("admin", &["system:masters"]).unwrap();
        let text = render(
            "https://127.0.0.1:6443",
            &ca.ca_pem(),
            "admin",
            Credentials::ClientCertificate(&admin),
            "default",
        );
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&text).unwrap();
        let config = kube::Config::try_from(kubeconfig).unwrap();
        assert_eq!(config.cluster_url.to_string(), "https://127.0.0.1:6443/");
        assert_eq!(config.default_namespace, "default");
        assert_eq!(config.root_cert, Some(vec![ca.ca_der()]));
        assert!(config.auth_info.client_certificate_data.is_some());
        assert!(config.auth_info.token.is_none());
    }

    #[test]
    fn kube_reads_a_token_kubeconfig() {
        let ca = TestAuthority::new("ca").unwrap();
        let text = render(
            "https://127.0.0.1:6443",
            &ca.ca_pem(),
            "sa",
            Credentials::BearerToken("t0k3n"),
            "team-a",
        );
        let config =
            kube::Config::try_from(kube::config::Kubeconfig::from_yaml(&text).unwrap()).unwrap();
        assert_eq!(config.default_namespace, "team-a");
        assert!(config.auth_info.token.is_some());
        assert!(config.auth_info.client_certificate_data.is_none());
    }
}
