#!/usr/bin/env bash
# End-to-end: `mcp-authz local` on the quickstart manifests, the demo MCP server and the official MCP Python
# SDK client through the whole flow, and the login and consent pages in headless Chromium.
# Needs tests/setup/30-python.sh (MCP_AUTHZ_PYTHON) and tests/setup/50-chromium.sh (MCP_AUTHZ_CHROMIUM,
# MCP_AUTHZ_CHROMEDRIVER).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${MCP_AUTHZ_PYTHON:?MCP_AUTHZ_PYTHON is not set: source tests/setup/30-python.sh (tests/run-all does)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mcp-authz/target}"
cargo build --locked -q -p mcp-authz-operator --bin mcp-authz
# A private copy: other builds sharing the target directory must not swap the binary under the tests.
mkdir -p tests/.work
cp "$CARGO_TARGET_DIR/debug/mcp-authz" tests/.work/mcp-authz-e2e
export MCP_AUTHZ_LOCAL_BIN="$PWD/tests/.work/mcp-authz-e2e"
exec "$MCP_AUTHZ_PYTHON" -m pytest -q -p no:cacheprovider tests/e2e
