//! Flows across this server and a real provider run by Node (npm `oidc-provider`, from tests/setup/40-node.sh):
//! the provider's process, and a browser whose cookies and redirects span both.

use std::collections::HashMap;

use super::REDIRECT;

/// The provider process, killed on drop.
pub struct NodeProvider {
    child: std::process::Child,
    pub issuer: String,
}

impl Drop for NodeProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `tests/authserver/<script>` with Node 22 on `port` (its first argument), `args` after it, and waits
/// until it listens.
pub fn start_node_provider(script: &str, port: u16, args: &[&str]) -> NodeProvider {
    let node = std::env::var("MCP_AUTHZ_NODE22")
        .expect("MCP_AUTHZ_NODE22 is not set: source tests/setup/40-node.sh (tests/run-all does)");
    std::env::var("MCP_AUTHZ_OIDC_PROVIDER_MODULES")
        .expect("MCP_AUTHZ_OIDC_PROVIDER_MODULES is not set: source tests/setup/40-node.sh (tests/run-all does)");
    let script = format!(
        "{}/../tests/authserver/{script}",
        env!("CARGO_MANIFEST_DIR")
    );
    let child = std::process::Command::new(node)
        .arg(script)
        .arg(port.to_string())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("node starts");
    // Owned at once, so the process is killed on every path out of here.
    let provider = NodeProvider {
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
pub struct Browser {
    pub http: reqwest::Client,
    pub cookies: HashMap<String, String>,
}

pub enum Page {
    Html(String, String),
    ToClient(String),
}

impl Browser {
    pub fn new() -> Self {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: HashMap::new(),
        }
    }

    /// Sends the request and follows redirects until an HTML page, or a redirect to the client's callback.
    pub async fn go(&mut self, mut request: reqwest::RequestBuilder, mut url: url::Url) -> Page {
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
    pub async fn submit(&mut self, page_url: &str, html: &str, fields: &[(&str, &str)]) -> Page {
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

pub fn attribute(tag: &str, name: &str) -> Option<String> {
    let marker = format!("{name}=\"");
    let start = tag[..tag.find('>').unwrap_or(tag.len())].find(&marker)? + marker.len();
    Some(tag[start..].split('"').next()?.replace("&amp;", "&"))
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}
