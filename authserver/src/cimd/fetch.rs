//! The guarded HTTPS GET: checked addresses only, no redirects, only 200, JSON only, a hard byte
//! cap while streaming, connect and total timeouts.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use url::{Host, Url};

use super::address::AddressPolicy;
use super::cache::ttl_from_headers;
use super::config::CimdConfig;
use super::dns::{GuardedResolve, HostResolver, Refusal, check_all};
use super::error::CimdError;

/// A successful fetch: the body and how long it may be cached (already clamped).
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    pub body: Bytes,
    pub ttl: Duration,
}

pub(crate) struct Fetcher {
    client: reqwest::Client,
    addresses: AddressPolicy,
    total_timeout: Duration,
    min_ttl: Duration,
    max_ttl: Duration,
}

impl Fetcher {
    pub fn new(
        config: &CimdConfig,
        addresses: AddressPolicy,
        dns: Arc<dyn HostResolver>,
    ) -> Result<Self, CimdError> {
        let limits = &config.fetch;
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // A proxy from the environment would make the connection to an address we never checked.
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolve {
                inner: dns,
                addresses: addresses.clone(),
            }))
            .connect_timeout(Duration::from_millis(limits.connect_timeout_ms))
            .timeout(Duration::from_millis(limits.total_timeout_ms))
            .https_only(!config.allow_http_for_development)
            .user_agent(concat!("mcp-authz-authserver/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(2);
        if let Some(path) = &config.extra_ca_bundle {
            let pem = std::fs::read(path)
                .map_err(|e| CimdError::Config(format!("extraCaBundle {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| CimdError::Config(format!("extraCaBundle {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(CimdError::Config(format!(
                    "extraCaBundle {} holds no certificate",
                    path.display()
                )));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder.build().map_err(|e| {
            CimdError::Config(format!("building the HTTP client: {}", error_chain(&e)))
        })?;
        Ok(Self {
            client,
            addresses,
            total_timeout: Duration::from_millis(limits.total_timeout_ms),
            min_ttl: Duration::from_secs(limits.cache_min_ttl_secs),
            max_ttl: Duration::from_secs(limits.cache_max_ttl_secs),
        })
    }

    /// GET `url` (already shape-checked) reading at most `max_bytes` of body.
    pub async fn get(&self, url: &Url, max_bytes: usize) -> Result<Fetched, CimdError> {
        let mut span = crate::spans::cimd_fetch(url.host_str().unwrap_or_default());
        let fetched = self.get_bounded(url, max_bytes).await;
        if let Err(error) = &fetched {
            span.failed(error.metric_label());
        }
        fetched
    }

    async fn get_bounded(&self, url: &Url, max_bytes: usize) -> Result<Fetched, CimdError> {
        // IP literals never reach the resolver, so they are checked here.
        let literal = match url.host() {
            Some(Host::Ipv4(ip)) => Some(ip.into()),
            Some(Host::Ipv6(ip)) => Some(ip.into()),
            _ => None,
        };
        if let Some(ip) = literal {
            check_all(&self.addresses, url.host_str().unwrap_or_default(), &[ip])?;
        }
        let after_ms = u64::try_from(self.total_timeout.as_millis()).unwrap_or(u64::MAX);
        let timeout = || CimdError::Timeout {
            url: url.to_string(),
            after_ms,
        };
        match tokio::time::timeout(self.total_timeout, self.get_unbounded_time(url, max_bytes))
            .await
        {
            Ok(Err(CimdError::Timeout { .. })) | Err(_) => Err(timeout()),
            Ok(result) => result,
        }
    }

    async fn get_unbounded_time(&self, url: &Url, max_bytes: usize) -> Result<Fetched, CimdError> {
        let name = url.as_str();
        let mut response = self
            .client
            .get(url.clone())
            .header(ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| map_reqwest_error(&e, name))?;
        let status = response.status();
        if status.is_redirection() {
            return Err(CimdError::Redirect {
                url: name.to_owned(),
                status: status.as_u16(),
            });
        }
        if status != reqwest::StatusCode::OK {
            return Err(CimdError::HttpStatus {
                url: name.to_owned(),
                status: status.as_u16(),
            });
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .chars()
                    .take(100)
                    .collect::<String>()
            })
            .unwrap_or_default();
        if !is_json(&content_type) {
            return Err(CimdError::ContentType {
                url: name.to_owned(),
                found: content_type,
            });
        }
        let too_large = || CimdError::TooLarge {
            url: name.to_owned(),
            limit: max_bytes,
        };
        let declared = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > max_bytes as u64) {
            return Err(too_large());
        }
        let ttl = ttl_from_headers(
            response.headers(),
            SystemTime::now(),
            self.min_ttl,
            self.max_ttl,
        );
        let mut body = BytesMut::with_capacity(max_bytes.min(8192));
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| map_reqwest_error(&e, name))?
        {
            if body.len() + chunk.len() > max_bytes {
                // Dropping the response closes the connection: nothing past the cap is read.
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Fetched {
            body: body.freeze(),
            ttl,
        })
    }
}

/// `application/json` or any `+json` type, parameters ignored.
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn map_reqwest_error(e: &reqwest::Error, url: &str) -> CimdError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(Refusal(refusal)) = err.downcast_ref::<Refusal>() {
            return refusal.clone();
        }
        source = err.source();
    }
    if e.is_timeout() {
        return CimdError::Timeout {
            url: url.to_owned(),
            after_ms: 0,
        };
    }
    CimdError::Connect {
        url: url.to_owned(),
        detail: error_chain(e),
    }
}

/// The error and its causes on one line: reqwest's own message alone hides the TLS reason.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        let part = err.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = err.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/oauth-client+json",
        ] {
            assert!(is_json(ok), "{ok}");
        }
        for bad in [
            "",
            "text/html",
            "text/json",
            "application/jsonp",
            "application/x-json-stream",
            "json",
        ] {
            assert!(!is_json(bad), "{bad}");
        }
    }
}
