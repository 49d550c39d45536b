"""Client-side tooling of the quickstart: a test CA, the agent's Client ID Metadata Document host, a headless
person who fills the login and consent forms, and the narrated walk of the official MCP SDK client through the
whole flow. The end-to-end tests in tests/e2e/ reuse it."""
