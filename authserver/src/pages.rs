//! Server-rendered HTML: the login and consent forms (no JavaScript) and the error page for errors that must not
//! redirect. Everything interpolated is escaped.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

/// HTML-escapes text for element content and quoted attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>body{{font-family:sans-serif;max-width:36em;margin:2em auto;padding:0 1em}}\
         .warn{{background:#fff3cd;padding:.5em;border:1px solid #e0c060}} .err{{color:#a00}}</style></head>\
         <body><h1>{}</h1>\n{body}\n</body></html>\n",
        escape(title),
        escape(title)
    );
    let mut response = (status, Html(html)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The forms must never be framed by another site (clickjacking of the consent button).
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // No `form-action`: browsers apply it to the redirect that follows the consent POST, which goes to the
    // client's redirect URI on another origin (found by the Chromium end-to-end test).
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The question before a provider is disconnected: a form bound to the browser by `csrf`.
pub fn disconnect_page(base: &str, provider: &str, name: &str, csrf: &str) -> Response {
    page(
        StatusCode::OK,
        "Disconnect?",
        &format!(
            "<p>Services will no longer use your <strong>{}</strong> account; a tool that needs it will ask you to \
             connect it again.</p>\
             <form method=\"post\" action=\"{}/connect/{}/disconnect\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Disconnect</button></form>",
            escape(name),
            escape(base),
            escape(provider),
            escape(csrf)
        ),
    )
}

/// A page that only tells the person something (a provider connected).
pub fn message_page(status: StatusCode, title: &str, message: &str) -> Response {
    page(
        status,
        title,
        &format!("<p id=\"message\">{}</p>", escape(message)),
    )
}

/// An error shown to the person instead of redirecting (unknown client, bad redirect URI, broken form).
pub fn error_page(status: StatusCode, error: &str, description: &str) -> Response {
    page(
        status,
        "Authorization error",
        &format!(
            "<p class=\"err\" id=\"error\" data-error=\"{}\">{}</p><p id=\"error_description\">{}</p>",
            escape(error),
            escape(error),
            escape(description)
        ),
    )
}

/// The login form.
/// `base` is the issuer: the form posts to an absolute path, so it works whatever page served it.
pub fn login_page(
    base: &str,
    request_id: &str,
    csrf: &str,
    client_name: &str,
    problem: Option<&str>,
) -> Response {
    let problem = problem
        .map(|p| format!("<p class=\"err\" id=\"login_error\">{}</p>", escape(p)))
        .unwrap_or_default();
    let status = if problem.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    };
    page(
        status,
        "Sign in",
        &format!(
            "<p>Sign in to continue to <strong>{}</strong>.</p>{problem}\
             <form method=\"post\" action=\"{}/login\">\
             <input type=\"hidden\" name=\"request_id\" value=\"{}\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <p><label>Username <input name=\"username\" autocomplete=\"username\" required></label></p>\
             <p><label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label></p>\
             <p><button type=\"submit\">Sign in</button></p></form>",
            escape(client_name),
            escape(base),
            escape(request_id),
            escape(csrf)
        ),
    )
}

/// What the consent page shows.
pub struct ConsentView<'a> {
    /// The issuer: the form posts to an absolute path.
    pub base: &'a str,
    pub request_id: &'a str,
    pub csrf: &'a str,
    pub client_name: &'a str,
    pub client_id_host: &'a str,
    pub redirect_host: &'a str,
    pub all_loopback: bool,
    pub resource_name: &'a str,
    pub resource: &'a str,
    /// The requested scopes, then the sensitive scopes they imply.
    pub scopes: Vec<crate::oauth::scopes::ConsentLine<'a>>,
    /// The downstreams the service may call as the person with what is asked (token exchange), each with the
    /// scopes it would pass on.
    pub downstreams: Vec<(&'a str, Vec<&'a str>)>,
    /// The display names of every provider this service uses the person's own account of, in the declaration's
    /// order, each with whether the person has connected it: approving goes on to connect those not connected.
    pub providers: Vec<(&'a str, bool)>,
    pub subject: &'a str,
}

/// The downstreams of `resource` that a grant of `requested` scopes reaches, with the scopes each would get.
pub fn downstreams_of<'a>(
    resource: Option<&'a crate::config::ResourceConfig>,
    requested: &'a [String],
) -> Vec<(&'a str, Vec<&'a str>)> {
    resource
        .map(|r| r.token_exchange.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|t| {
            let passed: Vec<&str> = t
                .scopes
                .iter()
                .filter(|s| requested.contains(s))
                .map(String::as_str)
                .collect();
            (!passed.is_empty()).then_some((t.audience.as_str(), passed))
        })
        .collect()
}

