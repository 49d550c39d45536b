//! Clients that identify by a Client ID Metadata Document: fetched safely, checked, admitted by policy.
//!
//! ```text
//!  client_id (https URL) ──url_check──▶ policy: deny list, patterns ──▶ cache? ──hit──┐
//!                                                                  │miss             │
//!          dns (resolve once) ─▶ address (RFC 6890 guard) ─▶ fetch (200, JSON, cap)  │
//!                                                                  ▼                 ▼
//!                       document (policy-free rules) ─▶ cache ─▶ policy::admit ─▶ ClientDocument
//! ```
//!
//! [`Resolver::resolve`] is the entry point; [`CimdConfig`] is its section of the rendered config.
//! Errors are [`CimdError`]: each knows its OAuth error code, a sentence for people and a metric label.

mod address;
mod cache;
mod client;
mod config;
mod dns;
mod document;
mod error;
mod fetch;
#[doc(hidden)]
pub mod fuzz_entry;
mod policy;
mod resolver;
mod url_check;

pub use address::{AddressPolicy, special_use_reason};
pub use cache::ttl_from_headers;
pub use client::{ClientDocument, ScopeLimit, ScopeRule};
pub use config::{AuthMethod, CimdConfig, FetchLimits, Policy, RedirectUriRules};
pub use dns::{HostResolver, StaticResolver, SystemResolver};
pub use document::{
    CheckedDocument, ClientKeys, RedirectKind, RedirectUri, check_document, classify_redirect,
    private_member,
};
pub use error::{CimdError, DocumentRule, PolicyRule, RedirectProblem, UrlRule};
pub use policy::{CompiledPolicy, admit};
pub use resolver::{Admission, BASELINE_POLICY, Resolver, ResolverStats};
pub use url_check::{MAX_URL_LEN, UrlAllowances, check_url, is_url_client_id};
