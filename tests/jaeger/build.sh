#!/usr/bin/env bash
# Puts the Jaeger binary (v2, the OpenTelemetry Collector based `jaeger` command) into a cache directory
# outside the repository, keyed by version: $MCP_AUTHZ_CACHE/tools/jaeger-<version>/jaeger. It is compiled with
# the machine's `go` from the module pinned in go.mod/go.sum beside this script (fetched through the Go module
# proxy). The tracing tests send it OTLP and read the traces back from its query API.
# Prints the binary's path on stdout; progress goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${MCP_AUTHZ_CACHE:-$HOME/.cache/mcp-authz}"
version="$(awk '$1 == "github.com/jaegertracing/jaeger" { print $2; exit }' "$here/go.mod")"
if [ -z "$version" ]; then
  echo "jaeger/build.sh: cannot read the jaeger version from $here/go.mod" >&2
  exit 1
fi
out="$cache/tools/jaeger-$version"
mkdir -p "$out"
# Two test runs at once must not build into the same directory.
exec 9>"$out/.lock"
flock 9

if [ ! -x "$out/jaeger" ]; then
  if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
    PATH="/usr/local/go/bin:$PATH"
  fi
  command -v go >/dev/null || { echo "jaeger/build.sh: go is not installed" >&2; exit 1; }
  echo "jaeger: building $version (the first build takes minutes)" >&2
  started=$SECONDS
  (cd "$here" && go build -buildvcs=false -trimpath -ldflags "-s -w" -o "$out/.jaeger.partial" \
    github.com/jaegertracing/jaeger/cmd/jaeger)
  mv "$out/.jaeger.partial" "$out/jaeger"
  echo "jaeger: built in $((SECONDS - started)) s" >&2
fi
echo "$out/jaeger"