/// The consent form.
pub fn consent_page(v: &ConsentView<'_>) -> Response {
    let warning = if v.all_loopback {
        "<p class=\"warn\" id=\"loopback_warning\">This client only redirects to your own computer (a loopback \
         address). Anyone can run a program that claims this name: continue only if you started it yourself.</p>"
    } else {
        ""
    };
    let scopes: String = v
        .scopes
        .iter()
        .map(|line| {
            format!(
                "<li><strong>{}</strong>{}{} <code>{}</code></li>",
                escape(line.description),
                if line.sensitive { " (sensitive)" } else { "" },
                if line.implied {
                    " (included in what is asked above)"
                } else {
                    ""
                },
                escape(line.value)
            )
        })
        .collect();
    // The service itself may act for the person elsewhere (the platform's token-exchange edges): said before
    // the person decides, not only in the platform's manifests.
    let downstreams = if v.downstreams.is_empty() {
        String::new()
    } else {
        let items: String = v
            .downstreams
            .iter()
            .map(|(audience, scopes)| {
                format!(
                    "<li><code>{}</code> with <code>{}</code></li>",
                    escape(audience),
                    escape(&scopes.join(" "))
                )
            })
            .collect();
        format!(
            "<p>With this access, <strong>{}</strong> may also call these services as you:</p>\
             <ul id=\"downstreams\">{items}</ul>",
            escape(v.resource_name)
        )
    };
    // Every provider the service receives the person's access at is named, connected or not: what the service
    // gets is said before the person decides, not only what is left to connect.
    let providers = if v.providers.is_empty() {
        String::new()
    } else {
        let items: String = v
            .providers
            .iter()
            .map(|(name, connected)| {
                format!(
                    "<li>{} ({})</li>",
                    escape(name),
                    if *connected {
                        "connected"
                    } else {
                        "not connected"
                    }
                )
            })
            .collect();
        let missing: Vec<String> = v
            .providers
            .iter()
            .filter(|(_, connected)| !connected)
            .map(|(name, _)| format!("<strong>{}</strong>", escape(name)))
            .collect();
        let next = match missing.len() {
            0 => "<p>Your accounts there are connected.</p>".to_owned(),
            1 => format!(
                "<p>If you allow, you will connect your {} account next.</p>",
                missing[0]
            ),
            _ => format!(
                "<p>If you allow, you will connect your {} accounts next.</p>",
                missing.join(", ")
            ),
        };
        format!(
            "<p><strong>{}</strong> receives access to your own account at:</p><ul id=\"providers\">{items}</ul>{next}",
            escape(v.resource_name)
        )
    };
    page(
        StatusCode::OK,
        "Allow access?",
        &format!(
            "<p>Signed in as <strong>{}</strong>.</p>\
             <p><strong id=\"client_name\">{}</strong> (<span id=\"client_id_host\">{}</span>) wants to access \
             <strong>{}</strong> (<code>{}</code>).</p>\
             <p>After you decide, you will be sent to <strong id=\"redirect_host\">{}</strong>.</p>{warning}\
             <p>It asks to:</p><ul id=\"scopes\">{scopes}</ul>{downstreams}{providers}\
             <form method=\"post\" action=\"{}/consent\">\
             <input type=\"hidden\" name=\"request_id\" value=\"{}\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\" name=\"decision\" value=\"approve\">Allow</button> \
             <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></form>",
            escape(v.subject),
            escape(v.client_name),
            escape(v.client_id_host),
            escape(v.resource_name),
            escape(v.resource),
            escape(v.redirect_host),
            escape(v.base),
            escape(v.request_id),
            escape(v.csrf)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_forbid_framing_but_not_the_redirect_after_a_form() {
        let r = login_page("https://as.example", "id", "csrf", "Client", None);
        assert!(r.status().is_success());
        let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("frame-ancestors 'none'"));
        assert!(!csp.contains("form-action"), "{csp}");
        assert_eq!(r.headers()[header::X_FRAME_OPTIONS], "DENY");
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn the_consent_page_names_the_downstreams_the_grant_reaches() {
        use crate::config::{ExchangeTarget, ResourceConfig};
        let resource = ResourceConfig {
            resource: "https://mcp.example.com/files".into(),
            display_name: "Files <b>".into(),
            scopes: vec!["files:read".into(), "files:write".into()],
            cimd_policy: None,
            holder: String::new(),
            token_exchange: vec![
                ExchangeTarget {
                    audience: "https://inventory.example.com/api?x=<1>".into(),
                    scopes: vec!["files:read".into(), "files:write".into()],
                },
                ExchangeTarget {
                    audience: "https://payroll.example.com/api".into(),
                    scopes: vec!["files:write".into()],
                },
            ],
            providers: Vec::new(),
        };
        let requested = vec!["files:read".to_owned()];
        let downstreams = downstreams_of(Some(&resource), &requested);
        assert_eq!(
            downstreams,
            [(
                "https://inventory.example.com/api?x=<1>",
                vec!["files:read"]
            )],
            "a downstream only a scope not asked reaches is not named"
        );
        let view = ConsentView {
            base: "https://as.example",
            request_id: "r",
            csrf: "c",
            client_name: "Agent",
            client_id_host: "agent.example",
            redirect_host: "agent.example",
            all_loopback: false,
            resource_name: &resource.display_name,
            resource: &resource.resource,
            scopes: Vec::new(),
            downstreams,
            providers: vec![("Git <Hub>", false)],
            subject: "alice",
        };
        let r = consent_page(&view);
        let body = futures_body(r);
        assert!(
            body.contains(
                "<p>With this access, <strong>Files &lt;b&gt;</strong> may also call these services as you:</p>\
                 <ul id=\"downstreams\"><li><code>https://inventory.example.com/api?x=&lt;1&gt;</code> with \
                 <code>files:read</code></li></ul>"
            ),
            "{body}"
        );
        assert!(
            body.contains(
                "<ul id=\"providers\"><li>Git &lt;Hub&gt; (not connected)</li></ul><p>If you allow, you will \
                 connect your <strong>Git &lt;Hub&gt;</strong> account next.</p>"
            ),
            "{body}"
        );
        assert_eq!(
            downstreams_of(None, &requested),
            Vec::<(&str, Vec<&str>)>::new()
        );
    }

    /// Every provider is named, connected or not; what approving goes on to connect is said.
    #[test]
    fn the_consent_page_names_every_provider_with_whether_it_is_connected() {
        // (providers with whether connected, the providers part of the page)
        let cases: [(Vec<(&str, bool)>, &str); 4] = [
            (vec![], ""),
            (
                vec![("Acme", true)],
                "<ul id=\"providers\"><li>Acme (connected)</li></ul><p>Your accounts there are connected.</p>",
            ),
            (
                vec![("Acme", true), ("Globex", false)],
                "<ul id=\"providers\"><li>Acme (connected)</li><li>Globex (not connected)</li></ul><p>If you \
                 allow, you will connect your <strong>Globex</strong> account next.</p>",
            ),
            (
                vec![("Acme", false), ("Globex", true), ("In<itech", false)],
                "<ul id=\"providers\"><li>Acme (not connected)</li><li>Globex (connected)</li><li>In&lt;itech (not \
                 connected)</li></ul><p>If you allow, you will connect your <strong>Acme</strong>, \
                 <strong>In&lt;itech</strong> accounts next.</p>",
            ),
        ];
        for (providers, want) in cases {
            let view = ConsentView {
                base: "https://as.example",
                request_id: "r",
                csrf: "c",
                client_name: "Agent",
                client_id_host: "agent.example",
                redirect_host: "agent.example",
                all_loopback: false,
                resource_name: "Files",
                resource: "https://mcp.example.com/files",
                scopes: Vec::new(),
                downstreams: Vec::new(),
                providers: providers.clone(),
                subject: "alice",
            };
            let body = futures_body(consent_page(&view));
            if want.is_empty() {
                assert!(!body.contains("id=\"providers\""), "{body}");
            } else {
                assert!(
                    body.contains(&format!(
                        "<p><strong>Files</strong> receives access to your own account at:</p>{want}"
                    )),
                    "{providers:?}: {body}"
                );
            }
        }
    }

    fn futures_body(r: Response) -> String {
        let bytes =
            futures::executor::block_on(axum::body::to_bytes(r.into_body(), 1 << 20)).unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }
}
