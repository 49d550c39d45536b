#!/usr/bin/env bash
# The sidecar against nginx as a plain reverse proxy (no auth), on one machine, as issue 15 asks. Not part of
# tests/run-all: it takes minutes, and its figures are only worth reading beside their load averages.
#
# Each proxy runs pinned to one core (PROXY_CPU, default 1); the load generators, the upstream and the harness
# run on the other (LOAD_CPU, default 0). Rounds alternate the two proxies. Printed: every run with the 1-minute
# load average, then medians and ratios of
#   - maximum throughput and CPU per request (wrk, one thread, 64 connections, unlimited rate),
#   - added p50/p90/p99 latency at a fixed 1,000 requests/s (oha, 32 connections; added = proxy - direct, same round),
#   - resident memory with 1,000 open SSE streams.
# The sidecar runs in its production configuration: an audit record per tools/call on a stdout that is a pipe
# read by the harness, as a container runtime reads it. nginx writes its access log to a file,
# as it ships (NGINX_ACCESS_LOG=off to turn it off).
#
#   tests/bench/sidecar-vs-nginx.sh [seconds=10] [rate=1000] [streams=1000] [rounds=5]
#
# LOADBENCH_AWAKE=1 keeps the proxy's core busy at the lowest priority during the fixed-rate runs: on a virtual
# machine an idle core halts, and waking it adds tens of microseconds to every request of any proxy pinned there
# (compare the two runs to tell the machine's share of the added latency from the proxy's).
#
# Needs root for apt-get (nginx and wrk from Debian, installed once); oha 1.16.0 is installed with cargo under
# $MCP_AUTHZ_CACHE/tools when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

SECONDS_PER_RUN="${1:-10}"
RATE="${2:-1000}"
STREAMS="${3:-1000}"
ROUNDS="${4:-5}"
PROXY_CPU="${PROXY_CPU:-1}"
LOAD_CPU="${LOAD_CPU:-0}"
export MCP_AUTHZ_CACHE="${MCP_AUTHZ_CACHE:-$HOME/.cache/mcp-authz}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$MCP_AUTHZ_CACHE/target}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

if [ "$(nproc)" -lt 2 ]; then
  echo "needs at least 2 cores: one for the proxy, one for the load" >&2
  exit 1
fi

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "== installing ${missing[*]} from Debian"
  apt-get update
  # The package's own service is not wanted (and policy-rc.d may forbid starting it anyway).
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
WRK="$(command -v wrk)"

OHA="$MCP_AUTHZ_CACHE/tools/bin/oha"
if [ ! -x "$OHA" ]; then
  echo "== installing oha 1.16.0"
  cargo install oha --version 1.16.0 --locked --root "$MCP_AUTHZ_CACHE/tools"
fi

echo "== building the release sidecar and loadbench"
cargo build --release --locked -p mcp-authz-sidecar --features test-support \
  --bin mcp-authz-sidecar --example loadbench

echo "== $(nproc) cores; proxies on CPU $PROXY_CPU, load on CPU $LOAD_CPU; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
LOADBENCH_NGINX="$NGINX" \
LOADBENCH_NGINX_ACCESS_LOG="${NGINX_ACCESS_LOG:-on}" \
LOADBENCH_WRK="$WRK" \
LOADBENCH_MAX_SECONDS="$SECONDS_PER_RUN" \
LOADBENCH_PROXY_CPUS="$PROXY_CPU" \
  taskset -c "$LOAD_CPU" "$CARGO_TARGET_DIR/release/examples/loadbench" \
  "$CARGO_TARGET_DIR/release/mcp-authz-sidecar" "$OHA" \
  "$SECONDS_PER_RUN" "$RATE" "$STREAMS" "$ROUNDS"
echo "== load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
