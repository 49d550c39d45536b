#![forbid(unsafe_code)]
//! The mcp-authz control plane.
//!
//! ```text
//! AuthorizationServer --+-- MCPScope*  (catalogue)      render (pure) --> authserver ConfigMap, keys Secret,
//!        ^  ref         +-- CIMDPolicy* (client rules)                   Deployment, Service, PVC, PDB
//! MCPService* ----------+                                render (pure) --> sidecar ConfigMap, NetworkPolicy
//!        '-- selects pods -> admission webhook injects the sidecar
//! ```
//!
//! `api` holds the resource types (no I/O), `render` turns resources into Kubernetes objects (pure),
//! `reconcile` applies them (server-side apply, lease holder only), `admission` patches pods.
//! `tenancy` decides who holds a resource URL or a scope value and which namespaces a server admits.
//! `keys` and `certs` keep the signing keys and the webhook certificate; `lease` elects the writer;
//! `runtime` wires it all for `mcp-authz operator`; `policy` explains and tests decisions offline
//! (`mcp-authz explain`, `mcp-authz test`).

pub mod admission;
pub mod api;
pub mod certs;
pub mod cli;
pub mod config_budget;
pub mod crdgen;
pub mod keys;
pub mod lease;
pub mod local;
pub mod manifests;
pub mod metrics;
pub mod naming;
pub mod policy;
pub mod reconcile;
pub mod render;
pub mod runtime;
pub mod serving_tls;
pub mod spans;
pub mod status;
pub mod tenancy;
