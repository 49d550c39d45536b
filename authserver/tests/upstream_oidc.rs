//! Login federated to a real upstream OpenID Provider (npm `oidc-provider`, run by Node 22 from
//! tests/setup/40-node.sh): code + PKCE to the provider, ID token checked, the configured claim as subject.

mod support;

use std::collections::HashMap;

use mcp_authz_authserver::config::{LoginConfig, UpstreamOidc};
use support::*;

/// The provider process, killed on drop.
struct Provider {
    child: std::process::Child,
    issuer: String,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_provider(port: u16, redirect_uri: &str) -> Provider {
    let node = std::env::var("MCP_AUTHZ_NODE22")
        .expect("MCP_AUTHZ_NODE22 is not set: source tests/setup/40-node.sh (tests/run-all does)");
    std::env::var("MCP_AUTHZ_OIDC_PROVIDER_MODULES")
        .expect("MCP_AUTHZ_OIDC_PROVIDER_MODULES is not set: source tests/setup/40-node.sh (tests/run-all does)");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/authserver/oidc-upstream.mjs"
    );
    let child = std::process::Command::new(node)
        .arg(script)
        .arg(port.to_string())
        .arg(redirect_uri)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("node starts");
    // Owned at once, so the process is killed on every path out of here.
    let provider = Provider {
        child,
        issuer: format!("http://127.0.0.1:{port}"),
    };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return provider;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("oidc-provider did not listen on {port}");
}

/// A browser across both servers: cookies by name, redirects resolved against the current URL.
struct Browser {
    http: reqwest::Client,
    cookies: HashMap<String, String>,
}

enum Page {
    Html(String, String),
    ToClient(String),
}

impl Browser {
    fn new() -> Self {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: HashMap::new(),
        }
    }

    /// Sends the request and follows redirects until an HTML page, or a redirect to the client's callback.
    async fn go(&mut self, mut request: reqwest::RequestBuilder, mut url: url::Url) -> Page {
        loop {
            let cookie = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            let response = request.header("cookie", cookie).send().await.unwrap();
            for v in response.headers().get_all("set-cookie") {
                let first = v.to_str().unwrap().split(';').next().unwrap();
                if let Some((k, val)) = first.split_once('=') {
                    self.cookies.insert(k.to_owned(), val.to_owned());
                }
            }
            let Some(location) = response.headers().get("location") else {
                return Page::Html(url.to_string(), response.text().await.unwrap());
            };
            let next = url.join(location.to_str().unwrap()).unwrap();
            if next.as_str().starts_with(REDIRECT) {
                return Page::ToClient(next.to_string());
            }
            url = next;
            request = self.http.get(url.clone());
        }
    }

    /// Submits the page's first form with its hidden fields plus `fields`.
    async fn submit(&mut self, page_url: &str, html: &str, fields: &[(&str, &str)]) -> Page {
        let start = html
            .find("<form")
            .unwrap_or_else(|| panic!("no form in {html}"));
        let form = &html[start
            ..html[start..]
                .find("</form>")
                .map_or(html.len(), |e| start + e)];
        let action = attribute(form, "action").expect("form action");
        let mut pairs: Vec<(String, String)> = form
            .split("<input")
            .skip(1)
            .filter(|i| attribute(i, "type").as_deref() == Some("hidden"))
            .filter_map(|i| {
                Some((
                    attribute(i, "name")?,
                    attribute(i, "value").unwrap_or_default(),
                ))
            })
            .collect();
        pairs.extend(
            fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        let url = url::Url::parse(page_url).unwrap().join(&action).unwrap();
        let request = self
            .http
            .post(url.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        self.go(request, url).await
    }
}

fn attribute(tag: &str, name: &str) -> Option<String> {
    let marker = format!("{name}=\"");
    let start = tag[..tag.find('>').unwrap_or(tag.len())].find(&marker)? + marker.len();
    Some(tag[start..].split('"').next()?.replace("&amp;", "&"))
}

async fn federated_server() -> (TestServer, Provider) {
    let port = free_port();
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "upstream-secret-0123456789\n").unwrap();
    let secret_path = secret.into_temp_path().keep().unwrap();
    let issuer = format!("http://127.0.0.1:{port}");
    let s = TestServer::start_with(|c| {
        c.login = LoginConfig {
            static_users: None,
            upstream_oidc: Some(UpstreamOidc {
                issuer: issuer.clone(),
                client_id: "mcp-authz".into(),
                client_secret_file: Some(secret_path),
                scopes: vec!["openid".into(), "email".into()],
                subject_claim: "email".into(),
                ca_file: None,
            }),
        };
    })
    .await;
    let provider = start_provider(port, &s.url("/upstream/callback"));
    (s, provider)
}

