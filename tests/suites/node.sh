#!/usr/bin/env bash
# The chart, the operator, the authorization server it renders and an injected MCP pod running on a real node
# (tests/node/README.md): tests/node/e2e.sh. Needs root and tests/setup/{10-control-plane,30-python,40-node,
# 70-kube-node}.sh. It removes everything it started, on failure too (the node's processes, mounts, network
# namespaces, bridge, nftables tables and cgroups; the control plane; its directory under /tmp).
# MCP_AUTHZ_SKIP_NODE=1 skips it (and says so); without root it fails, unless skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "${MCP_AUTHZ_SKIP_NODE:-0}" = 1 ]; then
  echo "node suite: SKIPPED (MCP_AUTHZ_SKIP_NODE=1)"
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "node suite: needs root (set MCP_AUTHZ_SKIP_NODE=1 to skip it)" >&2; exit 1; }
# A bound, so a hang cannot hold CI: the run takes 2 to 4 min once built. TERM lets e2e.sh take everything down.
exec timeout --kill-after=60 1500 bash tests/node/e2e.sh
