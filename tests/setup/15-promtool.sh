# Sourced by tests/run-all: Prometheus's promtool, which runs the chart's alert rules against made-up series
# (tests/tests/chart_metrics.rs). Built once from the Go module proxy into the cache; the module version
# v0.316.0 is Prometheus 3.16. Exports MCP_AUTHZ_PROMTOOL.
_mcp_authz_promtool_dir="${MCP_AUTHZ_CACHE:-$HOME/.cache/mcp-authz}/tools/promtool-v0.316.0"
if [ ! -x "$_mcp_authz_promtool_dir/promtool" ]; then
  echo "building promtool v0.316.0 into $_mcp_authz_promtool_dir (a few minutes, once)"
  mkdir -p "$_mcp_authz_promtool_dir"
  GOBIN="$_mcp_authz_promtool_dir" GOFLAGS=-buildvcs=false \
    go install github.com/prometheus/prometheus/cmd/promtool@v0.316.0 || return 1
fi
export MCP_AUTHZ_PROMTOOL="$_mcp_authz_promtool_dir/promtool"
echo "promtool: $("$MCP_AUTHZ_PROMTOOL" --version 2>&1 | head -1)"
unset _mcp_authz_promtool_dir
