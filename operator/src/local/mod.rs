//! `mcp-authz local -f DIR`: the whole plane on a laptop, from the same manifests a cluster takes.
//!
//! ```text
//! DIR/*.yaml --manifests (schema + CEL, errors name file/object/field)--> ManifestSet
//!     --render (the operator's own, pure)--> AuthServerConfig, SidecarConfig per MCPService
//!     --overrides (loopback ports, state dir, local files)--> config files in the state dir
//!     --> authserver + one sidecar per MCPService, in this process; files re-rendered on change
//! ```

pub mod manifests;
