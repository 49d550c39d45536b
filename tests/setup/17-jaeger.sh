# Sourced by tests/run-all: Jaeger (v2, built from its Go module by tests/jaeger/build.sh, cached), the real
# OTLP receiver the tracing tests send spans to and read traces back from. Exports MCP_AUTHZ_JAEGER.
MCP_AUTHZ_JAEGER="$(bash "$(dirname "${BASH_SOURCE[0]}")/../jaeger/build.sh")" || return 1
export MCP_AUTHZ_JAEGER
echo "jaeger: $MCP_AUTHZ_JAEGER"
