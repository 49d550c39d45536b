//! Name resolution for fetches: the server resolves each host itself, refuses special-use
//! answers, and hands the HTTP client only the checked addresses, so a second lookup (DNS
//! rebinding between check and connect) cannot happen.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::address::AddressPolicy;
use super::error::CimdError;

/// How host names become addresses. The system resolver is the default; tests and special
/// deployments inject their own.
pub trait HostResolver: Send + Sync + 'static {
    fn lookup(&self, host: &str) -> BoxFuture<'static, io::Result<Vec<IpAddr>>>;
}

/// The operating system's resolver (getaddrinfo through tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl HostResolver for SystemResolver {
    fn lookup(&self, host: &str) -> BoxFuture<'static, io::Result<Vec<IpAddr>>> {
        let target = format!("{host}:0");
        async move {
            Ok(tokio::net::lookup_host(target)
                .await?
                .map(|sa| sa.ip())
                .collect())
        }
        .boxed()
    }
}

/// A fixed table of names, for tests and air-gapped setups. Unknown names do not resolve.
#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    table: HashMap<String, Vec<IpAddr>>,
}

impl StaticResolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Map `host` (case-insensitive) to `addrs`.
    pub fn with(mut self, host: &str, addrs: &[IpAddr]) -> Self {
        self.table.insert(host.to_ascii_lowercase(), addrs.to_vec());
        self
    }
}

impl HostResolver for StaticResolver {
    fn lookup(&self, host: &str) -> BoxFuture<'static, io::Result<Vec<IpAddr>>> {
        let answer = self
            .table
            .get(&host.to_ascii_lowercase())
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such host"));
        futures::future::ready(answer).boxed()
    }
}

/// A refusal raised inside the HTTP client's connector, recovered from its error chain.
#[derive(Debug)]
pub(crate) struct Refusal(pub CimdError);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Refusal {}

/// The resolver reqwest calls: every answer is checked before any connection is attempted.
pub(crate) struct GuardedResolve {
    pub inner: Arc<dyn HostResolver>,
    pub addresses: AddressPolicy,
}

impl Resolve for GuardedResolve {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let lookup = self.inner.lookup(&host);
        let addresses = self.addresses.clone();
        Box::pin(async move {
            // Boxed as the trait object directly: `?` on a `Box<Refusal>` would box it a second
            // time and the fetcher could no longer find the refusal in the error chain.
            let ips = lookup.await.map_err(|e| {
                refusal(CimdError::Dns {
                    host: host.clone(),
                    detail: e.to_string(),
                })
            })?;
            if ips.is_empty() {
                return Err(refusal(CimdError::Dns {
                    host,
                    detail: "no addresses".to_owned(),
                }));
            }
            // One bad answer refuses the host: an attacker controls which of several addresses
            // the connector would try first.
            check_all(&addresses, &host, &ips).map_err(refusal)?;
            Ok(Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0))) as Addrs)
        })
    }
}

fn refusal(e: CimdError) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(Refusal(e))
}

/// `Err` naming the first address the policy refuses.
pub(crate) fn check_all(
    addresses: &AddressPolicy,
    host: &str,
    ips: &[IpAddr],
) -> Result<(), CimdError> {
    for ip in ips {
        addresses
            .check(*ip)
            .map_err(|reason| CimdError::ForbiddenAddress {
                host: host.to_owned(),
                addr: *ip,
                reason,
            })?;
    }
    Ok(())
}
