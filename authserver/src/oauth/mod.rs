//! The OAuth rules themselves, apart from any I/O: what a request may ask, which client a grant belongs to and
//! how it must authenticate, what scopes mean, and where an error may be sent. Handlers parse, ask the store and
//! the CIMD resolver, call these, and answer; every decision here has a table of tests.

pub mod authorize_request;
pub mod grant_binding;
pub mod holder;
pub mod scopes;
