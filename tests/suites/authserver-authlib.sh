#!/usr/bin/env bash
# The authorization server against a real third-party OAuth client (Authlib): code + PKCE, refresh, and
# client_credentials with private_key_jwt. Needs tests/setup/30-python.sh (MCP_AUTHZ_PYTHON).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${MCP_AUTHZ_PYTHON:?MCP_AUTHZ_PYTHON is not set: source tests/setup/30-python.sh (tests/run-all does)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mcp-authz/target}"
cargo build --locked -q -p mcp-authz-authserver --bin mcp-authz-server
export MCP_AUTHZ_SERVER_BIN="$CARGO_TARGET_DIR/debug/mcp-authz-server"
exec "$MCP_AUTHZ_PYTHON" -m pytest -q -p no:cacheprovider tests/authserver
