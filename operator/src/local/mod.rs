//! `mcp-authz local -f DIR`: the whole plane on a laptop, from the same manifests a cluster takes.
//!
//! ```text
//! DIR/*.yaml --manifests (schema + CEL, errors name file/object/field)--> ManifestSet
//!     --plan: the operator's own render functions, then loopback/state-dir overrides--> LocalPlan
//!     --runtime: state files, authserver + one sidecar per MCPService in this process,
//!       readiness over real sockets, summary table / ready file, re-render on change
//! ```

pub mod manifests;
pub mod ports;