#[tokio::test]
async fn a_person_logs_in_at_the_upstream_provider_and_gets_a_token() {
    let (s, provider) = federated_server().await;
    let mut b = Browser::new();
    let start = url::Url::parse(&s.url(&authorize_query(
        PUBLIC_CLIENT,
        REDIRECT,
        "files:read",
        "up",
    )))
    .unwrap();
    let Page::Html(at, login) = b.go(b.http.get(start.clone()), start).await else {
        panic!("no login page")
    };
    assert!(
        at.starts_with(&provider.issuer),
        "the browser went to the provider: {at}"
    );
    let Page::Html(at, consent) = b
        .submit(&at, &login, &[("login", "alice"), ("password", "any")])
        .await
    else {
        panic!("no provider consent page")
    };
    // The provider's consent, then ours (the subject is the email claim).
    let Page::Html(at, ours) = b.submit(&at, &consent, &[]).await else {
        panic!("no consent page of ours")
    };
    assert!(at.starts_with(&s.base), "{at}");
    assert!(
        ours.contains("Signed in as <strong>alice@example.com</strong>"),
        "{ours}"
    );
    let Page::ToClient(callback) = b.submit(&at, &ours, &[("decision", "approve")]).await else {
        panic!()
    };
    let q = query(&callback);
    assert_eq!(
        (q["state"].as_str(), q["iss"].as_str()),
        ("up", s.base.as_str())
    );
    let (status, body, _) = s
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &q["code"]),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
            ("client_id", PUBLIC_CLIENT),
        ])
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, claims) = verify_with_jwks(&s, body["access_token"].as_str().unwrap()).await;
    assert_eq!(claims["sub"], "alice@example.com");

    // Replaying the provider's callback finds nothing to finish.
    let replay = format!("{}/upstream/callback?code=x&state=y", s.base);
    let r = s.http.get(replay).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("expired or was already completed")
    );
}

#[tokio::test]
async fn an_upstream_refusal_goes_back_to_the_client_as_access_denied() {
    let (s, provider) = federated_server().await;
    let mut b = Browser::new();
    let start = url::Url::parse(&s.url(&authorize_query(
        PUBLIC_CLIENT,
        REDIRECT,
        "files:read",
        "no",
    )))
    .unwrap();
    let Page::Html(at, login) = b.go(b.http.get(start.clone()), start).await else {
        panic!()
    };
    assert!(at.starts_with(&provider.issuer));
    // oidc-provider's interaction pages link to ".../abort", which answers the request with access_denied.
    let abort = url::Url::parse(&at)
        .unwrap()
        .join(&format!("{}/abort", url::Url::parse(&at).unwrap().path()))
        .unwrap();
    let _ = login;
    let Page::ToClient(callback) = b.go(b.http.get(abort.clone()), abort).await else {
        panic!("no redirect to client")
    };
    let q = query(&callback);
    assert_eq!(q["error"], "access_denied");
    assert!(
        q["error_description"].starts_with("the upstream sign-in failed: access_denied"),
        "{q:?}"
    );
    assert_eq!(
        (q["state"].as_str(), q["iss"].as_str()),
        ("no", s.base.as_str())
    );
}
