//! Policy as code: `mcp-authz explain` and `mcp-authz test` decide offline what the running plane would,
//! with the plane's own code.
//!
//! ```text
//!  manifests ──(the reader of render/local)──▶ world::service_view ──▶ the sidecar config + client admission
//!                                                                        │ (the operator's render functions)
//!  token + request ──▶ explain::explain ── the sidecar's verdict ────────┤
//!  a client document ─▶ cases ───────────── the server's Admission ──────┘
//! ```
//!
//! Nothing here decides anything itself: `explain` calls `mcp_authz_sidecar::verdict::verdict` (what the
//! sidecar's proxy calls) and `cases` calls `mcp_authz_authserver::cimd::Admission` (what the server's resolver
//! calls), and only reports what they found.

pub mod cases;
pub mod explain;
pub mod world;
