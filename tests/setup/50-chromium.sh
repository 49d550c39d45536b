# Sourced by tests/run-all: Debian's headless Chromium and its chromedriver for the browser test of the
# login and consent pages. Idempotent: nothing happens when both are installed.
#   MCP_AUTHZ_CHROMIUM      the chromium binary
#   MCP_AUTHZ_CHROMEDRIVER  the matching chromedriver
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq || return 1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null || return 1
fi
MCP_AUTHZ_CHROMIUM="$(command -v chromium)"
MCP_AUTHZ_CHROMEDRIVER="$(command -v chromedriver)"
export MCP_AUTHZ_CHROMIUM MCP_AUTHZ_CHROMEDRIVER
echo "chromium: $MCP_AUTHZ_CHROMIUM ($("$MCP_AUTHZ_CHROMIUM" --version 2>/dev/null))"
